"""Word timings from fal's ElevenLabs TTS models (``timestamps: true``), as the speech stage records them.

fal's schema types the output's ``timestamps`` as a bare list ("Timestamps for each word in the generated
speech", items untyped: docs/providers/fal.md section 3.1 and section 7 point 7), so the element shape is
read defensively. Shapes understood (sources in the module's tests, ``tests/test_fal_timestamps.py``):

- word objects, fal's own ElevenLabs word type (``TranscriptionWord`` of ``fal-ai/elevenlabs/speech-to-text``
  in fal-js ``types/endpoints.ts``): ``{"text", "start", "end", "type": "word"|"spacing"|"audio_event",
  "speaker_id"?}``; also ``word`` for ``text``, ``start_time``/``end_time``, ``start_ms``/``end_ms``,
  ``duration``, and fal whisper's ``{"text", "timestamp": [start, end]}``; ``[text, start, end]`` rows;
- ElevenLabs' character alignment (``/v1/text-to-speech/{voice}/with-timestamps``): ``{"characters",
  "character_start_times_seconds", "character_end_times_seconds"}``, alone, as a list of chunks, or under
  ``alignment``/``normalized_alignment`` (the output's top level too, as relays such as WaveSpeed's
  ``elevenlabs/eleven-v3/timing`` pass it through);
- ElevenLabs' websocket alignment chunks: ``{"chars", "charStartTimesMs", "charDurationsMs"}`` (times from
  the start of each chunk).

Whatever the shape, the timings are matched to the words of *our* script (the same word pattern as the
embedded eSpeak engine), in order. A shape not understood, or timings that do not fit the script or the
audio, give no words: the caller records none and the speech stage succeeds all the same.
"""

from __future__ import annotations

import difflib
import itertools
import logging
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

WORD = re.compile(r"[\w'’-]+")  # as castflow.providers.local.word_timings splits a script
ELEVENLABS_TTS = "/elevenlabs/tts/"
DEFAULT_MIN_MATCH = 0.75

_TEXT_KEYS = ("text", "word", "token", "value")
_START_S = ("start", "start_time", "start_s", "start_seconds", "start_time_seconds", "begin")
_END_S = ("end", "end_time", "end_s", "end_seconds", "end_time_seconds", "stop")
_START_MS = ("start_ms", "startMs", "start_time_ms", "startTimeMs", "begin_ms")
_END_MS = ("end_ms", "endMs", "end_time_ms", "endTimeMs")
_DURATION_S = ("duration", "duration_s", "duration_seconds")
_DURATION_MS = ("duration_ms", "durationMs")
_NOT_SPOKEN = {"spacing", "audio_event", "space", "silence", "pause"}
_CHARS = ("characters", "chars")
_CONTAINERS = ("alignment", "normalized_alignment", "normalizedAlignment", "words", "timestamps", "chunks")


def is_elevenlabs_tts(model: str) -> bool:
    """fal's ElevenLabs TTS endpoints (multilingual-v2, turbo-v2.5, eleven-v3) take ``timestamps``."""
    return ELEVENLABS_TTS in model


@dataclass(frozen=True)
class Timed:
    """A piece of spoken text and its span in the audio (seconds; None where the shape gave none)."""

    text: str
    start: float | None
    end: float | None


def words_from_output(
    output: Any,
    script: str,
    *,
    audio_seconds: float | None = None,
    min_match: float = DEFAULT_MIN_MATCH,
) -> list[dict[str, object]]:
    """The words of ``script`` with their start and end in seconds (``{"word", "start", "end"}``, as the
    eSpeak engine records them), from a fal TTS output; ``[]`` when it carries no usable timings. At least
    ``min_match`` of the script's words must be found in the timings, in order. Never raises."""
    try:
        for tokens in _candidates(output, top=True):
            words = align(script, tokens, audio_seconds=audio_seconds, min_match=min_match)
            if words:
                return words
    except Exception:  # a paid stage never fails over its timestamps
        log.warning("fal: could not read the speech's timestamps (%s)", describe(output), exc_info=True)
    return []


