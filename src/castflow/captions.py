"""Captions: cues timed to the speech, as an SRT file and burned into the video.

Cue timing follows the speech, not the clock: the voiced span is found from the audio's loudness (the
same envelope that drives the preview mouth), and the script's characters are spread over it, each cue
getting time in proportion to its length. Cues break at sentence ends and hold at most two lines of
about 42 characters (the usual subtitle limits).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageDraw, ImageFont

from castflow import media

LINE_CHARS = 42
MAX_LINES = 2
MIN_CUE_SECONDS = 0.8


@dataclass(frozen=True)
class Cue:
    start: float
    end: float
    text: str  # lines joined by "\n"


def _lines(words: list[str], width: int = LINE_CHARS) -> list[str]:
    lines: list[str] = []
    current = ""
    for word in words:
        if current and len(current) + 1 + len(word) > width:
            lines.append(current)
            current = word
        else:
            current = f"{current} {word}" if current else word
    if current:
        lines.append(current)
    return lines


def split_cues(text: str) -> list[str]:
    """The script as cue texts: sentences, wrapped to lines, at most two lines a cue."""
    sentences = [s for s in re.split(r"(?<=[.!?…])\s+", " ".join(text.split())) if s]
    cues: list[str] = []
    for sentence in sentences:
        lines = _lines(sentence.split())
        for i in range(0, len(lines), MAX_LINES):
            cues.append("\n".join(lines[i : i + MAX_LINES]))
    return cues


def voiced_span(audio: media.Audio, fps: int = 25) -> tuple[float, float]:
    """Start and end (seconds) of the speech in the audio: the first and last voiced frame."""
    frames = media.frame_count(audio.seconds, fps)
    env = media.loudness_envelope(audio, fps, frames)
    voiced = np.flatnonzero(env > 0.05)
    if len(voiced) == 0:
        return 0.0, audio.seconds
    return float(voiced[0]) / fps, min(audio.seconds, float(voiced[-1] + 1) / fps)


def timed_cues(text: str, audio: media.Audio) -> list[Cue]:
    """Cues spread over the voiced span of ``audio`` in proportion to their length."""
    texts = split_cues(text)
    if not texts:
        return []
    start, end = voiced_span(audio)
    weights = np.array([len(t.replace("\n", " ")) for t in texts], dtype=np.float64)
    bounds = start + np.concatenate([[0.0], np.cumsum(weights)]) / weights.sum() * (end - start)
    cues = []
    for i, cue_text in enumerate(texts):
        cue_start = float(bounds[i])
        cue_end = max(float(bounds[i + 1]), min(cue_start + MIN_CUE_SECONDS, audio.seconds))
        if i + 1 < len(texts):
            cue_end = min(cue_end, float(bounds[i + 1]))
        cues.append(Cue(round(cue_start, 3), round(cue_end, 3), cue_text))
    return cues


def _stamp(seconds: float) -> str:
    ms = round(seconds * 1000)
    h, ms = divmod(ms, 3_600_000)
    m, ms = divmod(ms, 60_000)
    s, ms = divmod(ms, 1000)
    return f"{h:02d}:{m:02d}:{s:02d},{ms:03d}"


def srt(cues: list[Cue]) -> str:
    """The cues as SubRip text."""
    blocks = [f"{i}\n{_stamp(c.start)} --> {_stamp(c.end)}\n{c.text}\n" for i, c in enumerate(cues, 1)]
    return "\n".join(blocks)


def burn(video: Path, audio: media.Audio, cues: list[Cue], dest: Path) -> Path:
    """Re-encode ``video`` with the cues drawn on its frames (white on a dark outline, lower third)."""
    info = media.probe(video)
    if not info.width or not info.height or not info.fps:
        raise media.MediaError(f"{video.name} has no video stream to caption")
    size = (info.width, info.height)
    fps = round(info.fps)
    font = ImageFont.load_default(size=max(14, info.width // 18))

    def frames() -> Iterator[npt.NDArray[np.uint8]]:
        for index, frame in enumerate(media.decode_video_frames(video)):
            now = index / fps
            cue = next((c for c in cues if c.start <= now < c.end), None)
            if cue is None:
                yield frame
                continue
            yield _draw(frame, cue.text, font)

    media.encode_video(dest, frames(), size=size, fps=fps, audio=audio)
    return dest


def _draw(
    frame: npt.NDArray[np.uint8], text: str, font: ImageFont.FreeTypeFont | ImageFont.ImageFont
) -> npt.NDArray[np.uint8]:
    image = Image.fromarray(frame)
    draw = ImageDraw.Draw(image)
    width, height = image.size
    stroke = max(2, width // 160)
    box = draw.multiline_textbbox((0, 0), text, font=font, align="center", stroke_width=stroke, spacing=6)
    x = (width - (box[2] - box[0])) / 2
    y = height * 0.78 - (box[3] - box[1])
    draw.multiline_text(
        (x, y),
        text,
        font=font,
        fill=(255, 255, 255),
        align="center",
        stroke_width=stroke,
        stroke_fill=(0, 0, 0),
        spacing=6,
    )
    return np.asarray(image, dtype=np.uint8)
