"""Captions: the script timed word by word, fitted to the frame, burned in, and written as SRT and ASS.

Timing comes from the speech's word timings (eSpeak's own events, a TTS's timestamps, or the script
aligned to the audio); without them the script's characters are spread over the voiced span of the
audio. The script's own words are shown (punctuation, figures and emoji as written).

Three styles, the looks short-form ads use:

- ``clean``: one or two lines per cue, sentence case, a thin outline; a cue ends at a sentence end, a
  pause, or when two lines are full.
- ``bold``: one to three words at a time, upper case, large and heavily outlined (the short-form look).
- ``karaoke``: one line at a time with the spoken word highlighted.

Every line is measured in its real fonts (castflow.typeset) and wrapped to the platform safe band (on
1080x1920: x 180-900, y 220-1420, scaled to other sizes). A word too wide for the band at the style's
size makes its cue smaller (down to half size) and, past that, is broken between characters, so no glyph
ever leaves the band.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageDraw

from castflow import media, typeset

STYLE_NAMES = ("clean", "bold", "karaoke")
FONT_HINT = " (Chinese, Japanese and Korean need the castflow[cjk] extra: pip install 'castflow[cjk]')"
WORD = re.compile(r"[\w'’-]+")
SENTENCE_END = re.compile(r"[.!?…。！？]['\"”’)]*$")
CLAUSE_END = re.compile(r"[,;:、，；：—–]['\"”’)]*$")


@dataclass(frozen=True)
class Style:
    name: str
    font: str  # castflow.typeset.primary name
    size: float  # font size as a share of the safe band's width
    max_lines: int
    max_words: int | None  # words per cue (None: as many as fit)
    upper: bool
    outline: float  # outline width as a share of the font size
    colour: tuple[int, int, int] = (255, 255, 255)
    outline_colour: tuple[int, int, int] = (0, 0, 0)
    highlight: tuple[int, int, int] | None = None  # karaoke: the spoken word's colour
    anchor: float = 1.0  # where the block sits in the band: 1 = its bottom edge, 0.5 = centred
    max_seconds: float = 5.0
    break_at_clauses: bool = False


STYLES: dict[str, Style] = {
    "clean": Style("clean", "noto-600", size=1 / 13, max_lines=2, max_words=None, upper=False, outline=0.08),
    "bold": Style(
        "bold",
        "montserrat-900",
        size=1 / 7.5,
        max_lines=3,
        max_words=3,
        upper=True,
        outline=0.14,
        anchor=0.84,  # low in the band: clear of the mouth also when a 9:16 render is fitted into a square
        max_seconds=2.0,
        break_at_clauses=True,
    ),
    "karaoke": Style(
        "karaoke",
        "montserrat-800",
        size=1 / 11,
        max_lines=1,
        max_words=None,
        upper=False,
        outline=0.1,
        highlight=(255, 221, 51),
        max_seconds=4.0,
        break_at_clauses=True,
    ),
}

MIN_SCALE = 0.5  # a cue shrinks at most to half the style's size before words are broken
PAUSE_BREAK_S = 0.6  # a silence this long between words ends a cue
HOLD_S = 0.4  # a cue stays this long after its last word unless the next one starts
LINE_GAP = 0.12  # between lines, as a share of the font size


@dataclass(frozen=True)
class Band:
    """The area captions stay inside, in pixels of the frame."""

    left: int
    top: int
    right: int
    bottom: int

    @property
    def width(self) -> int:
        return self.right - self.left


def safe_band(width: int, height: int) -> Band:
    """The platform safe band (TikTok/Reels UI kept clear), 180-900 x 220-1420 on 1080x1920, scaled."""
    return Band(
        left=round(width * 180 / 1080),
        top=round(height * 220 / 1920),
        right=round(width * 900 / 1080),
        bottom=round(height * 1420 / 1920),
    )


@dataclass(frozen=True)
class Token:
    """A piece of the script as shown (a word with its punctuation), with when it is spoken."""

    text: str
    start: float
    end: float


@dataclass(frozen=True)
class Placed:
    token: Token  # as written in the script (the SRT's text)
    x: float  # from the line's left edge
    shown: str  # as drawn (bold: upper case)


@dataclass(frozen=True)
class Cue:
    start: float
    end: float
    lines: tuple[tuple[Placed, ...], ...]
    size: int  # font size in pixels
    widths: tuple[float, ...] = field(default=())  # of each line

    @property
    def text(self) -> str:
        return "\n".join(" ".join(p.token.text for p in line) for line in self.lines)

    @property
    def tokens(self) -> list[Token]:
        return [p.token for line in self.lines for p in line]


# ---- timing --------------------------------------------------------------------------------------------


def voiced_span(audio: media.Audio, fps: int = 25) -> tuple[float, float]:
    """Start and end (seconds) of the speech in the audio: the first and last voiced frame."""
    frames = media.frame_count(audio.seconds, fps)
    env = media.loudness_envelope(audio, fps, frames)
    voiced = np.flatnonzero(env > 0.05)
    if len(voiced) == 0:
        return 0.0, audio.seconds
    return float(voiced[0]) / fps, min(audio.seconds, float(voiced[-1] + 1) / fps)


def spread_words(script: str, span: tuple[float, float]) -> list[dict[str, object]]:
    """Word timings guessed from the characters: each word of ``script`` gets a share of ``span`` in
    proportion to its length (for a speech that came without timings)."""
    words = WORD.findall(script)
    if not words:
        return []
    start, end = span
    total = sum(len(w) + 1 for w in words)
    out: list[dict[str, object]] = []
    at = start
    for word in words:
        until = at + (end - start) * (len(word) + 1) / total
        out.append(
            {"word": word, "start": round(at, 3), "end": round(until - (end - start) * 0.3 / total, 3)}
        )
        at = until
    return out


def tokens(script: str, words: Sequence[dict[str, object]], seconds: float) -> list[Token]:
    """The script's pieces (split at spaces) with times from ``words`` (its words in order, as
    castflow.providers.local.word_timings gives them). A piece without a word of its own (an emoji, a
    dash) shares the time of the piece before it."""
    times = [(float(w["start"]), float(w["end"])) for w in words]  # type: ignore[arg-type]
    out: list[Token] = []
    used = 0
    for piece in script.split():
        count = len(WORD.findall(piece))
        if count and used < len(times):
            span = times[used : used + count]
            used += count
            start, end = span[0][0], max(e for _s, e in span)
        elif out:
            start, end = out[-1].start, out[-1].end
        else:
            start, end = (times[0][0], times[0][0]) if times else (0.0, 0.0)
        out.append(Token(piece, max(0.0, min(start, seconds)), max(0.0, min(end, seconds))))
    return out


# ---- layout --------------------------------------------------------------------------------------------


FONT_FILES = (".ttf", ".otf", ".ttc", ".woff", ".woff2")


def caption_face(font: str, base: Path | None = None) -> typeset.Face:
    """A caption font: a shipped one by name (``montserrat-800``, ``noto-600``) or a font file (a brand
    kit's own, relative to ``base``); OSError or ValueError when it cannot be used."""
    if not font.lower().endswith(FONT_FILES):
        return typeset.primary(font)
    path = Path(font).expanduser()
    if not path.is_absolute() and base is not None:
        path = base / path
    from fontTools.ttLib import TTFont

    loaded = TTFont(path, lazy=True, fontNumber=0)
    try:
        family = loaded["name"].getBestFamilyName() or path.stem
    finally:
        loaded.close()
    return typeset.Face(path, str(family))


def faces(style: Style) -> tuple[typeset.Face, ...]:
    """The style's font and the fallbacks after it."""
    return typeset.chain(caption_face(style.font))


def branded(style_name: str, font: str | None, colours: dict[str, tuple[int, int, int]]) -> Style:
    """A style in a brand's font and colours (``text``, ``outline``, ``highlight``)."""
    style = STYLES[style_name]
    return replace(
        style,
        font=font or style.font,
        colour=colours.get("text", style.colour),
        outline_colour=colours.get("outline", style.outline_colour),
        highlight=colours.get("highlight", style.highlight) if style.highlight else None,
    )


def block(style: Style, text: str, size: tuple[int, int], start: float, end: float) -> Cue | None:
    """``text`` as one cue shown from ``start`` to ``end`` (a hook line, an end card's call to action),
    fitted to the band; None when it does not fit in the style's lines even at half size."""
    layout = Layout(style, *size)
    pieces = layout.pieces([Token(word, start, end) for word in text.split()])
    if not pieces or layout.fit(pieces) is None:
        return None
    (cue,) = layout._placed(pieces)
    return replace(cue, start=start, end=end)


def missing_glyphs(script: str, style_name: str) -> str | None:
    """The characters of ``script`` that no caption font draws in this style, described for an error
    message (the row must not run: its captions would show empty boxes); None when all are drawn."""
    style = STYLES[style_name]
    text = script.upper() if style.upper else script
    lacking = typeset.missing(text, faces(style))
    if not lacking:
        return None
    hint = FONT_HINT if any(_unspaced(c) for c in lacking) else ""
    return f"no caption font draws {typeset.describe(lacking[:5])}{hint}"


def _shown(style: Style, text: str) -> str:
    return text.upper() if style.upper else text


def _split_wide(setter: typeset.Setter, token: Token, width: float) -> list[Token]:
    """A token wider than ``width`` cut between characters into pieces that fit, its time shared by
    length (scripts without spaces, and very long words)."""
    pieces: list[str] = []
    current = ""
    for char in token.text:
        if current and not typeset._joins(char) and setter.width(current + char) > width:
            pieces.append(current)
            current = char
        else:
            current += char
    pieces.append(current)
    total = sum(len(p) for p in pieces)
    out, at = [], token.start
    for piece in pieces:
        until = at + (token.end - token.start) * len(piece) / total
        out.append(Token(piece, at, until))
        at = until
    return out


def visual_order(texts: Sequence[str], rtl: bool) -> list[int]:
    """The order in which a line's words appear from left to right. Left to right for a left-to-right
    script; for a right-to-left one the words run from the right, except runs of left-to-right words
    (a brand name, an English phrase in an Arabic script), which keep their own order (as the Unicode
    bidirectional algorithm places them; each word itself is shaped and ordered by libraqm)."""
    if not rtl:
        return list(range(len(texts)))
    runs: list[tuple[bool, list[int]]] = []
    for i, text in enumerate(texts):
        latin = not typeset.rtl(text) and any(unicodedata.bidirectional(c) == "L" for c in text)
        if latin and runs and runs[-1][0]:
            runs[-1][1].append(i)
        else:
            runs.append((latin, [i]))
    return [i for _latin, run in reversed(runs) for i in run]


def _unspaced(text: str) -> bool:
    """Whether ``text`` is of a script written without spaces (Han, kana, Hangul: wide letters), which
    may be broken between any two characters."""
    return any(unicodedata.east_asian_width(c) in ("W", "F") and c.isalpha() for c in text)


def _wrap(
    setter: typeset.Setter, style: Style, items: Sequence[Token], width: float
) -> list[list[Token]] | None:
    """``items`` wrapped into lines no wider than ``width``; None when one of them alone is wider."""
    lines: list[list[Token]] = []
    current: list[Token] = []
    for token in items:
        if setter.width(_shown(style, token.text)) > width:
            return None
        trial = " ".join(_shown(style, t.text) for t in [*current, token])
        if current and setter.width(trial) > width:
            lines.append(current)
            current = [token]
        else:
            current.append(token)
    if current:
        lines.append(current)
    return lines


class Layout:
    """Cue building for one style on one frame size."""

    def __init__(self, style: Style, width: int, height: int, band: Band | None = None) -> None:
        self.style = style
        self.band = band or safe_band(width, height)
        self.faces = faces(style)
        # Sized from the band's width on upright and square frames; on a wide frame from what that
        # width would be on the frame's short side (the text stays the size a viewer expects).
        measure = min(self.band.width, round(min(width, height) * 720 / 1080))
        self.full = max(12, round(measure * style.size))
        self.min_size = max(10, round(self.full * MIN_SCALE))
        self._setters: dict[int, typeset.Setter] = {}

    def setter(self, size: int) -> typeset.Setter:
        if size not in self._setters:
            self._setters[size] = typeset.Setter(self.faces, size)
        return self._setters[size]

    def stroke(self, size: int) -> int:
        return max(1, round(size * self.style.outline))

    def room(self, size: int) -> float:
        """The width a line may take: the band less the outline on both sides."""
        return self.band.width - 2 * self.stroke(size)

    def fit(self, items: Sequence[Token]) -> tuple[int, list[list[Token]]] | None:
        """The largest size (from the style's, down to half of it) at which ``items`` wrap into at most
        ``max_lines`` lines; None when they do not fit even at the smallest."""
        size, smallest = self.full, self.min_size
        while size >= smallest:
            lines = _wrap(self.setter(size), self.style, items, self.room(size))
            if lines is not None and len(lines) <= self.style.max_lines:
                return size, lines
            size = max(smallest, round(size * 0.9)) if size > smallest else smallest - 1
        return None

    def pieces(self, script_tokens: Sequence[Token]) -> list[Token]:
        """The tokens, each narrow enough for a line. A word too wide at the style's size makes its cue
        smaller when it fits at half size; otherwise (and always for text of scripts written without
        spaces, Chinese or Japanese) it is broken between characters at the style's size."""
        full, smallest = self.setter(self.full), self.setter(self.min_size)
        out: list[Token] = []
        for token in script_tokens:
            shown = _shown(self.style, token.text)
            if full.width(shown) <= self.room(self.full) or (
                not _unspaced(shown) and smallest.width(shown) <= self.room(self.min_size)
            ):
                out.append(token)
            else:
                out.extend(_split_wide(full, replace(token, text=shown), self.room(self.full)))
        return out

    rtl = False  # the script reads right to left (set by cues() from the whole script)

    def cues(self, script_tokens: Sequence[Token]) -> list[Cue]:
        """The tokens grouped into cues: each fits the band, ends at a sentence end (a clause end for
        bold and karaoke), a pause, the style's word limit or its longest time on screen."""
        self.rtl = typeset.rtl(" ".join(t.text for t in script_tokens))
        groups: list[list[Token]] = []
        current: list[Token] = []
        for token in self.pieces(script_tokens):
            if current and self._breaks_before(current, token):
                groups.append(current)
                current = []
            current.append(token)
        if current:
            groups.append(current)
        cues: list[Cue] = []
        for group in groups:
            cues.extend(self._placed(group))
        return self._timed(cues)

    def _breaks_before(self, current: list[Token], token: Token) -> bool:
        style, last = self.style, current[-1]
        if SENTENCE_END.search(last.text):
            return True
        if style.break_at_clauses and CLAUSE_END.search(last.text):
            return True
        if token.start - last.end >= PAUSE_BREAK_S:
            return True
        if style.max_words is not None and len(current) >= style.max_words:
            return True
        if token.end - current[0].start > style.max_seconds:
            return True
        return self.fit([*current, token]) is None

    def _placed(self, group: list[Token]) -> list[Cue]:
        fitted = self.fit(group)
        if fitted is None:  # cannot happen for one piece (pieces() made each fit); split and retry
            half = max(1, len(group) // 2)
            return self._placed(group[:half]) + self._placed(group[half:])
        size, lines = fitted
        setter = self.setter(size)
        space = setter.width(" ")
        placed_lines: list[tuple[Placed, ...]] = []
        widths: list[float] = []
        for line in lines:
            shown = [_shown(self.style, t.text) for t in line]
            sizes = [setter.width(text) for text in shown]
            total = sum(sizes) + space * (len(shown) - 1)
            xs = [0.0] * len(shown)
            x = 0.0
            for i in visual_order(shown, self.rtl):  # left to right on the screen
                xs[i] = x
                x += sizes[i] + space
            placed_lines.append(tuple(Placed(t, xs[i], shown[i]) for i, t in enumerate(line)))
            widths.append(total)
        return [Cue(group[0].start, group[-1].end, tuple(placed_lines), size, tuple(widths))]

    @staticmethod
    def _timed(cues: list[Cue]) -> list[Cue]:
        """Each cue from its first word until the next cue starts (at most HOLD_S after its last word)."""
        out: list[Cue] = []
        for i, cue in enumerate(cues):
            last_word_end = max(t.end for t in cue.tokens)
            end = last_word_end + HOLD_S
            if i + 1 < len(cues):
                nxt = cues[i + 1].start
                end = nxt if nxt - last_word_end < PAUSE_BREAK_S else min(end, nxt)
            end = max(end, cue.start + 0.2)
            out.append(replace(cue, start=round(cue.start, 3), end=round(end, 3)))
        return out

    # ---- drawing ---------------------------------------------------------------------------------------

    def overlay(self, cue: Cue, size: tuple[int, int], active: Token | None = None) -> Image.Image:
        """The cue drawn on a transparent frame (``active``: the word to highlight, karaoke).

        The lines are drawn first on a scratch canvas and placed by their ink, outline included: the
        block's bottom on the band's bottom (clean, karaoke) or its centre on the style's anchor (bold),
        and moved inside the band wherever a script's glyphs reach further than the font's metrics say."""
        style, band = self.style, self.band
        setter = self.setter(cue.size)
        stroke = self.stroke(cue.size)
        step = setter.line_height() + cue.size * LINE_GAP
        pad = 2 * cue.size + stroke
        scratch = Image.new(
            "RGBA", (band.width + 2 * pad, round(step * len(cue.lines)) + 2 * pad), (0, 0, 0, 0)
        )
        draw = ImageDraw.Draw(scratch)
        y = float(pad)
        for line, width in zip(cue.lines, cue.widths, strict=True):
            left = pad + (band.width - width) / 2
            for placed in line:
                colour = style.highlight if style.highlight and placed.token == active else style.colour
                setter.draw(
                    draw,
                    (left + placed.x, y),
                    placed.shown,
                    fill=(*colour, 255),
                    stroke=stroke,
                    stroke_fill=(*style.outline_colour, 255),
                )
            y += step
        image = Image.new("RGBA", size, (0, 0, 0, 0))
        ink = scratch.getbbox()
        if ink is None:
            return image
        ink_w, ink_h = ink[2] - ink[0], ink[3] - ink[1]
        x = band.left + (ink[0] - pad)  # as laid out: centred in the band
        x = max(band.left, min(x, band.right - ink_w))
        if style.anchor >= 1:
            y_top = band.bottom - ink_h
        elif style.anchor <= 0:  # the top of the band (a hook line)
            y_top = band.top
        else:
            y_top = round(band.top + (band.bottom - band.top) * style.anchor - ink_h / 2)
        y_top = max(band.top, min(y_top, band.bottom - ink_h))
        image.paste(scratch.crop(ink), (round(x), round(y_top)))
        return image

    def ink_centre(self, cue: Cue, size: tuple[int, int]) -> tuple[int, int]:
        box = self.overlay(cue, size).getbbox() or (0, 0, *size)
        return (box[0] + box[2]) // 2, (box[1] + box[3]) // 2


def build(
    style_name: str | Style,
    script: str,
    words: Sequence[dict[str, object]],
    audio: media.Audio,
    size: tuple[int, int],
    band: Band | None = None,
) -> tuple[Layout, list[Cue]]:
    """The cues of ``script`` in a style (by name, or a brand's version of one) for a frame of ``size``,
    timed by ``words`` (or by the audio's voiced span when there are none); ``band``: a smaller one than
    the platform's safe band (a logo in a bottom corner takes its bottom)."""
    layout = Layout(style_name if isinstance(style_name, Style) else STYLES[style_name], *size, band=band)
    if not words:
        words = spread_words(script, voiced_span(audio))
    return layout, layout.cues(tokens(script, words, audio.seconds))


# ---- files ---------------------------------------------------------------------------------------------


def _stamp(seconds: float) -> str:
    ms = round(seconds * 1000)
    h, ms = divmod(ms, 3_600_000)
    m, ms = divmod(ms, 60_000)
    s, ms = divmod(ms, 1000)
    return f"{h:02d}:{m:02d}:{s:02d},{ms:03d}"


def srt(cues: Sequence[Cue]) -> str:
    """The cues as SubRip text."""
    blocks = [f"{i}\n{_stamp(c.start)} --> {_stamp(c.end)}\n{c.text}\n" for i, c in enumerate(cues, 1)]
    return "\n".join(blocks)


def _ass_time(seconds: float) -> str:
    cs = round(seconds * 100)
    h, cs = divmod(cs, 360_000)
    m, cs = divmod(cs, 6000)
    s, cs = divmod(cs, 100)
    return f"{h}:{m:02d}:{s:02d}.{cs:02d}"


def _ass_colour(rgb: tuple[int, int, int]) -> str:
    r, g, b = rgb
    return f"&H00{b:02X}{g:02X}{r:02X}"


def _ass_text(text: str) -> str:
    # ASS reads "{...}" as override tags and "\" as an escape: shown as look-alike characters instead.
    return text.replace("\\", "⧵").replace("{", "｛").replace("}", "｝")


def ass(layout: Layout, cues: Sequence[Cue], size: tuple[int, int]) -> str:
    """The cues as an Advanced SubStation Alpha file with the style's font, colours, outline and the
    safe band as margins (karaoke: ``\\k`` timings, the spoken word in the highlight colour)."""
    style, band = layout.style, layout.band
    width, height = size
    face = typeset.primary(style.font)
    bold = -1 if (face.weight or 400) >= 600 else 0
    primary, secondary = style.colour, style.colour
    if style.highlight:  # \k: words already spoken in the primary colour, the rest in the secondary
        primary, secondary = style.highlight, style.colour
    margin_v = height - band.bottom if style.anchor >= 1 else 0
    alignment = 2 if style.anchor >= 1 else 5
    header = [
        "[Script Info]",
        "; written by castflow",
        "ScriptType: v4.00+",
        f"PlayResX: {width}",
        f"PlayResY: {height}",
        "WrapStyle: 2",
        "ScaledBorderAndShadow: yes",
        "",
        "[V4+ Styles]",
        "Format: Name, Fontname, Fontsize, PrimaryColour, SecondaryColour, OutlineColour, BackColour, "
        "Bold, Italic, Underline, StrikeOut, ScaleX, ScaleY, Spacing, Angle, BorderStyle, Outline, Shadow, "
        "Alignment, MarginL, MarginR, MarginV, Encoding",
        f"Style: {style.name},{face.family},{layout.full},{_ass_colour(primary)},{_ass_colour(secondary)},"
        f"{_ass_colour(style.outline_colour)},&H80000000,{bold},0,0,0,100,100,0,0,1,"
        f"{layout.stroke(layout.full)},0,{alignment},{band.left},{width - band.right},{margin_v},1",
        "",
        "[Events]",
        "Format: Layer, Start, End, Style, Name, MarginL, MarginR, MarginV, Effect, Text",
    ]
    events = []
    for cue in cues:
        size_tag = f"{{\\fs{cue.size}}}" if cue.size != layout.full else ""
        if style.highlight:
            parts, at = [], cue.start
            for line in cue.lines:
                words = []
                for placed in sorted(line, key=lambda p: p.token.start):
                    token = placed.token
                    lead = max(0.0, token.start - at)
                    if lead >= 0.01:
                        words.append(f"{{\\k{round(lead * 100)}}}")
                    words.append(
                        f"{{\\k{max(1, round((token.end - token.start) * 100))}}}{_ass_text(placed.shown)}"
                    )
                    at = max(at, token.end)
                parts.append(" ".join(words))
            text = "\\N".join(parts)
        else:
            text = "\\N".join(_ass_text(" ".join(p.shown for p in line)) for line in cue.lines)
        if style.anchor < 1:
            x, y = layout.ink_centre(cue, size)
            size_tag += f"{{\\an5\\pos({x},{y})}}"
        events.append(
            f"Dialogue: 0,{_ass_time(cue.start)},{_ass_time(cue.end)},{style.name},,0,0,0,,{size_tag}{text}"
        )
    return "\n".join([*header, *events]) + "\n"


# ---- burning -------------------------------------------------------------------------------------------


class Overlays:
    """The cues of a frame size, each drawn once (karaoke: once per lit word) and found by time: the
    picture to lay over a frame at ``now`` and where."""

    def __init__(self, layout: Layout, cues: Sequence[Cue], size: tuple[int, int]) -> None:
        self.layout, self.cues, self.size = layout, list(cues), size
        self._drawn: dict[tuple[int, int], tuple[Image.Image, tuple[int, int]] | None] = {}

    def at(self, now: float) -> tuple[Image.Image, tuple[int, int]] | None:
        index = next((i for i, c in enumerate(self.cues) if c.start <= now < c.end), None)
        if index is None:
            return None
        cue = self.cues[index]
        word, active = -1, None
        if self.layout.style.highlight:
            spoken = [i for i, t in enumerate(cue.tokens) if t.start <= now]
            word = spoken[-1] if spoken else -1
            active = cue.tokens[word] if word >= 0 else None
        if (index, word) not in self._drawn:
            image = self.layout.overlay(cue, self.size, active)
            box = image.getbbox()
            self._drawn[(index, word)] = (image.crop(box), (box[0], box[1])) if box else None
        return self._drawn[(index, word)]

    def over(self, picture: Image.Image, now: float) -> Image.Image:
        """``picture`` with the cue showing at ``now`` laid over it (a copy; the same one when none)."""
        found = self.at(now)
        if found is None:
            return picture
        image, corner = found
        picture = picture.copy()
        picture.paste(image, corner, image)
        return picture


def burn(video: Path, audio: media.Audio, layout: Layout, cues: Sequence[Cue], dest: Path) -> Path:
    """Re-encode ``video`` with the cues drawn on its frames."""
    info = media.probe(video)
    if not info.width or not info.height or not info.fps:
        raise media.MediaError(f"{video.name} has no video stream to caption")
    size = (info.width, info.height)
    fps = round(info.fps)
    overlays = Overlays(layout, cues, size)

    def frames() -> Iterator[npt.NDArray[np.uint8]]:
        for n, frame in enumerate(media.decode_video_frames(video)):
            if overlays.at(n / fps) is None:
                yield frame
            else:
                yield np.asarray(overlays.over(Image.fromarray(frame), n / fps), dtype=np.uint8)

    media.encode_video(dest, frames(), size=size, fps=fps, audio=audio)
    return dest
