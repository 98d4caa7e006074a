"""Brand kits: a team's look for its finished outputs, in one YAML file.

::

    name: Glow                      # shown in reports
    formats: [tiktok]               # profiles made when a row names none (a brand dresses profiles)
    font: montserrat-800            # a caption font (noto-WEIGHT, montserrat-WEIGHT) or a font file
    colours: {text: "#FFFFFF", outline: "#101010", highlight: "#FFD23F"}
    fill: blur                      # or crop: how another shape than the render is filled
    logo: {file: logo.png, position: top-right, opacity: 0.9, width: 0.22}
    hook: {text: "POV: your skin at 7am", seconds: 2.5}   # a row's hook_text replaces the text
    end_card: {text: "Shop now at glow.example", seconds: 2.0, background: "#111111", logo: true}
    music: {file: bed.m4a, level_db: -12, duck_db: 10, licence: "made for us by ..."}

Files are relative to the YAML file. The music plays ``level_db`` under the voice's loudness, dips by
``duck_db`` while someone speaks (from the speech's loudness, 30 ms attack, 300 ms release), runs on under
the end card and fades out; its ``licence`` note is required and carried into the manifest. The kit is
checked when it is read (files exist and decode, colours parse, numbers in range), before any row runs.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from functools import cached_property
from pathlib import Path
from typing import Literal

import numpy as np
import numpy.typing as npt
import yaml
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from castflow import media
from castflow.captions import FONT_FILES

_COLOUR = re.compile(r"^#?([0-9a-fA-F]{6})$")
Corner = Literal["top-left", "top-right", "bottom-left", "bottom-right"]


class BrandError(ValueError):
    """A brand kit that cannot be used: the file, the field and why."""


def _rgb(value: str) -> tuple[int, int, int]:
    found = _COLOUR.match(value.strip())
    if not found:
        raise ValueError(f"{value!r} is not a colour (#RRGGBB)")
    text = found.group(1)
    return int(text[0:2], 16), int(text[2:4], 16), int(text[4:6], 16)


class _Part(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Colours(_Part):
    text: str = "#FFFFFF"
    outline: str = "#000000"
    highlight: str = "#FFDD33"

    @field_validator("text", "outline", "highlight")
    @classmethod
    def _colour(cls, value: str) -> str:
        _rgb(value)
        return value


class Logo(_Part):
    file: Path
    position: Corner = "top-right"
    opacity: float = Field(default=0.9, ge=0.0, le=1.0)
    width: float = Field(default=0.22, gt=0.0, le=1.0, description="Share of the safe band's width.")


class Hook(_Part):
    text: str | None = None
    seconds: float = Field(default=2.5, gt=0.0, le=10.0)


class EndCard(_Part):
    text: str | None = None
    seconds: float = Field(default=2.0, ge=0.0, le=10.0)
    background: str = "#111111"
    logo: bool = True

    @field_validator("background")
    @classmethod
    def _colour(cls, value: str) -> str:
        _rgb(value)
        return value

    @property
    def rgb(self) -> tuple[int, int, int]:
        return _rgb(self.background)


class Music(_Part):
    file: Path
    level_db: float = Field(default=-12.0, ge=-40.0, le=0.0, description="Under the voice's loudness.")
    duck_db: float = Field(default=10.0, ge=0.0, le=40.0, description="Further down while speech plays.")
    licence: str = Field(min_length=3, description="Where the track comes from and what allows its use.")


class Brand(_Part):
    name: str = Field(default="brand", min_length=1, max_length=80)
    formats: tuple[str, ...] = ("tiktok",)
    font: str | None = None
    colours: Colours = Colours()
    fill: Literal["blur", "crop"] = "blur"
    logo: Logo | None = None
    hook: Hook | None = None
    end_card: EndCard | None = None
    music: Music | None = None
    source: Path | None = Field(default=None, exclude=True)  # the YAML file it was read from

    @cached_property
    def fingerprint(self) -> str:
        """What the finished pictures and sound depend on (stage keys): the settings that change them and
        the files' contents, not where the files are nor the kit's name: a kit moved or renamed, or seen
        under another mount by another worker, makes nothing again."""
        look = self.model_dump(mode="json", exclude={"name", "formats", "source"})
        for part in ("logo", "music"):
            if look.get(part):
                look[part]["file"] = None
        if self.font and self.font.lower().endswith(FONT_FILES):
            look["font"] = None
        digest = hashlib.sha256(json.dumps(look, sort_keys=True).encode())
        for path in self.files:
            digest.update(hashlib.sha256(path.read_bytes()).digest())
        return digest.hexdigest()[:32]

    @property
    def files(self) -> list[Path]:
        """The files the kit names: its logo, music and font file."""
        named = [part.file for part in (self.logo, self.music) if part is not None]
        if self.font and self.font.lower().endswith(FONT_FILES):
            named.append(Path(self.font))
        return named

    def colour(self, which: str) -> tuple[int, int, int]:
        return _rgb(getattr(self.colours, which))

    def logo_image(self) -> Image.Image | None:
        if self.logo is None:
            return None
        return _logo(str(self.logo.file))


_LOGOS: dict[tuple[str, int, int], Image.Image] = {}
_KITS: dict[tuple[str, int, int], tuple[Brand, list[tuple[str, int, int]]]] = {}


def _stamp(path: Path) -> tuple[str, int, int]:
    """A file's path with its size and modification time: a cache key that sees an edit."""
    st = path.stat()
    return str(path), st.st_size, st.st_mtime_ns


