"""Text set in real fonts: which font draws each character, how wide a text is, and drawing it.

Captions are sized and wrapped from the widths the glyphs really have (FreeType through Pillow, with
HarfBuzz shaping and bidi through libraqm), never from a character count. Each style names a primary
font; characters it lacks fall back, in order, to Noto Sans (Latin, Greek, Cyrillic), Noto Sans Arabic,
Noto Sans CJK (the optional ``castflow[cjk]`` extra: 19 MB) and Noto Emoji (monochrome, shipped in
``castflow/fonts``). A character that no font has is reported by :func:`missing` and the row is refused
before anything is paid, never drawn as an empty box.

Fonts and their licences (all SIL Open Font License 1.1, redistributed unmodified):

- Noto Sans, Noto Sans Arabic, Montserrat: the ``fontpkg-noto-sans``, ``fontpkg-noto-sans-arabic`` and
  ``fontpkg-montserrat`` packages (their LICENSE file beside the fonts);
- Noto Sans CJK: the ``noto-cjk-sans-otc`` package (optional);
- Noto Emoji (bold, WOFF slices of Fontsource's ``@fontsource/noto-emoji`` 5.3.2):
  ``castflow/fonts/noto-emoji/OFL.txt``.
"""

from __future__ import annotations

import functools
import importlib
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import ImageDraw, ImageFont

FONT_DIR = Path(__file__).parent / "fonts"

# Characters drawn with whatever font draws their neighbours: spaces, joiners and the variation
# selectors and keycap mark that follow emoji (no font needs a glyph of its own for them).
_JOINING = {0x200C, 0x200D, 0xFE0E, 0xFE0F, 0x20E3}


def _joins(char: str) -> bool:
    code = ord(char)
    return (
        char.isspace()
        or code in _JOINING
        or 0xE0020 <= code <= 0xE007F  # emoji tag characters
        or unicodedata.category(char) in ("Mn", "Me", "Cf")
    )


@dataclass(frozen=True)
class Face:
    """One font file, at one weight when the font is variable (its ``wght`` axis)."""

    path: Path
    family: str  # the family name an .ass file asks for
    weight: int | None = None
    index: int = 0  # the font's number in a collection (.ttc)


def _package_font(module: str, pattern: str) -> Path | None:
    try:
        package = importlib.import_module(module)
    except ImportError:
        return None
    root = Path(package.__file__ or "").parent
    return next(iter(sorted(root.rglob(pattern))), None)


@functools.cache
def fallbacks() -> tuple[Face, ...]:
    """The faces tried after a style's own, in order (only the installed ones)."""
    faces: list[Face] = []
    if path := _package_font("fontpkg_noto_sans", "NotoSans[[]*.ttf"):
        faces.append(Face(path, "Noto Sans", 700))
    if path := _package_font("fontpkg_noto_sans_arabic", "NotoSansArabic[[]*.ttf"):
        faces.append(Face(path, "Noto Sans Arabic", 700))
    if path := _package_font("noto_cjk_sans_otc", "*.ttc"):
        faces.append(Face(path, "Noto Sans CJK JP"))
    emoji = FONT_DIR / "noto-emoji"
    # The main emoji slice first: the others hold symbols and the regional indicators.
    slices = sorted(emoji.glob("*.woff"), key=lambda p: (not p.name.startswith("noto-emoji-emoji"), p.name))
    faces.extend(Face(path, "Noto Emoji") for path in slices)
    return tuple(faces)


@functools.cache
def primary(name: str) -> Face:
    """A style's own face: ``noto-sans`` or ``montserrat`` at a weight (``montserrat-900``)."""
    family, _, weight = name.partition("-")
    found = {
        "noto": ("fontpkg_noto_sans", "NotoSans[[]*.ttf", "Noto Sans"),
        "montserrat": ("fontpkg_montserrat", "Montserrat[[]*.ttf", "Montserrat"),
    }.get(family)
    if found is None:
        raise ValueError(f"unknown caption font {name!r} (noto-WEIGHT or montserrat-WEIGHT)")
    path = _package_font(found[0], found[1])
    if path is None:
        raise RuntimeError(f"the {found[0]} package is not installed (it ships castflow's caption fonts)")
    return Face(path, found[2], int(weight) if weight.isdigit() else 700)


@functools.cache
def _cmap(face: Face) -> frozenset[int]:
    from fontTools.ttLib import TTFont

    font = TTFont(face.path, lazy=True, fontNumber=face.index)
    try:
        return frozenset(font.getBestCmap() or {})
    finally:
        font.close()


def chain(face: Face) -> tuple[Face, ...]:
    """A style's face followed by the fallbacks."""
    return (face, *(f for f in fallbacks() if f.path != face.path))


