"""Audio and video files: decode, probe, encode (PyAV's bundled FFmpeg) and quality-check."""

from __future__ import annotations

import math
import wave
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
import numpy.typing as npt

AUDIO_RATE = 24_000  # working sample rate for decoded speech: plenty for voice, half the memory of 48 kHz


class MediaError(Exception):
    """A media file that cannot be read or does not meet a requirement."""


@dataclass(frozen=True)
class Audio:
    """Decoded mono audio as float32 samples in [-1, 1]."""

    samples: npt.NDArray[np.float32]
    rate: int

    @property
    def seconds(self) -> float:
        return len(self.samples) / self.rate


def decode_audio(path: Path, rate: int = AUDIO_RATE, max_seconds: float | None = None) -> Audio:
    """Decode any audio file FFmpeg reads into mono float32 at ``rate``."""
    try:
        container = av.open(str(path))
    except (av.error.FFmpegError, OSError) as exc:
        raise MediaError(f"cannot read audio file {path.name}: {exc}") from exc
    chunks: list[npt.NDArray[np.float32]] = []
    total = 0
    limit = None if max_seconds is None else int(max_seconds * rate) + rate
    with container:
        if not container.streams.audio:
            raise MediaError(f"{path.name} has no audio stream")
        stream = container.streams.audio[0]
        resampler = av.AudioResampler(format="flt", layout="mono", rate=rate)
        try:
            for frame in container.decode(stream):
                for out in resampler.resample(frame):
                    arr = out.to_ndarray().reshape(-1).astype(np.float32, copy=False)
                    chunks.append(arr)
                    total += len(arr)
                if limit is not None and total > limit:
                    raise MediaError(f"{path.name} is longer than {max_seconds:g} s")
            for out in resampler.resample(None):
                chunks.append(out.to_ndarray().reshape(-1).astype(np.float32, copy=False))
        except av.error.FFmpegError as exc:
            raise MediaError(f"cannot decode audio file {path.name}: {exc}") from exc
    samples = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.float32)
    if len(samples) == 0:
        raise MediaError(f"{path.name} contains no audio samples")
    return Audio(samples=samples, rate=rate)


def audio_seconds(path: Path) -> float:
    """An audio file's length: from the header for PCM WAV (instant), else by decoding it."""
    with open(path, "rb") as fh:
        head = fh.read(12)
    if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        try:
            with wave.open(str(path), "rb") as wav:
                if wav.getframerate() > 0 and wav.getnframes() > 0:
                    return wav.getnframes() / wav.getframerate()
        except (wave.Error, EOFError, OSError):
            pass  # not plain PCM: decode below
    return decode_audio(path).seconds


def write_wav(path: Path, pcm16: npt.NDArray[np.int16], rate: int) -> None:
    """Write mono 16-bit PCM as a WAV file."""
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(pcm16.astype("<i2").tobytes())


def loudness_envelope(audio: Audio, fps: int, frames: int) -> npt.NDArray[np.float32]:
    """Per-video-frame loudness in [0, 1]: RMS per frame window, normalised and lightly smoothed."""
    hop = audio.rate / fps
    env = np.zeros(frames, dtype=np.float32)
    for i in range(frames):
        seg = audio.samples[int(i * hop) : int((i + 1) * hop)]
        if len(seg):
            env[i] = float(np.sqrt(np.mean(np.square(seg, dtype=np.float64))))
    peak = float(np.percentile(env, 95)) if frames else 0.0
    if peak > 1e-6:
        env = np.clip(env / peak, 0.0, 1.0)
    # Gate the noise floor so silence keeps the mouth shut, then smooth over ~3 frames.
    env = np.where(env < 0.08, 0.0, env).astype(np.float32)
    if frames >= 3:
        env = np.convolve(env, np.array([0.25, 0.5, 0.25], dtype=np.float32), mode="same").astype(np.float32)
    return env


def frame_count(seconds: float, fps: int) -> int:
    """Frames whose total duration is closest to ``seconds`` (within half a frame)."""
    return max(1, round(seconds * fps))


def encode_video(
    dest: Path,
    frames: Iterable[npt.NDArray[np.uint8] | av.VideoFrame],
    *,
    size: tuple[int, int],
    fps: int,
    audio: Audio,
    options: dict[str, str] | None = None,
) -> None:
    """Encode frames (RGB arrays, or ready video frames, which may repeat) as H.264 and the audio as
    AAC into an MP4 (moov atom first, for streaming). ``options``: x264's, default veryfast, CRF 23."""
    width, height = size
    with av.open(str(dest), mode="w", format="mp4", options={"movflags": "+faststart"}) as out:
        vstream = out.add_stream("libx264", rate=fps)
        vstream.width = width
        vstream.height = height
        vstream.pix_fmt = "yuv420p"
        vstream.options = dict(options or {"preset": "veryfast", "crf": "23"})
        astream = out.add_stream("aac", rate=audio.rate)
        astream.layout = "mono"
        for item in frames:
            if isinstance(item, av.VideoFrame):
                frame = item
                frame.pts = None  # a picture handed in again is the next frame
            else:
                frame = av.VideoFrame.from_ndarray(item, format="rgb24")
            for packet in vstream.encode(frame):
                out.mux(packet)
        for packet in vstream.encode(None):
            out.mux(packet)
        for aframe in _audio_frames(audio):
            for packet in astream.encode(aframe):
                out.mux(packet)
        for packet in astream.encode(None):
            out.mux(packet)


