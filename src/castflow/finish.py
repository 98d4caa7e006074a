"""Export profiles: the lip-sync render finished for each platform, and checked against that platform's spec.

A profile is a frame size, a frame rate, codecs and the limits a platform accepts. Finishing a render
for a profile fills the profile's frame without cropping the face (the render fitted whole over a blurred,
darkened copy of itself; ``fill="crop"`` crops the centre instead), burns the captions laid out for that
frame (castflow.captions: the safe band scales with it), and encodes H.264 High with AAC stereo at 48 kHz.
``source`` is the render as it came (the row's own video).

The duration limits are what the platforms accept for ads as their help pages state them in 2026 (TikTok
in-feed up to 10 min; Instagram Reels ads up to 15 min; feed placements likewise long): they are loose on
purpose and each is a setting (``CASTFLOW_PIPELINE__FORMAT_SECONDS``) since platforms change them.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from fractions import Fraction
from pathlib import Path
from typing import Any, Literal

import av
import numpy as np
import numpy.typing as npt
from PIL import Image, ImageFilter

from castflow import captions, loudness, media, typeset
from castflow.brand import Brand, music_bed

Fill = Literal["blur", "crop"]
SOURCE = "source"


@dataclass(frozen=True)
class Profile:
    name: str
    width: int
    height: int
    fps: int = 30
    audio_rate: int = 48_000
    audio_channels: int = 2
    # Asked of the encoder, which spends less on quiet or simple sound (FFmpeg's AAC averaged 127 kb/s
    # over a short spoken clip asked for 160): well over the floor the check reads back.
    audio_bitrate: int = 256_000
    min_audio_bitrate: int = 128_000
    # Constant bitrate (x264 pads with filler data when the picture needs less), so the floor holds for a
    # talking head over a plain wall as for a busy scene; the check's floor is min_video_bitrate.
    video_bitrate: int = 4_000_000
    min_video_bitrate: int = 2_000_000
    min_seconds: float = 1.0
    max_seconds: float = 600.0

    @property
    def size(self) -> tuple[int, int]:
        return self.width, self.height


PROFILES: dict[str, Profile] = {
    "tiktok": Profile("tiktok", 1080, 1920, min_seconds=3.0, max_seconds=600.0),
    "reels": Profile("reels", 1080, 1920, min_seconds=3.0, max_seconds=900.0),
    "feed-4x5": Profile("feed-4x5", 1080, 1350, max_seconds=900.0),
    "square": Profile("square", 1080, 1080, max_seconds=900.0),
    "landscape": Profile("landscape", 1920, 1080, max_seconds=900.0),
}
NAMES = (*PROFILES, SOURCE)


def profile(name: str, seconds: dict[str, tuple[float, float]] | None = None) -> Profile:
    """A profile by name, with the duration limits of the setting where it names them."""
    found = PROFILES[name]
    if seconds and name in seconds:
        low, high = seconds[name]
        found = replace(found, min_seconds=float(low), max_seconds=float(high))
    return found


def parse_formats(text: str) -> tuple[list[str], list[str]]:
    """``tiktok|square`` as profile names in order, each once; and the unknown names given."""
    names: list[str] = []
    unknown: list[str] = []
    for part in text.replace(",", "|").split("|"):
        name = part.strip().lower()
        if not name:
            continue
        if name not in NAMES:
            unknown.append(part.strip())
        elif name not in names:
            names.append(name)
    return names, unknown


# ---- pictures ------------------------------------------------------------------------------------------


def _fit(src: tuple[int, int], box: tuple[int, int], cover: bool) -> tuple[int, int]:
    scale = (max if cover else min)(box[0] / src[0], box[1] / src[1])
    return max(1, round(src[0] * scale)), max(1, round(src[1] * scale))


NEAR_RATIO = 0.15  # as settings.pipeline.qc_ratio_tolerance's default


def fill_frame(frame: Image.Image, size: tuple[int, int], fill: Fill = "blur") -> Image.Image:
    """``frame`` on a canvas of ``size``: whole, centred, over a blurred and darkened copy of itself
    stretched to cover the canvas (``blur``), or scaled to cover it and cut at the centre (``crop``).
    The same ratio is a plain resize either way; a ratio within NEAR_RATIO of the canvas's (a scene made
    at the profile's ratio, which InfiniteTalk renders in its nearest bucket) is cut at the centre, never
    filled."""
    width, height = size
    if frame.size == size:
        return frame
    same_ratio = abs(frame.width * height - frame.height * width) <= max(frame.width, width)
    if same_ratio:
        return frame.resize(size, Image.Resampling.BILINEAR)
    near = abs((frame.width * height) / (frame.height * width) - 1) <= NEAR_RATIO
    if fill == "crop" or near:
        cover = _fit(frame.size, size, cover=True)
        big = frame.resize(cover, Image.Resampling.BILINEAR)
        left, top = (cover[0] - width) // 2, (cover[1] - height) // 2
        return big.crop((left, top, left + width, top + height))
    # The background is blurred at a sixteenth of the size (cheap), then stretched back.
    small = (max(1, width // 16), max(1, height // 16))
    cover = _fit(frame.size, small, cover=True)
    back = frame.resize(cover, Image.Resampling.BILINEAR)
    left, top = (cover[0] - small[0]) // 2, (cover[1] - small[1]) // 2
    back = back.crop((left, top, left + small[0], top + small[1])).filter(ImageFilter.GaussianBlur(2))
    back = back.point(lambda v: int(v * 0.55)).resize(size, Image.Resampling.BILINEAR)
    fitted = _fit(frame.size, size, cover=False)
    back.paste(
        frame.resize(fitted, Image.Resampling.BILINEAR), ((width - fitted[0]) // 2, (height - fitted[1]) // 2)
    )
    return back


# ---- the render ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Finish:
    """What one output is made of: the profile, the captions (a style and the words), the fill, and a
    brand kit with this row's hook text and call to action (castflow.brand)."""

    profile: Profile
    script: str | None = None
    caption_style: str | None = None  # None or "no": no captions
    words: Sequence[dict[str, object]] = ()
    fill: Fill = "blur"
    brand: Brand | None = None
    hook_text: str | None = None  # the row's, else the brand's
    cta: str | None = None  # the row's, else the brand's end card text

    @property
    def end_seconds(self) -> float:
        """How long the end card shows after the speech (0: none)."""
        card = self.brand.end_card if self.brand else None
        return card.seconds if card is not None else 0.0