def _logo(path: str) -> Image.Image:
    key = _stamp(Path(path))
    if key not in _LOGOS:
        with Image.open(path) as image:
            _LOGOS[key] = image.convert("RGBA")
    return _LOGOS[key]


def load_brand(path: Path) -> Brand:
    """Read and check a brand kit (once per version of the file in a process); BrandError names the
    file, the field and the reason. The files it names must lie in its own folder."""
    try:
        key = _stamp(path)
        cached = _KITS.get(key)
        if cached is not None and [_stamp(Path(f[0])) for f in cached[1]] == cached[1]:
            return cached[0]  # neither the kit nor a file it names has changed
    except OSError as exc:
        raise BrandError(f"brand kit {path.name}: cannot be read ({exc.strerror})") from exc
    kit = _load(path)
    _KITS[key] = (kit, [_stamp(f) for f in kit.files])
    return kit


def _inside(base: Path, given: str, path: Path, field: str) -> Path:
    found = (base / Path(given).expanduser()).resolve()
    if not found.is_relative_to(base.resolve()):
        raise BrandError(f"brand kit {path.name}: {field}: {given!r} is outside the kit's folder")
    return found


def _load(path: Path) -> Brand:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise BrandError(f"brand kit {path.name}: cannot be read ({exc})") from exc
    except yaml.YAMLError as exc:  # where, not the text: the file could be anything
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise BrandError(f"brand kit {path.name}: not valid YAML{where}") from None
    if not isinstance(data, dict):
        raise BrandError(f"brand kit {path.name}: expected a mapping of settings (name, logo, music, ...)")
    base = path.parent
    for part in ("logo", "music"):
        section = data.get(part)
        if isinstance(section, dict) and isinstance(section.get("file"), str):
            data[part] = {**section, "file": _inside(base, section["file"], path, f"{part}.file")}
    font = data.get("font")
    if isinstance(font, str) and font.lower().endswith(FONT_FILES):
        data["font"] = str(_inside(base, font, path, "font"))
    try:
        brand = Brand.model_validate({**data, "source": path})
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "brand"
        raise BrandError(f"brand kit {path.name}: {where}: {first['msg']}") from None
    from castflow import captions, finish

    unknown = [f for f in brand.formats if f not in finish.PROFILES]
    if unknown:
        raise BrandError(f"brand kit {path.name}: formats: unknown export profile {unknown[0]!r}")
    if brand.font:
        try:
            captions.caption_face(brand.font, base)
        except OSError as exc:
            raise BrandError(f"brand kit {path.name}: font: {Path(brand.font).name}: {exc.strerror}") from exc
        except ValueError as exc:
            raise BrandError(f"brand kit {path.name}: font: {exc}") from exc
    if brand.logo is not None:
        try:
            with Image.open(brand.logo.file) as image:
                image.verify()
        except (OSError, SyntaxError) as exc:
            raise BrandError(
                f"brand kit {path.name}: logo.file: {brand.logo.file.name} is not an image"
            ) from exc
    if brand.music is not None:
        try:
            music = media.decode_audio(brand.music.file, max_seconds=900)
        except media.MediaError as exc:
            raise BrandError(f"brand kit {path.name}: music.file: {exc}") from exc
        if music.seconds < 1.0:
            raise BrandError(
                f"brand kit {path.name}: music.file: {brand.music.file.name} is shorter than 1 s"
            )
    return brand


# ---- the music bed --------------------------------------------------------------------------------------


def music_bed(
    brand: Brand, voice: npt.NDArray[np.float32], rate: int, total: int
) -> npt.NDArray[np.float32] | None:
    """The brand's music for ``total`` frames at ``rate`` (looped or cut, faded out at the end), at
    ``level_db`` under the voice's level and ducked by ``duck_db`` where the voice sounds."""
    if brand.music is None:
        return None
    track = media.decode_audio(brand.music.file, rate=rate).samples
    reps = math.ceil(total / len(track))
    bed = np.tile(track, reps)[:total].astype(np.float32)
    fade = min(total, int(rate * 0.6))
    bed[total - fade :] *= np.linspace(1.0, 0.0, fade, dtype=np.float32)
    voice_rms = _rms(voice[:total])
    music_rms = _rms(bed)
    if music_rms <= 0:
        return bed
    level = (voice_rms if voice_rms > 0 else 0.1) * 10 ** (brand.music.level_db / 20) / music_rms
    return (bed * _duck_gain(voice, rate, total, level, brand.music.duck_db)).astype(np.float32)


def _rms(x: npt.NDArray[np.float32]) -> float:
    loud = x[np.abs(x) > 1e-4]
    return float(np.sqrt(np.mean(loud.astype(np.float64) ** 2))) if len(loud) else 0.0