def runs(text: str, faces: tuple[Face, ...]) -> list[tuple[str, int]]:
    """``text`` cut into runs drawn by one face each: (text, index into ``faces``). A character no face
    has goes with the run before it (it shows up in :func:`missing`)."""
    out: list[tuple[str, int]] = []
    for char in text:
        if _joins(char) and out:
            out[-1] = (out[-1][0] + char, out[-1][1])
            continue
        code = ord(char)
        which = next((i for i, face in enumerate(faces) if code in _cmap(face)), out[-1][1] if out else 0)
        if out and out[-1][1] == which:
            out[-1] = (out[-1][0] + char, which)
        else:
            out.append((char, which))
    return out


@functools.cache
def _drawn(char: str, faces: tuple[Face, ...]) -> bool:
    return _joins(char) or any(ord(char) in _cmap(face) for face in faces)


def missing(text: str, faces: tuple[Face, ...]) -> list[str]:
    """The characters of ``text`` that no face draws, each once, in order of appearance."""
    if text.isascii() and _drawn_ascii(faces):  # most scripts: one check, not one per character
        return [c for c in dict.fromkeys(text) if not (c.isprintable() or c.isspace())]
    return [c for c in dict.fromkeys(text) if not _drawn(c, faces)]


@functools.cache
def _drawn_ascii(faces: tuple[Face, ...]) -> bool:
    return all(_drawn(chr(code), faces) for code in range(0x20, 0x7F))


def describe(chars: list[str]) -> str:
    """``'😀' (U+1F600 GRINNING FACE)`` for each character, for an error message."""
    return ", ".join(f"{c!r} (U+{ord(c):04X} {unicodedata.name(c, 'unnamed')})" for c in chars)


def rtl(text: str) -> bool:
    """Whether ``text`` reads right to left (its first strong character is Arabic or Hebrew)."""
    for char in text:
        kind = unicodedata.bidirectional(char)
        if kind in ("R", "AL"):
            return True
        if kind == "L":
            return False
    return False


def _axis_value(axis: Any, weight: int) -> float:
    """A variable font's axis set: the weight axis to ``weight`` (within its range), others as they are."""
    name = axis.get("name", b"")
    label = name.decode("latin-1") if isinstance(name, bytes) else str(name)
    if label.lower() != "weight":
        return float(axis["default"])
    return min(float(axis["maximum"]), max(float(axis["minimum"]), float(weight)))


class Setter:
    """A chain of faces at one pixel size: widths and drawing of texts that may mix scripts."""

    def __init__(self, faces: tuple[Face, ...], size: int) -> None:
        self.faces = faces
        self.size = size
        self._fonts: dict[int, ImageFont.FreeTypeFont] = {}
        self._widths: dict[str, float] = {}

    def font(self, index: int) -> ImageFont.FreeTypeFont:
        if index not in self._fonts:
            face = self.faces[index]
            font = ImageFont.truetype(
                str(face.path), self.size, index=face.index, layout_engine=ImageFont.Layout.RAQM
            )
            if face.weight is not None:
                try:
                    axes = font.get_variation_axes()
                except OSError:  # not a variable font
                    axes = []
                if axes:
                    font.set_variation_by_axes([_axis_value(axis, face.weight) for axis in axes])
            self._fonts[index] = font
        return self._fonts[index]

    def _ordered(self, text: str) -> Iterator[tuple[str, ImageFont.FreeTypeFont]]:
        pieces = [(run, self.font(i)) for run, i in runs(text, self.faces)]
        # Runs of one line in visual order: a right-to-left line with runs in several fonts is drawn from
        # its last logical run (each run is shaped, and ordered within itself, by libraqm).
        yield from reversed(pieces) if rtl(text) and len(pieces) > 1 else pieces

    def width(self, text: str) -> float:
        """The advance width of ``text`` in pixels, as drawn (shaped, kerned)."""
        if text not in self._widths:
            self._widths[text] = sum(font.getlength(run) for run, font in self._ordered(text))
        return self._widths[text]

    def line_height(self) -> int:
        ascent, descent = self.font(0).getmetrics()
        return ascent + descent

    def draw(
        self,
        draw: ImageDraw.ImageDraw,
        xy: tuple[float, float],
        text: str,
        *,
        fill: tuple[int, ...],
        stroke: int,
        stroke_fill: tuple[int, ...],
    ) -> None:
        x, y = xy
        for run, font in self._ordered(text):
            if run.strip():
                draw.text((x, y), run, font=font, fill=fill, stroke_width=stroke, stroke_fill=stroke_fill)
            x += font.getlength(run)