def describe(value: Any, depth: int = 0) -> str:
    """The structure of ``value`` (types and keys, never the values), to report a shape not understood."""
    if isinstance(value, dict):
        if depth >= 3:
            return "{...}"
        inner = ", ".join(f"{k}: {describe(v, depth + 1)}" for k, v in list(value.items())[:8])
        return "{" + inner + (", ..." if len(value) > 8 else "") + "}"
    if isinstance(value, list | tuple):
        first = describe(value[0], depth + 1) if value and depth < 3 else ""
        return f"list[{len(value)}]" + (f" of {first}" if first else "")
    return type(value).__name__


# ---- reading the shapes ----------------------------------------------------------------------------


def _candidates(value: Any, *, top: bool = False) -> Iterator[list[Timed]]:
    """Timed token lists ``value`` could mean, most likely first (each is matched to the script in turn)."""
    if isinstance(value, dict):
        chars = _char_chunks([value])
        if chars is not None:
            yield chars
            return
        keys = ("timestamps", *_CONTAINERS) if top else _CONTAINERS
        found = False
        for key in dict.fromkeys(keys):
            if value.get(key) is not None:
                found = True
                yield from _candidates(value[key])
        if not found and not top:
            single = _entries([value])
            if single:
                yield single
        return
    if isinstance(value, list | tuple) and value:
        chars = _char_chunks(list(value))
        if chars is not None:
            yield chars
            return
        entries = _entries(list(value))
        if entries:
            yield entries
        if all(isinstance(item, dict) for item in value):
            if len(value) == 1:
                yield from _candidates(value[0])
                return
            for key in ("alignment", "normalized_alignment", "normalizedAlignment"):  # stream chunks
                chunks = _char_chunks([item.get(key) for item in value])
                if chunks is not None:
                    yield chunks