BLOCK_S = 0.02


def _duck_gain(
    voice: npt.NDArray[np.float32], rate: int, total: int, level: float, duck_db: float
) -> npt.NDArray[np.float32]:
    """The music's gain for each frame: ``level``, ``duck_db`` lower where the voice sounds (20 ms
    blocks, held 160 ms so the gaps between words stay down), going down over about 40 ms starting just
    before the speech, coming back over about 300 ms after it."""
    block = max(1, int(rate * BLOCK_S))
    count = math.ceil(total / block)
    padded = np.zeros(count * block, dtype=np.float64)
    padded[: min(total, len(voice))] = voice[:total]
    power = np.sqrt((padded.reshape(count, block) ** 2).mean(axis=1))
    on = power > max(1e-3, power.max(initial=0) * 0.05)
    held = on.copy()
    for shift in range(1, 8):  # hold
        held[shift:] |= on[:-shift]
    for shift in range(1, 3):  # look ahead: down before the first syllable
        held[:-shift] |= on[shift:]
    target = np.where(held, level * 10 ** (-duck_db / 20), level)
    release = math.exp(-BLOCK_S / 0.3)
    attack = math.exp(-BLOCK_S / 0.02)
    gain = np.empty(count)
    now = float(target[0])
    for i, goal in enumerate(target):
        now = goal + (now - goal) * (attack if goal < now else release)
        gain[i] = now
    centres = (np.arange(count) + 0.5) * block
    return np.interp(np.arange(total), centres, gain).astype(np.float32)


# ---- the sample kit -------------------------------------------------------------------------------------


def sample_music(seconds: float = 16.0, rate: int = 24_000) -> npt.NDArray[np.float32]:
    """A calm, loopable four-chord bed (C-G-Am-F, soft pads and a plucked pattern), made here from sine
    waves: no recording, so no licence question."""
    t = np.arange(int(seconds * rate)) / rate
    chords = [
        (261.63, 329.63, 392.0),
        (196.0, 246.94, 293.66),
        (220.0, 261.63, 329.63),
        (174.61, 220.0, 261.63),
    ]
    bar = seconds / len(chords)
    out = np.zeros_like(t)
    for i, chord in enumerate(chords):
        inside = (t >= i * bar) & (t < (i + 1) * bar)
        local = t[inside] - i * bar
        swell = np.sin(np.pi * local / bar) ** 0.5
        for f in chord:
            out[inside] += 0.12 * swell * np.sin(2 * np.pi * f * local)
        step = bar / 8
        for k in range(8):
            note = chord[k % 3] * 2
            at = (local >= k * step) & (local < (k + 1) * step)
            tone = local[at] - k * step
            out[np.flatnonzero(inside)[at]] += 0.08 * np.exp(-tone * 6) * np.sin(2 * np.pi * note * tone)
    bed: npt.NDArray[np.float32] = (out / np.abs(out).max() * 0.6).astype(np.float32)
    return bed


SAMPLE_YAML = """\
# castflow's sample brand kit (examples/brand): every file here was made by castflow.brand.make_sample_kit.
name: Glow sample
formats: [tiktok]
font: montserrat-800
colours: {text: "#FFFFFF", outline: "#1B1033", highlight: "#FFD23F"}
fill: blur
logo: {file: logo.png, position: top-right, opacity: 0.9, width: 0.24}
hook: {text: "POV: mornings got easy", seconds: 2.0}
end_card: {text: "Try it today at glow.example", seconds: 1.5, background: "#1B1033", logo: true}
music: {file: music.m4a, level_db: -14, duck_db: 10, licence: "generated by castflow (castflow.brand.sample_music): no rights reserved"}
"""


def make_sample_kit(folder: Path) -> Path:
    """Write the sample kit (YAML, a drawn logo, the generated music) into ``folder``; returns the YAML."""
    from PIL import ImageDraw

    from castflow import typeset

    folder.mkdir(parents=True, exist_ok=True)
    logo = Image.new("RGBA", (360, 120), (0, 0, 0, 0))
    draw = ImageDraw.Draw(logo)
    draw.rounded_rectangle((0, 0, 359, 119), radius=58, fill=(255, 210, 63, 255))
    draw.ellipse((18, 18, 102, 102), fill=(27, 16, 51, 255))
    setter = typeset.Setter((typeset.primary("montserrat-900"),), 64)
    setter.draw(draw, (120, 22), "GLOW", fill=(27, 16, 51, 255), stroke=0, stroke_fill=(0, 0, 0, 0))
    logo.save(folder / "logo.png", optimize=True)
    music = sample_music()
    _write_aac(folder / "music.m4a", media.Audio(music, 24_000))
    path = folder / "brand.yaml"
    path.write_text(SAMPLE_YAML, encoding="utf-8")
    return path


def _write_aac(path: Path, sound: media.Audio) -> None:
    import av

    with av.open(str(path), mode="w", format="mp4") as out:
        stream = out.add_stream("aac", rate=sound.rate)
        stream.layout = "mono"
        stream.bit_rate = 96_000
        for frame in media._audio_frames(sound):
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
