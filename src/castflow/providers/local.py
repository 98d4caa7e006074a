"""Embedded-default providers: offline, deterministic, no keys, no system packages."""

from __future__ import annotations

import array
import ctypes
import math
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageDraw

from castflow import media
from castflow.models import Mouth, Voice
from castflow.portraits import compose_scene, hold_product
from castflow.providers.base import Billing, PermanentError, ProviderResult
from castflow.settings import FRAME_SIZES


class LocalImageEditor:
    """Scene variants with Pillow: a painted scene behind (or around) the actor, same geometry."""

    name = "local"
    model = "pillow-scene-v1"

    def price(self) -> float:
        return 0.0  # embedded: free

    def edit(
        self,
        image: Path,
        prompt: str,
        *,
        seed: int,
        workdir: Path,
        ratio: str | None = None,
        product: Path | None = None,
    ) -> ProviderResult:
        try:
            with Image.open(image) as src:
                src.load()
                portrait = src.convert("RGB")
        except (OSError, ValueError) as exc:
            raise PermanentError(f"cannot read image {image.name}: {exc}", provider=self.name) from exc
        out = workdir / "variant.png"
        scene = compose_scene(portrait, prompt, seed, ratio)
        if product is not None:
            try:
                with Image.open(product) as src:
                    src.load()
                    held = src.convert("RGBA")
            except (OSError, ValueError) as exc:
                raise PermanentError(
                    f"cannot read product {product.name}: {exc}", provider=self.name
                ) from exc
            scene = hold_product(scene, held)
        scene.save(out, format="PNG", optimize=False)
        return ProviderResult(out, "image/png", Billing(1, "images"), meta={"size": list(scene.size)})


class _Event(ctypes.Structure):
    """eSpeak NG's ``espeak_EVENT`` (speak_lib.h): what the synthesis callback hears besides audio."""

    _fields_ = [
        ("type", ctypes.c_int),
        ("unique_identifier", ctypes.c_uint),
        ("text_position", ctypes.c_int),  # 1-based, in characters of the text
        ("length", ctypes.c_int),  # the word's length, in characters
        ("audio_position", ctypes.c_int),  # milliseconds into this synthesis
        ("sample", ctypes.c_int),
        ("user_data", ctypes.c_void_p),
        ("id", ctypes.c_char * 8),  # a union of int, const char* and char[8]
    ]