def _num(value: Any) -> float | None:
    """A finite, non-negative number, from a number or a numeric string; None otherwise."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            return None
    else:
        return None
    return number if math.isfinite(number) and number >= 0 else None


def _first(entry: dict[str, Any], keys: tuple[str, ...], scale: float = 1.0) -> float | None:
    for key in keys:
        number = _num(entry.get(key))
        if number is not None:
            return number * scale
    return None


def _entry(item: Any) -> tuple[str, float | None, float | None] | None:
    """(text, start, end) of one word-level element, or None when it is not a spoken word."""
    if isinstance(item, list | tuple) and item and isinstance(item[0], str):
        start = _num(item[1]) if len(item) > 1 else None
        end = _num(item[2]) if len(item) > 2 else None
        return item[0], start, end
    if not isinstance(item, dict):
        return None
    text = next((item[k] for k in _TEXT_KEYS if isinstance(item.get(k), str)), None)
    if text is None:
        return None
    kind = item.get("type")
    if isinstance(kind, str) and kind.strip().lower() in _NOT_SPOKEN:
        return None
    start = _first(item, _START_S)
    if start is None:
        start = _first(item, _START_MS, 0.001)
    end = _first(item, _END_S)
    if end is None:
        end = _first(item, _END_MS, 0.001)
    span = item.get("timestamp")
    if isinstance(span, list | tuple) and len(span) == 2:  # fal whisper's chunks
        start = start if start is not None else _num(span[0])
        end = end if end is not None else _num(span[1])
    if end is None and start is not None:
        duration = _first(item, _DURATION_S)
        if duration is None:
            duration = _first(item, _DURATION_MS, 0.001)
        if duration is not None:
            end = start + duration
    return text, start, end


def _entries(items: list[Any]) -> list[Timed]:
    """Word-level elements as timed script-like tokens: an element's text may hold several words (or
    punctuation), which share its span in proportion to their length."""
    rows = [row for row in map(_entry, items) if row is not None]
    tokens: list[Timed] = []
    for n, (text, start, given_end) in enumerate(rows):
        end = given_end
        if end is None and start is not None:  # the next element's start closes this one
            following = next((r[1] for r in rows[n + 1 :] if r[1] is not None), None)
            end = following if following is not None and following >= start else start
        parts = [m.group() for m in WORD.finditer(text)]
        if not parts:
            continue
        if start is None or end is None or end < start:
            tokens.extend(Timed(p, None, None) for p in parts)
            continue
        size = sum(map(len, parts))
        at = start
        for part in parts:
            until = at + (end - start) * len(part) / size
            tokens.append(Timed(part, at, until))
            at = until
    return tokens


def _char_chunk(chunk: Any) -> tuple[list[str], list[float | None], list[float | None]] | None:
    """(characters, starts, ends) of one character alignment, or None when ``chunk`` is not one."""
    if not isinstance(chunk, dict):
        return None
    raw = next((chunk[k] for k in _CHARS if k in chunk), None)
    if not isinstance(raw, str | list | tuple) or not all(isinstance(c, str) for c in raw):
        return None
    chars = list(raw)
    if "character_start_times_seconds" in chunk:
        starts = [_num(v) for v in _seq(chunk.get("character_start_times_seconds"))]
        ends = [_num(v) for v in _seq(chunk.get("character_end_times_seconds"))]
    else:
        ms_start = next((chunk[k] for k in ("charStartTimesMs", "char_start_times_ms") if k in chunk), None)
        ms_dur = next((chunk[k] for k in ("charDurationsMs", "char_durations_ms") if k in chunk), None)
        if ms_start is None:
            return None
        starts = [_ms(x) for x in _seq(ms_start)]
        durations = [_ms(x) for x in _seq(ms_dur)]
        ends = []
        for n, begin in enumerate(starts):
            length = durations[n] if n < len(durations) else None
            ends.append(None if begin is None or length is None else begin + length)
    size = min(len(chars), len(starts))
    ends = ends + [None] * (size - len(ends))
    return chars[:size], starts[:size], ends[:size]


def _ms(value: Any) -> float | None:
    number = _num(value)
    return None if number is None else number / 1000


def _seq(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list | tuple) else []


def _char_chunks(chunks: list[Any]) -> list[Timed] | None:
    """Character alignments (one, or the chunks of a stream in order) as timed word tokens; None when
    ``chunks`` are not character alignments. A chunk whose times start again from zero (the websocket
    API's) is moved after the chunks before it."""
    parsed = [_char_chunk(c) for c in chunks]
    if not parsed or any(p is None for p in parsed):
        return None
    chars: list[str] = []
    starts: list[float | None] = []
    ends: list[float | None] = []
    offset = 0.0
    for item in parsed:
        assert item is not None
        c, s, e = item
        first = next((x for x in s if x is not None), None)
        last = max((x for x in ends if x is not None), default=None)
        if first is not None and last is not None and first + offset < last - 0.05:
            offset = last  # chunk-relative times: continue from where the speech so far ended
        chars.extend(c)
        starts.extend(None if x is None else x + offset for x in s)
        ends.extend(None if x is None else x + offset for x in e)
    joined = "".join(chars)
    if len(joined) != len(chars):  # multi-character "characters": index by element, not by string
        joined = "".join(c[:1] or " " for c in chars)
    tokens: list[Timed] = []
    for match in WORD.finditer(joined):
        span = range(match.start(), match.end())
        begin = next((starts[i] for i in span if starts[i] is not None), None)
        finish = next((ends[i] for i in reversed(span) if ends[i] is not None), None)
        if finish is None:
            finish = next((starts[i] for i in reversed(span) if starts[i] is not None), None)
        if begin is not None and finish is not None and finish < begin:
            finish = begin
        tokens.append(Timed(match.group(), begin, finish))
    return tokens


# ---- matching the timings to the script ------------------------------------------------------------


def _key(text: str) -> str:
    return text.casefold().replace("’", "'")


def align(
    script: str,
    tokens: list[Timed],
    *,
    audio_seconds: float | None = None,
    min_match: float = DEFAULT_MIN_MATCH,
) -> list[dict[str, object]]:
    """The script's words timed by ``tokens``: equal words (in order) take their token's span; words the
    timings spell differently ("5" said "five") share the span of those tokens; words with no token share
    the gap between their neighbours. ``[]`` when too few words match, or the times run backwards or past
    the audio."""
    spoken = [m.group() for m in WORD.finditer(script)]
    if not spoken or not tokens or not any(t.start is not None for t in tokens):
        return []
    if audio_seconds:
        tokens = _seconds(tokens, audio_seconds)
    spans: list[tuple[float, float] | None] = [None] * len(spoken)
    matched = 0
    matcher = difflib.SequenceMatcher(
        None, [_key(w) for w in spoken], [_key(t.text) for t in tokens], autojunk=False
    )
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        if tag == "equal":
            for k in range(i2 - i1):
                token = tokens[j1 + k]
                if token.start is not None and token.end is not None:
                    spans[i1 + k] = (token.start, token.end)
                    matched += 1
        elif tag == "replace":
            timed = [t for t in tokens[j1:j2] if t.start is not None and t.end is not None]
            if timed:
                start = min(t.start for t in timed if t.start is not None)
                end = max(t.end for t in timed if t.end is not None)
                _share(spans, spoken, i1, i2, start, end)
    if matched < max(1, math.ceil(min_match * len(spoken))):
        return []
    known = [s for s in spans if s is not None]
    if any(b[0] < a[0] - 0.25 for a, b in itertools.pairwise(known)):
        return []  # times run backwards: not this audio's timeline
    _fill(spans, spoken, audio_seconds)
    words: list[dict[str, object]] = []
    previous = 0.0
    for word, span in zip(spoken, spans, strict=True):
        assert span is not None
        start = max(span[0], previous)
        end = max(span[1], start + 0.01)
        if audio_seconds:
            if start > audio_seconds + 0.5 or span[1] > audio_seconds * 1.1 + 0.5:
                return []  # timings well past the end of the audio: not this audio's
            end = min(end, audio_seconds)
            start = min(start, end)
        words.append({"word": word, "start": round(start, 3), "end": round(end, 3)})
        previous = start
    return words


def _seconds(tokens: list[Timed], audio_seconds: float) -> list[Timed]:
    """Times that only fit the audio read as milliseconds are taken as milliseconds."""
    latest = max((t.end if t.end is not None else t.start or 0.0) for t in tokens)
    if latest > audio_seconds * 20 and latest / 1000 <= audio_seconds * 1.5:
        return [
            Timed(
                t.text, None if t.start is None else t.start / 1000, None if t.end is None else t.end / 1000
            )
            for t in tokens
        ]
    return tokens


def _share(
    spans: list[tuple[float, float] | None], spoken: list[str], i1: int, i2: int, start: float, end: float
) -> None:
    """Words ``i1:i2`` share ``start``–``end`` in proportion to their length."""
    size = sum(len(w) for w in spoken[i1:i2]) or 1
    at = start
    for i in range(i1, i2):
        until = at + (end - start) * len(spoken[i]) / size
        spans[i] = (at, until)
        at = until


def _fill(spans: list[tuple[float, float] | None], spoken: list[str], audio_seconds: float | None) -> None:
    """Words without a span share the gap between the spans around them."""
    i = 0
    while i < len(spans):
        if spans[i] is not None:
            i += 1
            continue
        j = i
        while j < len(spans) and spans[j] is None:
            j += 1
        before = spans[i - 1] if i > 0 else None
        after = spans[j] if j < len(spans) else None
        start = before[1] if before else (after[0] if after else 0.0)
        end = after[0] if after else (audio_seconds if audio_seconds and audio_seconds > start else start)
        _share(spans, spoken, i, j, start, max(end, start))
        i = j