HOOK = captions.Style(
    "hook", "montserrat-800", size=1 / 12, max_lines=3, max_words=None, upper=False, outline=0.12, anchor=0.0
)
CTA = captions.Style(
    "cta", "montserrat-800", size=1 / 10, max_lines=3, max_words=None, upper=False, outline=0.0, anchor=0.62
)


class Dressing:
    """A brand's pictures for one frame size, each drawn once: the logo in its corner of the safe band,
    the hook line at the band's top for its first seconds, and the end card."""

    def __init__(self, spec: Finish, size: tuple[int, int]) -> None:
        self.spec, self.size = spec, size
        brand = spec.brand
        band = captions.safe_band(*size)
        self.logo: tuple[Image.Image, tuple[int, int]] | None = None
        self.caption_band = band  # where captions may go: above a logo in a bottom corner
        if brand is not None and brand.logo is not None and (image := brand.logo_image()) is not None:
            width = max(8, round(band.width * brand.logo.width))
            height = max(1, round(image.height * width / image.width))
            logo = image.resize((width, height), Image.Resampling.LANCZOS)
            opacity = brand.logo.opacity
            alpha = logo.getchannel("A").point(lambda a: round(a * opacity))
            logo.putalpha(alpha)
            x = band.left if brand.logo.position.endswith("left") else band.right - width
            y = band.top if brand.logo.position.startswith("top") else band.bottom - height
            self.logo = (logo, (x, y))
            if not brand.logo.position.startswith("top"):
                self.caption_band = replace(band, bottom=y - max(4, band.top // 8))
        hook_text = spec.hook_text or (brand.hook.text if brand and brand.hook else None)
        self.hook: captions.Overlays | None = None
        self.hook_seconds = brand.hook.seconds if brand and brand.hook else 2.5
        if hook_text:
            style = _dressed(HOOK, brand) if brand else HOOK
            cue = captions.block(style, hook_text, size, 0.0, self.hook_seconds)
            if cue is None:
                raise media.MediaError(f"the hook text does not fit a {size[0]}x{size[1]} frame: shorten it")
            self.hook = captions.Overlays(captions.Layout(style, *size), [cue], size)
            if self.logo is not None and self.logo[1][1] == band.top:  # the hook takes the top: logo below it
                box = self.hook.at(0.0)
                if box is not None:
                    self.logo = (self.logo[0], (self.logo[1][0], box[1][1] + box[0].height + band.top // 4))
        self.card: Image.Image | None = None
        if spec.end_seconds > 0 and brand is not None and brand.end_card is not None:
            self.card = self._card(brand, spec.cta or brand.end_card.text, band)

    def _card(self, brand: Brand, text: str | None, band: captions.Band) -> Image.Image:
        assert brand.end_card is not None
        card = Image.new("RGB", self.size, brand.end_card.rgb)
        image = brand.logo_image() if brand.end_card.logo else None
        if image is not None:
            width = round(band.width * 0.6)
            height = max(1, round(image.height * width / image.width))
            logo = image.resize((width, height), Image.Resampling.LANCZOS)
            card.paste(
                logo,
                (
                    band.left + (band.width - width) // 2,
                    band.top + (band.bottom - band.top) // 4 - height // 2,
                ),
                logo,
            )
        if text:
            style = _dressed(CTA, brand)
            cue = captions.block(style, text, self.size, 0.0, 1.0)
            if cue is None:
                raise media.MediaError(
                    f"the call to action does not fit a {self.size[0]}x{self.size[1]} frame"
                )
            overlay = captions.Overlays(captions.Layout(style, *self.size), [cue], self.size)
            card = overlay.over(card, 0.0)
        return card

    def over(self, picture: Image.Image, now: float) -> Image.Image:
        if self.hook is not None and now < self.hook_seconds:
            picture = self.hook.over(picture, now)
        if self.logo is not None:
            picture = picture.copy()
            picture.paste(self.logo[0], self.logo[1], self.logo[0])
        return picture


def length_problem(
    formats: Sequence[str], seconds: float, end_seconds: float, limits: dict[str, tuple[float, float]] | None
) -> str | None:
    """Why a video of ``seconds`` of sound (plus its end card) cannot be one of its profiles: too short
    or too long for the platform. Asked before the lip-sync is paid."""
    total = seconds + end_seconds
    for name in formats:
        found = profile(name, limits)
        if not found.min_seconds <= total <= found.max_seconds:
            return (
                f"{name} takes {found.min_seconds:g} to {found.max_seconds:g} s; this video would last "
                f"{total:.1f} s" + (f" (with its {end_seconds:g} s end card)" if end_seconds else "")
            )
    return None


def dressing_problem(
    brand: Brand | None, hook_text: str | None, cta: str | None, formats: Sequence[str]
) -> str | None:
    """Why a row's hook line or call to action cannot be drawn on one of its profiles (a character no
    font has, or too long to fit even at half size): told before anything is paid. Asked once per
    combination (a sheet's rows share their kit and most of their texts)."""
    return _dressing_problem(brand, hook_text, cta, tuple(formats))


@functools.lru_cache(maxsize=4096)
def _dressing_problem(
    brand: Brand | None, hook_text: str | None, cta: str | None, formats: tuple[str, ...]
) -> str | None:
    hook = hook_text or (brand.hook.text if brand and brand.hook else None)
    card = brand.end_card if brand is not None else None
    action = (cta or card.text) if card is not None and card.seconds > 0 else None
    for text, base, what in ((hook, HOOK, "hook_text"), (action, CTA, "cta")):
        if not text:
            continue
        style = _dressed(base, brand) if brand is not None else base
        if lacking := typeset.missing(text, captions.faces(style)):
            return f"{what}: no font draws {typeset.describe(lacking[:5])}"
        for name in formats:
            profile = PROFILES[name]
            if captions.block(style, text, profile.size, 0.0, 1.0) is None:
                shown = text if len(text) <= 40 else text[:39] + "…"
                return f"{what}: {shown!r} does not fit a {name} frame in three lines; shorten it"
    return None


def _dressed(style: captions.Style, brand: Brand) -> captions.Style:
    """A hook or end card style in the brand's font and colours."""
    return replace(
        style,
        font=brand.font or style.font,
        colour=brand.colour("text"),
        outline_colour=brand.colour("outline"),
    )


def mix(spec: Finish, audio_file: Path, rate: int) -> npt.NDArray[np.float32]:
    """The output's sound, stereo (2 x frames): the speech, then the end card's seconds, with the brand's
    music under it (ducked while the voice sounds), normalised to -14 LUFS with the true peak at most
    -1 dBTP (castflow.loudness)."""
    voice = media.decode_audio(audio_file, rate=rate).samples
    total = len(voice) + round(spec.end_seconds * rate)
    sound = np.zeros(total, dtype=np.float32)
    sound[: len(voice)] = voice
    if spec.brand is not None and (bed := music_bed(spec.brand, voice, rate, total)) is not None:
        sound += bed
    return loudness.normalise(np.stack([sound, sound]), rate)


def render(
    video: Path, audio_file: Path, spec: Finish, dest: Path, sound: npt.NDArray[np.float32] | None = None
) -> Path:
    """The lip-sync render ``video`` (with its speech ``audio_file``) finished for ``spec.profile``;
    ``sound``: the mix when already made (it is the same for every profile of a video)."""
    profile = spec.profile
    info = media.probe(video)
    if not info.width or not info.height or not info.fps:
        raise media.MediaError(f"{video.name} has no video stream to finish")
    if sound is None:
        sound = mix(spec, audio_file, profile.audio_rate)
    speech_seconds = sound.shape[1] / profile.audio_rate - spec.end_seconds
    dressing = Dressing(spec, profile.size) if spec.brand is not None or spec.hook_text else None
    overlays = None
    if spec.caption_style and spec.caption_style != "no" and spec.script:
        style: str | captions.Style = spec.caption_style
        if spec.brand is not None:
            brand = spec.brand
            colours = {k: brand.colour(k) for k in ("text", "outline", "highlight")}
            style = captions.branded(spec.caption_style, brand.font, colours)
        voice = media.Audio(sound[0], profile.audio_rate)
        band = dressing.caption_band if dressing is not None else None
        layout, cues = captions.build(style, spec.script, spec.words, voice, profile.size, band)
        overlays = captions.Overlays(layout, cues, profile.size)
    total = media.frame_count(sound.shape[1] / profile.audio_rate, profile.fps)
    source_fps = info.fps

    def pictures() -> Iterator[av.VideoFrame]:
        source = media.decode_video_frames(video)
        filled: Image.Image | None = None
        taken = -1
        for n in range(total):
            now = n / profile.fps
            if now >= speech_seconds and dressing is not None and dressing.card is not None:
                picture = dressing.card
            else:
                wanted = int(now * source_fps + 1e-6)
                while taken < wanted:  # the source frame showing at ``now`` (25 fps shown at 30: some twice)
                    nxt = next(source, None)
                    if nxt is None:
                        break  # the render ended a frame early: its last picture holds
                    filled, taken = fill_frame(Image.fromarray(nxt), profile.size, spec.fill), taken + 1
                if filled is None:
                    raise media.MediaError(f"{video.name} has no frames")
                picture = filled if overlays is None else overlays.over(filled, now)
                if dressing is not None:
                    picture = dressing.over(picture, now)
            yield av.VideoFrame.from_ndarray(np.asarray(picture, dtype=np.uint8), format="rgb24")

    _encode(dest, pictures(), sound, profile)
    return dest


def _encode(
    dest: Path, frames: Iterator[av.VideoFrame], sound: npt.NDArray[np.float32], profile: Profile
) -> None:
    with av.open(str(dest), mode="w", format="mp4", options={"movflags": "+faststart"}) as out:
        video = out.add_stream("libx264", rate=profile.fps)
        video.width, video.height = profile.size
        video.pix_fmt = "yuv420p"
        video.bit_rate = profile.video_bitrate
        video.options = {
            "preset": "veryfast",
            "profile": "high",
            "maxrate": str(profile.video_bitrate),
            "bufsize": str(profile.video_bitrate * 2),
            "x264-params": "nal-hrd=cbr:force-cfr=1",
            "g": str(profile.fps * 2),
        }
        audio = out.add_stream("aac", rate=profile.audio_rate)
        audio.layout = "stereo"
        audio.bit_rate = profile.audio_bitrate
        for frame in frames:
            for packet in video.encode(frame):
                out.mux(packet)
        for packet in video.encode(None):
            out.mux(packet)
        for chunk in _stereo_frames(sound, profile.audio_rate):
            for packet in audio.encode(chunk):
                out.mux(packet)
        for packet in audio.encode(None):
            out.mux(packet)


def _stereo_frames(sound: npt.NDArray[np.float32], rate: int, block: int = 1024) -> Iterator[av.AudioFrame]:
    pts = 0
    for start in range(0, sound.shape[1], block):
        chunk = np.ascontiguousarray(sound[:, start : start + block])  # planar: one row per channel
        frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout="stereo")
        frame.sample_rate = rate
        frame.pts = pts
        frame.time_base = Fraction(1, rate)
        pts += chunk.shape[1]
        yield frame


# ---- the check -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Streams:
    """What a finished file holds, as a platform's upload check reads it."""

    width: int | None
    height: int | None
    fps: float | None
    video_codec: str | None
    video_profile: str | None
    video_bitrate: int | None
    audio_codec: str | None
    audio_rate: int | None
    audio_channels: int | None
    audio_bitrate: int | None
    seconds: float


def read_streams(path: Path) -> Streams:
    try:
        container: Any = av.open(str(path))
    except (av.error.FFmpegError, OSError) as exc:
        raise media.MediaError(f"cannot open {path.name}: {exc}") from exc
    with container:
        seconds = container.duration / av.time_base if container.duration else 0.0
        v = container.streams.video[0] if container.streams.video else None
        a = container.streams.audio[0] if container.streams.audio else None
        size = path.stat().st_size
        vbits = v.bit_rate if v is not None and v.bit_rate else None
        abits = a.bit_rate if a is not None and a.bit_rate else None
        if vbits is None and v is not None and seconds > 0:  # the container's rate less the audio's
            vbits = int(size * 8 / seconds) - (abits or 0)
        return Streams(
            width=v.codec_context.width if v is not None else None,
            height=v.codec_context.height if v is not None else None,
            fps=float(v.average_rate) if v is not None and v.average_rate else None,
            video_codec=v.codec_context.name if v is not None else None,
            video_profile=v.codec_context.profile if v is not None else None,
            video_bitrate=vbits,
            audio_codec=a.codec_context.name if a is not None else None,
            audio_rate=a.codec_context.sample_rate if a is not None else None,
            audio_channels=a.codec_context.channels if a is not None else None,
            audio_bitrate=abits,
            seconds=seconds,
        )


def check(path: Path, profile: Profile, *, audio_seconds: float, tolerance: float = 0.1) -> list[str]:
    """The ways ``path`` breaks ``profile``'s spec (empty when it passes): frame size, frame rate,
    codecs and H.264 profile, audio rate and channels, bitrates over their floors, duration inside what
    the platform accepts and matching the sound (``audio_seconds``: the speech and any end card), and the
    mix at -14 LUFS with its true peak at most -1 dBTP (castflow.loudness, read back from the file)."""
    try:
        s = read_streams(path)
    except media.MediaError as exc:
        return [str(exc)]
    problems: list[str] = []
    if (s.width, s.height) != profile.size:
        problems.append(
            f"frame size {s.width}x{s.height}, {profile.name} needs {profile.width}x{profile.height}"
        )
    if s.fps is None or not math.isclose(s.fps, profile.fps, abs_tol=0.01):
        problems.append(f"frame rate {s.fps}, {profile.name} needs {profile.fps}")
    if s.video_codec != "h264" or (s.video_profile or "").lower() != "high":
        problems.append(f"video {s.video_codec} {s.video_profile}, {profile.name} needs H.264 High")
    if s.audio_codec != "aac":
        problems.append(f"audio codec {s.audio_codec}, {profile.name} needs AAC")
    if s.audio_rate != profile.audio_rate or s.audio_channels != profile.audio_channels:
        problems.append(
            f"audio {s.audio_rate} Hz x {s.audio_channels}, {profile.name} needs {profile.audio_rate} Hz stereo"
        )
    if s.audio_bitrate is not None and s.audio_bitrate < profile.min_audio_bitrate:
        problems.append(
            f"audio at {s.audio_bitrate // 1000} kb/s, {profile.name} needs {profile.min_audio_bitrate // 1000}+"
        )
    if s.video_bitrate is not None and s.video_bitrate < profile.min_video_bitrate:
        problems.append(
            f"video at {s.video_bitrate // 1000} kb/s, {profile.name} needs {profile.min_video_bitrate // 1000}+"
        )
    if not profile.min_seconds <= s.seconds <= profile.max_seconds:
        problems.append(
            f"lasts {s.seconds:.2f} s; {profile.name} takes {profile.min_seconds:g} to {profile.max_seconds:g} s"
        )
    if abs(s.seconds - audio_seconds) > max(tolerance, 1.5 / profile.fps):
        problems.append(f"lasts {s.seconds:.3f} s, the speech {audio_seconds:.3f} s")
    if s.audio_codec is not None:
        problems.extend(loudness.problems(read_sound(path, profile.audio_rate), profile.audio_rate))
    return problems


def read_sound(path: Path, rate: int) -> npt.NDArray[np.float32]:
    """A file's sound as FFmpeg decodes it: stereo (2 x frames) float at ``rate``."""
    chunks: list[npt.NDArray[np.float32]] = []
    with av.open(str(path)) as container:
        resampler = av.AudioResampler(format="fltp", layout="stereo", rate=rate)
        for frame in container.decode(container.streams.audio[0]):
            chunks.extend(out.to_ndarray().astype(np.float32) for out in resampler.resample(frame))
        chunks.extend(out.to_ndarray().astype(np.float32) for out in resampler.resample(None))
    if not chunks:
        return np.zeros((2, 0), dtype=np.float32)
    sound: npt.NDArray[np.float32] = np.concatenate(chunks, axis=1).astype(np.float32)
    return sound