def _audio_frames(audio: Audio, block: int = 1024) -> Iterator[av.AudioFrame]:
    pts = 0
    for start in range(0, len(audio.samples), block):
        chunk = audio.samples[start : start + block].reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(chunk), format="flt", layout="mono")
        frame.sample_rate = audio.rate
        frame.pts = pts
        frame.time_base = Fraction(1, audio.rate)
        pts += chunk.shape[1]
        yield frame


@dataclass(frozen=True)
class Probe:
    """What a media file holds."""

    duration: float
    has_video: bool
    has_audio: bool
    width: int | None = None
    height: int | None = None
    fps: float | None = None
    video_frames: int | None = None
    audio_duration: float | None = None
    video_duration: float | None = None


def _open(path: Path) -> Any:
    """An opened media container; MediaError (naming the file) when FFmpeg cannot read it."""
    try:
        return av.open(str(path))
    except (av.error.FFmpegError, OSError) as exc:
        raise MediaError(f"cannot open {path.name}: {exc}") from exc


def _video_stream(container: Any, path: Path) -> Any:
    if not container.streams.video:
        raise MediaError(f"{path.name} has no video stream")
    return container.streams.video[0]


def decode_video_frames(path: Path) -> Iterator[npt.NDArray[np.uint8]]:
    """The video's frames as RGB arrays, one at a time (never the whole video in memory)."""
    container = _open(path)
    with container:
        for frame in container.decode(_video_stream(container, path)):
            yield np.asarray(frame.to_ndarray(format="rgb24"), dtype=np.uint8)


def thumbnail(path: Path, *, width: int = 160, at: float = 0.5) -> bytes:
    """A JPEG of the frame at ``at`` (a fraction of the duration), ``width`` pixels wide."""
    import io

    from PIL import Image

    container = _open(path)
    with container:
        stream = _video_stream(container, path)
        if container.duration:
            container.seek(int(container.duration * at))  # lands on the keyframe before
        frame = next(container.decode(stream), None)
        if frame is None:
            raise MediaError(f"{path.name} has no frames")
        image = frame.to_image()
    height = max(1, round(image.height * width / image.width))
    out = io.BytesIO()
    image.convert("RGB").resize((width, height), Image.Resampling.LANCZOS).save(out, "JPEG", quality=70)
    return out.getvalue()


def probe(path: Path) -> Probe:
    """Read a media file's streams and durations."""
    container = _open(path)
    with container:
        duration = container.duration / av.time_base if container.duration else 0.0
        video = container.streams.video[0] if container.streams.video else None
        audio = container.streams.audio[0] if container.streams.audio else None

        def stream_seconds(stream: av.stream.Stream | None) -> float | None:
            if stream is None or stream.duration is None or stream.time_base is None:
                return None
            return float(stream.duration * stream.time_base)

        return Probe(
            duration=duration,
            has_video=video is not None,
            has_audio=audio is not None,
            width=video.codec_context.width if video else None,
            height=video.codec_context.height if video else None,
            fps=float(video.average_rate) if video and video.average_rate else None,
            video_frames=video.frames if video else None,
            audio_duration=stream_seconds(audio),
            video_duration=stream_seconds(video),
        )


def check_video(
    path: Path,
    *,
    audio_seconds: float,
    fps: int,
    size: tuple[int, int] | Callable[[int, int], str | None],
    tolerance: float,
    ratio: tuple[tuple[int, int], float] | None = None,
) -> list[str]:
    """Quality check of a lip-sync output; returns the problems found (empty when it passes)."""
    try:
        info = probe(path)
    except MediaError as exc:
        return [str(exc)]
    problems: list[str] = []
    if not info.has_video:
        problems.append("no video stream")
    if not info.has_audio:
        problems.append("no audio stream")
    if info.has_video:
        if callable(size):
            wrong = size(info.width or 0, info.height or 0)
            if wrong:
                problems.append(wrong)
        elif (info.width, info.height) != size:
            problems.append(f"frame size {info.width}x{info.height}, expected {size[0]}x{size[1]}")
        if ratio is not None and info.width and info.height:  # (width, height) of the ratio, tolerance
            (rw, rh), within = ratio
            off = (info.width / info.height) / (rw / rh) - 1
            if abs(off) > within:
                problems.append(f"frame {info.width}x{info.height} is not {rw}:{rh} ({off:+.0%})")
        if info.fps is None or not math.isclose(info.fps, fps, abs_tol=0.01):
            problems.append(f"frame rate {info.fps}, expected {fps}")
        vdur = info.video_duration if info.video_duration is not None else info.duration
        if abs(vdur - audio_seconds) > tolerance:
            problems.append(f"video lasts {vdur:.3f} s, audio {audio_seconds:.3f} s")
    if abs(info.duration - audio_seconds) > tolerance:
        problems.append(f"file lasts {info.duration:.3f} s, audio {audio_seconds:.3f} s")
    return problems