class _Espeak:
    """eSpeak NG from the espeakng-loader wheel, via ctypes. The library is global state: one lock."""

    AUDIO_OUTPUT_SYNCHRONOUS = 2  # synthesis runs in the calling thread, callback included
    POS_CHARACTER = 1
    CHARS_UTF8 = 1
    EVENT_LIST_TERMINATED = 0
    EVENT_WORD = 1

    def __init__(self) -> None:
        import espeakng_loader

        self._lock = threading.Lock()
        self._lib = ctypes.CDLL(espeakng_loader.get_library_path())
        self._lib.espeak_Initialize.restype = ctypes.c_int
        self._lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        self._lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        self._lib.espeak_Synth.argtypes = [
            ctypes.c_char_p,
            ctypes.c_size_t,
            ctypes.c_uint,
            ctypes.c_int,
            ctypes.c_uint,
            ctypes.c_uint,
            ctypes.c_void_p,
            ctypes.c_void_p,
        ]
        self._lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        data = espeakng_loader.get_data_path().encode()
        self.rate = self._lib.espeak_Initialize(self.AUDIO_OUTPUT_SYNCHRONOUS, 0, data, 0)
        if self.rate <= 0:
            raise RuntimeError("eSpeak NG failed to initialise")
        self._samples = array.array("h")
        self._words: list[tuple[int, int, int]] = []  # (text position, length, milliseconds)
        callback_type = ctypes.CFUNCTYPE(
            ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_Event)
        )
        self._callback = callback_type(self._on_audio)  # keep a reference: C holds the pointer
        self._lib.espeak_SetSynthCallback(self._callback)

    def _on_audio(self, wav: Any, count: int, events: Any) -> int:
        if count > 0:
            self._samples.extend(wav[:count])
        i = 0
        while events and events[i].type != self.EVENT_LIST_TERMINATED:
            event = events[i]
            if event.type == self.EVENT_WORD:
                self._words.append((event.text_position, event.length, event.audio_position))
            i += 1
        return 0

    def speak(self, text: str, voice: str, words_per_minute: int) -> npt.NDArray[np.int16]:
        return self.speak_words(text, voice, words_per_minute)[0]

    def speak_words(
        self, text: str, voice: str, words_per_minute: int
    ) -> tuple[npt.NDArray[np.int16], list[tuple[int, int, int]]]:
        """The speech and eSpeak's own word events: (1-based character position in ``text``, length in
        characters, milliseconds into the speech) of each word, in order."""
        with self._lock:
            if self._lib.espeak_SetVoiceByName(voice.encode()) != 0:
                raise PermanentError(f"unknown eSpeak NG voice {voice!r}", provider="local")
            self._lib.espeak_SetParameter(1, words_per_minute, 0)  # espeakRATE
            self._samples = array.array("h")
            self._words = []
            data = text.encode("utf-8")
            status = self._lib.espeak_Synth(
                data, len(data) + 1, 0, self.POS_CHARACTER, 0, self.CHARS_UTF8, None, None
            )
            self._lib.espeak_Synchronize()
            if status != 0:
                raise PermanentError(f"eSpeak NG synthesis failed (status {status})", provider="local")
            pcm = np.frombuffer(self._samples.tobytes(), dtype=np.int16).copy()
            return pcm, list(self._words)


_ESPEAK: _Espeak | None = None
_ESPEAK_LOCK = threading.Lock()


def _espeak() -> _Espeak:
    global _ESPEAK
    with _ESPEAK_LOCK:
        if _ESPEAK is None:
            _ESPEAK = _Espeak()
        return _ESPEAK


class EspeakSpeech:
    """Real, intelligible speech from eSpeak NG. Voice ids are eSpeak voices, e.g. ``en-us+f3``."""

    name = "local"
    model = "espeak-ng"

    def price(self, voice: Voice, characters: int) -> float:
        return 0.0  # embedded: free

    def __init__(self, words_per_minute: int = 165) -> None:
        self.words_per_minute = words_per_minute

    def synthesize(self, text: str, voice: Voice, *, workdir: Path) -> ProviderResult:
        engine = _espeak()
        pcm, events = engine.speak_words(text, voice.voice_id, self.words_per_minute)
        if len(pcm) == 0:
            raise PermanentError("eSpeak NG produced no audio for this text", provider=self.name)
        pad = np.zeros(int(engine.rate * 0.15), dtype=np.int16)  # a breath of silence at both ends
        words = word_timings(text, events, pcm, engine.rate, offset_s=len(pad) / engine.rate)
        pcm = np.concatenate([pad, pcm, pad])
        out = workdir / "speech.wav"
        media.write_wav(out, pcm, engine.rate)
        seconds = len(pcm) / engine.rate
        return ProviderResult(
            out,
            "audio/wav",
            Billing(len(text), "characters"),
            seconds=seconds,
            # Word timings from the engine itself (exact starts), kept with the stage's record.
            meta={"sample_rate": engine.rate, "words": words},
        )


def word_timings(
    text: str,
    events: list[tuple[int, int, int]],
    pcm: npt.NDArray[np.int16],
    rate: int,
    *,
    offset_s: float = 0.0,
) -> list[dict[str, object]]:
    """Every word of ``text`` with its start and end, in seconds into the audio (``offset_s``: the
    silence put before it). Starts come from eSpeak's word events; an event's end is the last 10 ms frame
    with sound before the next event (or before the speech ends). eSpeak runs some words together
    ("on the" is one event): words with no event of their own share the span of the event before them,
    in proportion to their length."""
    frame = max(1, rate // 100)
    loud = np.abs(pcm.astype(np.int32))
    level = np.array([loud[i : i + frame].max(initial=0) for i in range(0, len(loud), frame)])
    sounding = level > max(300, int(level.max(initial=0) * 0.02))
    total = len(pcm) / rate
    spans: list[tuple[int, float, float]] = []  # (text position, start, end) of each event
    for n, (position, _length, ms) in enumerate(events):
        start = ms / 1000
        limit = events[n + 1][2] / 1000 if n + 1 < len(events) else total
        first, last = int(start * 100), min(math.ceil(limit * 100), len(sounding))
        voiced = np.flatnonzero(sounding[first:last])
        end = (first + voiced[-1] + 1) / 100 if len(voiced) else limit
        spans.append((position, start, min(max(end, start + 0.01), max(limit, start + 0.01))))
    if not spans:
        return []
    groups: dict[int, list[tuple[str, int]]] = {}
    for match in re.finditer(r"[\w'’-]+", text):
        position = match.start() + 1
        owner = max((i for i, span in enumerate(spans) if span[0] <= position), default=0)
        groups.setdefault(owner, []).append((match.group(), len(match.group())))
    found: list[dict[str, object]] = []
    for owner in sorted(groups):
        _position, start, end = spans[owner]
        words = groups[owner]
        size = sum(length for _word, length in words)
        at = start
        for word, length in words:
            until = at + (end - start) * length / size
            found.append({"word": word, "start": round(at + offset_s, 3), "end": round(until + offset_s, 3)})
            at = until
    return found


class PreviewLipSync:
    """Lip-sync preview: the image animated by the audio's loudness, 25 fps, muxed with the audio.

    With a known mouth (the drawn sample actors) the mouth opens with the speech; on any other portrait
    the picture breathes gently (a small zoom and sway following the loudness).
    """

    name = "local"
    model = "preview-envelope-v1"

    def price(self, audio_seconds: float, resolution: str) -> float:
        return 0.0  # embedded: free

    def __init__(
        self,
        fps: int = 25,
        max_audio_seconds: float = 600.0,
        sizes: dict[str, tuple[int, int]] | None = None,
    ) -> None:
        self.fps = fps
        self.max_audio_seconds = max_audio_seconds
        self.sizes = sizes or FRAME_SIZES

    def frame_size(self, resolution: str, image: tuple[int, int]) -> tuple[int, int]:
        """The frame for ``image``: the resolution's 9:16 size for a portrait in that shape (within 5 %),
        else the image's ratio with the resolution's short side (480p: 480), sides even."""
        portrait = self.sizes[resolution]
        w, h = image
        if abs((w / h) / (portrait[0] / portrait[1]) - 1) <= 0.05:
            return portrait
        short = min(portrait)
        if w >= h:
            return 2 * round(short * w / h / 2), short
        return short, 2 * round(short * h / w / 2)

    def size_problem(self, width: int, height: int, resolution: str) -> str | None:
        expected = self.sizes[resolution]
        if (width, height) == expected or (
            min(width, height) == min(expected) and width % 2 == height % 2 == 0
        ):
            return None  # the 9:16 frame, or another ratio at the resolution's short side
        return f"frame size {width}x{height}, expected {expected[0]}x{expected[1]} or another ratio at {min(expected)}"

    def render(
        self,
        image: Path,
        audio: Path,
        *,
        resolution: str,
        seed: int,
        mouth: Mouth | None,
        workdir: Path,
    ) -> ProviderResult:
        try:
            sound = media.decode_audio(audio, max_seconds=self.max_audio_seconds)
        except media.MediaError as exc:
            raise PermanentError(str(exc), provider=self.name) from exc
        try:
            with Image.open(image) as src:
                src.load()
                picture = src.convert("RGB")
        except (OSError, ValueError) as exc:
            raise PermanentError(f"cannot read image {image.name}: {exc}", provider=self.name) from exc
        size = self.frame_size(resolution, picture.size)
        frames = media.frame_count(sound.seconds, self.fps)
        envelope = media.loudness_envelope(sound, self.fps, frames)
        base, transform = cover_fit(picture, size)
        out = workdir / "lipsync.mp4"
        if mouth is not None:
            frame_iter = _mouth_frames(base, envelope, transform(mouth))
        else:
            frame_iter = _breathing_frames(base, envelope, self.fps)
        media.encode_video(out, frame_iter, size=size, fps=self.fps, audio=sound)
        return ProviderResult(
            out,
            "video/mp4",
            Billing(sound.seconds, "seconds"),
            seconds=sound.seconds,
            meta={"frames": frames, "resolution": resolution},
        )


MouthBox = tuple[float, float, float]


def cover_fit(picture: Image.Image, size: tuple[int, int]) -> tuple[Image.Image, Any]:
    """Scale and centre-crop ``picture`` to fill ``size``; returns it and a Mouth → pixel mapping."""
    w, h = picture.size
    scale = max(size[0] / w, size[1] / h)
    sw, sh = max(size[0], round(w * scale)), max(size[1], round(h * scale))
    left, top = (sw - size[0]) // 2, (sh - size[1]) // 2
    fitted = picture.resize((sw, sh), Image.Resampling.LANCZOS).crop(
        (left, top, left + size[0], top + size[1])
    )

    def transform(m: Mouth) -> MouthBox:
        return (m.x * sw - left, m.y * sh - top, m.width * sw)

    return fitted, transform


def _mouth_frames(
    base: Image.Image, envelope: npt.NDArray[np.float32], box: MouthBox
) -> Iterator[npt.NDArray[np.uint8]]:
    mx, my, mw = box
    lip = base.getpixel((int(mx), int(my)))
    lip_colour = lip if isinstance(lip, tuple) else (170, 80, 90)
    base_arr = np.asarray(base)
    pad = int(mw)
    x0, y0 = max(0, int(mx - pad)), max(0, int(my - pad * 0.5))
    x1, y1 = min(base.width, int(mx + pad)), min(base.height, int(my + pad * 1.2))
    for level in envelope:
        frame = base_arr.copy()
        if level > 0.02:
            patch = base.crop((x0, y0, x1, y1))
            d = ImageDraw.Draw(patch)
            cx, cy = mx - x0, my - y0
            open_h = mw * 0.55 * float(level)
            half_w = mw * (0.5 - 0.08 * float(level))
            d.ellipse((cx - half_w - 3, cy - 4, cx + half_w + 3, cy + open_h + 4), fill=lip_colour[:3])
            d.ellipse((cx - half_w, cy - 1, cx + half_w, cy + open_h), fill=(70, 20, 30))
            if open_h > mw * 0.12:  # teeth show when the mouth is well open
                d.rectangle(
                    (cx - half_w * 0.6, cy - 1, cx + half_w * 0.6, cy + open_h * 0.22), fill=(245, 245, 240)
                )
            frame[y0:y1, x0:x1] = np.asarray(patch)
        yield frame


def _breathing_frames(
    base: Image.Image, envelope: npt.NDArray[np.float32], fps: int
) -> Iterator[npt.NDArray[np.uint8]]:
    w, h = base.size
    for i, level in enumerate(envelope):
        zoom = 1.0 + 0.012 + 0.02 * float(level)
        sway = math.sin(2 * math.pi * i / (fps * 3.0)) * 0.004 * w
        cw, ch = w / zoom, h / zoom
        left = (w - cw) / 2 + sway
        top = (h - ch) / 2 - 0.01 * h * float(level)
        frame = base.transform(
            (w, h), Image.Transform.EXTENT, (left, top, left + cw, top + ch), Image.Resampling.BILINEAR
        )
        yield np.asarray(frame)
