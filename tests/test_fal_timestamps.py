"""Word timings from fal's ElevenLabs TTS (``timestamps: true``): every element shape found for the
untyped ``timestamps`` list, garbage, and a speech stage through the loopback fake.

Shapes and where they come from (fal types the field only as ``Array<void>``, "Timestamps for each word in
the generated speech": fal-js ``libs/client/src/types/endpoints.ts`` @381105e, ``ElevenlabsTtsElevenV3Output``):

- ``WORDS``: fal's own ElevenLabs word type, ``TranscriptionWord`` {text, start, end, type, speaker_id?}
  (same file, ``fal-ai/elevenlabs/speech-to-text``); third-party code types the TTS field the same way.
- ``ALIGNMENT``: ElevenLabs' ``with-timestamps`` alignment {characters, character_start_times_seconds,
  character_end_times_seconds} (elevenlabs.io/docs/api-reference/text-to-speech-with-timestamps), which
  WaveSpeed's ``elevenlabs/eleven-v3/timing`` relays as ``{"audio", "alignment"}``.
- ``WEBSOCKET``: ElevenLabs' websocket chunks {chars, charStartTimesMs, charDurationsMs}, chunk-relative.
- Guessed by third-party fal callers: {word|text, start|start_time, end|end_time}; fal whisper's
  {text, timestamp: [start, end]}.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from castflow import media, pipeline
from castflow.actors import ActorSpec, ensure_sample_actors, import_actors
from castflow.db.tables import StageRun
from castflow.models import Voice
from castflow.providers.fal.fake import VALID_KEY, FakeFal, timestamps
from castflow.providers.fal.roles import FalSpeech
from castflow.providers.fal.timestamps import WORD, describe, is_elevenlabs_tts, words_from_output
from castflow.providers.http import PollSchedule, RetryPolicy
from castflow.runtime import Runtime, get_runtime
from castflow.settings import reset_settings

SCRIPT = "Fresh coffee, every single morning. Try it today!"
SPOKEN = [m.group() for m in WORD.finditer(SCRIPT)]  # Fresh coffee every single morning Try it today


def timed(words: list[dict[str, object]]) -> list[tuple[object, object, object]]:
    return [(w["word"], w["start"], w["end"]) for w in words]


def check_words(words: list[dict[str, object]], script: str, seconds: float | None = None) -> None:
    """As eSpeak's: every word of the script, in order, starts rising, each end after its start."""
    assert [w["word"] for w in words] == [m.group() for m in WORD.finditer(script)]
    starts = [float(w["start"]) for w in words]  # type: ignore[arg-type]
    assert starts == sorted(starts)
    for w in words:
        assert float(w["end"]) > float(w["start"])  # type: ignore[arg-type]
        if seconds is not None:
            assert float(w["end"]) <= seconds + 1e-9  # type: ignore[arg-type]


# Times of each script word, as a TTS would give them.
TIMES = [(0.1, 0.4), (0.45, 0.8), (0.9, 1.2), (1.25, 1.6), (1.65, 2.1), (2.5, 2.7), (2.75, 2.85), (2.9, 3.3)]
EXPECTED = [(w, s, e) for w, (s, e) in zip(SPOKEN, TIMES, strict=True)]
PUNCTUATED = ["Fresh", "coffee,", "every", "single", "morning.", "Try", "it", "today!"]


def fal_words() -> list[dict[str, Any]]:
    """fal's ElevenLabs word shape: punctuation kept, spacing entries in between."""
    out: list[dict[str, Any]] = []
    for text, (start, end) in zip(PUNCTUATED, TIMES, strict=True):
        if out:
            out.append({"text": " ", "start": out[-1]["end"], "end": start, "type": "spacing"})
        out.append({"text": text, "start": start, "end": end, "type": "word", "speaker_id": "speaker_0"})
    return out


def char_alignment(script: str = SCRIPT, times: list[tuple[float, float]] = TIMES) -> dict[str, Any]:
    """ElevenLabs' character alignment of ``script`` whose words take ``times``."""
    spans = [(m.start(), m.end()) for m in WORD.finditer(script)]
    starts, ends = [], []
    for i in range(len(script)):
        n = next((k for k, (a, b) in enumerate(spans) if a <= i < b), None)
        if n is None:
            before = max((times[k][1] for k, (_a, b) in enumerate(spans) if b <= i), default=0.0)
            starts.append(before)
            ends.append(before)
        else:
            (a, b), (s, e) = spans[n], times[n]
            starts.append(s + (e - s) * (i - a) / (b - a))
            ends.append(s + (e - s) * (i + 1 - a) / (b - a))
    return {
        "characters": list(script),
        "character_start_times_seconds": starts,
        "character_end_times_seconds": ends,
    }


# ---- the shapes -------------------------------------------------------------------------------------


def test_fal_word_objects_with_spacing_entries() -> None:
    words = words_from_output({"audio": {"url": "u"}, "timestamps": fal_words()}, SCRIPT, audio_seconds=3.5)
    assert timed(words) == EXPECTED
    check_words(words, SCRIPT, 3.5)


@pytest.mark.parametrize(
    "entry",
    [
        lambda t, s, e: {"word": t, "start_time": s, "end_time": e},
        lambda t, s, e: {"text": t, "start": str(s), "end": str(e)},  # numbers as strings
        lambda t, s, e: {"text": t, "start_ms": round(s * 1000), "end_ms": round(e * 1000)},
        lambda t, s, e: {"word": t, "startMs": round(s * 1000), "durationMs": round((e - s) * 1000)},
        lambda t, s, e: {"text": t, "start": s, "duration": round(e - s, 6)},
        lambda t, s, e: {"text": t, "timestamp": [s, e]},  # fal whisper's chunks
        lambda t, s, e: [t, s, e],
        lambda t, s, e: {"text": t, "start_time_seconds": s, "end_time_seconds": e, "extra": {"x": 1}},
    ],
)
def test_word_level_variants(entry: Any) -> None:
    raw = [entry(t, s, e) for t, (s, e) in zip(PUNCTUATED, TIMES, strict=True)]
    words = words_from_output({"timestamps": raw}, SCRIPT, audio_seconds=3.5)
    assert timed(words) == EXPECTED


def test_a_word_without_an_end_ends_where_the_next_starts() -> None:
    raw = [{"text": t, "start": s} for t, (s, _e) in zip(PUNCTUATED, TIMES, strict=True)]
    words = words_from_output({"timestamps": raw}, SCRIPT, audio_seconds=3.5)
    assert [w["end"] for w in words[:-1]] == [s for s, _e in TIMES[1:]]
    check_words(words, SCRIPT, 3.5)


def test_an_entry_of_several_words_is_shared_by_length() -> None:
    raw = [{"text": "Fresh coffee,", "start": 0.0, "end": 1.1}] + [
        {"text": t, "start": s, "end": e} for t, (s, e) in zip(PUNCTUATED[2:], TIMES[2:], strict=True)
    ]
    words = words_from_output({"timestamps": raw}, SCRIPT)
    assert timed(words)[:2] == [("Fresh", 0.0, 0.5), ("coffee", 0.5, 1.1)]


@pytest.mark.parametrize(
    "output",
    [
        {"timestamps": [char_alignment()]},  # one alignment in the list
        {"timestamps": char_alignment()},  # the alignment itself
        {"timestamps": {"alignment": char_alignment(), "normalized_alignment": char_alignment()}},
        {"timestamps": [{"alignment": char_alignment()}]},
        {"audio": {"url": "u"}, "alignment": char_alignment()},  # passed through, as relays do
        {"timestamps": [{**char_alignment(), "characters": "".join(SCRIPT)}]},  # characters as a string
    ],
)
def test_elevenlabs_character_alignment(output: dict[str, Any]) -> None:
    words = words_from_output(output, SCRIPT, audio_seconds=3.5)
    assert timed(words) == EXPECTED


def test_a_normalized_alignment_is_tried_when_the_alignment_does_not_fit() -> None:
    wrong = char_alignment("Something else entirely, said in another language here.", TIMES)
    words = words_from_output(
        {"timestamps": {"alignment": wrong, "normalized_alignment": char_alignment()}}, SCRIPT
    )
    assert [w for w, _s, _e in timed(words)] == SPOKEN


def test_stream_chunks_of_alignment_are_joined() -> None:
    whole = char_alignment()
    cut = 20  # mid-word: "sin|gle"
    chunks = [
        {"audio_base64": "AAAA", "alignment": {k: v[:cut] for k, v in whole.items()}},
        {"audio_base64": "AAAA", "alignment": {k: v[cut:] for k, v in whole.items()}},
    ]
    words = words_from_output({"timestamps": chunks}, SCRIPT)
    assert timed(words) == EXPECTED


def test_websocket_chunks_with_chunk_relative_milliseconds() -> None:
    whole = char_alignment()
    cut = SCRIPT.index("Try")
    chunks = []
    for lo, hi in ((0, cut), (cut, len(SCRIPT))):
        base = whole["character_start_times_seconds"][lo]
        starts = whole["character_start_times_seconds"][lo:hi]
        ends = whole["character_end_times_seconds"][lo:hi]
        chunks.append(
            {
                "chars": whole["characters"][lo:hi],
                "charStartTimesMs": [round((s - base) * 1000) for s in starts],
                "charDurationsMs": [round((e - s) * 1000) for s, e in zip(starts, ends, strict=True)],
            }
        )
    words = words_from_output({"timestamps": chunks}, SCRIPT)
    assert [w for w, _s, _e in timed(words)] == SPOKEN
    check_words(words, SCRIPT)
    # The second chunk continues after the first (its own times restart at 0).
    assert float(words[SPOKEN.index("Try")]["start"]) >= float(words[SPOKEN.index("morning")]["end"])  # type: ignore[arg-type]


def test_words_spelled_otherwise_share_the_span_of_what_was_said() -> None:
    script = "Only 5 dollars today"
    raw = [
        {"text": "Only", "start": 0.0, "end": 0.3},
        {"text": "five", "start": 0.3, "end": 0.6},
        {"text": "dollars", "start": 0.6, "end": 1.0},
        {"text": "today", "start": 1.0, "end": 1.4},
    ]
    words = words_from_output({"timestamps": raw}, script)
    assert timed(words)[1] == ("5", 0.3, 0.6)
    check_words(words, script)


def test_audio_tags_and_extra_words_are_tolerated() -> None:
    script = "[excited] Fresh coffee, every single morning. Try it today!"
    words = words_from_output({"timestamps": fal_words()}, script, audio_seconds=3.5)
    check_words(words, script, 3.5)
    assert timed(words)[1:] == EXPECTED


def test_a_few_missing_words_are_placed_between_their_neighbours() -> None:
    raw = [w for w in fal_words() if w["text"] != "single"]
    words = words_from_output({"timestamps": raw}, SCRIPT, audio_seconds=3.5)
    check_words(words, SCRIPT, 3.5)
    single = words[SPOKEN.index("single")]
    assert float(words[2]["end"]) <= float(single["start"]) <= float(words[4]["start"])  # type: ignore[arg-type]


def test_milliseconds_under_seconds_keys_are_recognised_by_the_audio_length() -> None:
    raw = [
        {"text": t, "start": s * 1000, "end": e * 1000} for t, (s, e) in zip(PUNCTUATED, TIMES, strict=True)
    ]
    words = words_from_output({"timestamps": raw}, SCRIPT, audio_seconds=3.5)
    assert timed(words) == EXPECTED


# ---- garbage gives no words, never an error ---------------------------------------------------------


@pytest.mark.parametrize(
    "output",
    [
        None,
        "not a dict",
        {},
        {"audio": {"url": "u"}},
        {"timestamps": None},
        {"timestamps": []},
        {"timestamps": {}},
        {"timestamps": "Fresh 0.1 0.4"},
        {"timestamps": [1, 2, 3]},
        {"timestamps": [None, None]},
        {"timestamps": [[]]},
        {"timestamps": [{"foo": "bar"}]},
        {"timestamps": [{"text": t} for t in PUNCTUATED]},  # no times at all
        {"timestamps": [{"text": t, "start": "soon", "end": None} for t in PUNCTUATED]},
        {"timestamps": [{"text": t, "start": True, "end": False} for t in PUNCTUATED]},
        {"timestamps": [{"text": t, "start": math.nan, "end": math.inf} for t in PUNCTUATED]},
        {"timestamps": [{"text": t, "start": -1.0, "end": -0.5} for t in PUNCTUATED]},
        {"timestamps": [{"text": 5, "start": 0.1, "end": 0.2}]},
        {"timestamps": [{"characters": ["a"], "character_start_times_seconds": "x"}]},
        {"timestamps": [{"characters": [1, 2], "character_start_times_seconds": [0, 1]}]},
        {"timestamps": {"alignment": None, "normalized_alignment": [None]}},
        {
            "timestamps": [
                {"text": "Completely", "start": 0, "end": 1},
                {"text": "unrelated", "start": 1, "end": 2},
            ]
        },
    ],
)
def test_garbage_gives_no_words(output: Any) -> None:
    assert words_from_output(output, SCRIPT, audio_seconds=3.5) == []


def test_fewer_words_than_the_script_needs_give_none() -> None:
    raw = fal_words()[:5]  # three of eight words
    assert words_from_output({"timestamps": raw}, SCRIPT, audio_seconds=3.5) == []
    # ... unless the threshold allows it.
    words = words_from_output({"timestamps": raw}, SCRIPT, audio_seconds=3.5, min_match=0.3)
    check_words(words, SCRIPT, 3.5)


def test_times_running_backwards_give_none() -> None:
    raw = [{"text": t, "start": 5 - s, "end": 5.2 - s} for t, (s, _e) in zip(PUNCTUATED, TIMES, strict=True)]
    assert words_from_output({"timestamps": raw}, SCRIPT) == []


def test_times_past_the_audio_give_none() -> None:
    assert words_from_output({"timestamps": fal_words()}, SCRIPT, audio_seconds=1.0) == []
    # A hair past the end (decoders differ) is clamped, not refused.
    words = words_from_output({"timestamps": fal_words()}, SCRIPT, audio_seconds=3.25)
    check_words(words, SCRIPT, 3.25)


def test_an_empty_script_gives_none() -> None:
    assert words_from_output({"timestamps": fal_words()}, "   ...  ") == []


def test_random_junk_never_raises() -> None:
    draw = random.Random(7)
    atoms: list[Any] = [None, True, 0, -1, 1.5, math.nan, "", "x", "Fresh", "1.2", [], {}]
    keys = [
        "text",
        "word",
        "start",
        "end",
        "type",
        "characters",
        "chars",
        "character_start_times_seconds",
        "character_end_times_seconds",
        "charStartTimesMs",
        "charDurationsMs",
        "alignment",
        "timestamp",
    ]

    def junk(depth: int = 0) -> Any:
        roll = draw.random()
        if depth > 3 or roll < 0.4:
            return draw.choice(atoms)
        if roll < 0.7:
            return [junk(depth + 1) for _ in range(draw.randint(0, 6))]
        return {draw.choice(keys): junk(depth + 1) for _ in range(draw.randint(0, 5))}

    for _ in range(2000):
        result = words_from_output({"timestamps": junk(), "alignment": junk()}, SCRIPT, audio_seconds=3.0)
        assert isinstance(result, list)
        describe(junk())


def test_describe_shows_the_structure_not_the_values() -> None:
    text = describe({"timestamps": [{"text": "secret words", "start": 0.5}]})
    assert "secret" not in text
    assert "text: str" in text
    assert "start: float" in text


# ---- the role's payload -----------------------------------------------------------------------------


def test_only_elevenlabs_models_are_asked_for_timestamps() -> None:
    for model in (
        "fal-ai/elevenlabs/tts/multilingual-v2",
        "fal-ai/elevenlabs/tts/turbo-v2.5",
        "fal-ai/elevenlabs/tts/eleven-v3",
    ):
        assert is_elevenlabs_tts(model)
        assert FalSpeech.payload(model, "Hi.", "Aria", timestamps=True) == {
            "text": "Hi.",
            "voice": "Aria",
            "timestamps": True,
        }
        assert "timestamps" not in FalSpeech.payload(model, "Hi.", "Aria", timestamps=False)
    minimax = FalSpeech.payload("fal-ai/minimax/speech-2.8-hd", "Hi.", "Wise_Woman", timestamps=True)
    assert "timestamps" not in minimax
    assert not is_elevenlabs_tts("fal-ai/minimax/speech-2.8-hd")
    assert not is_elevenlabs_tts("fal-ai/elevenlabs/sound-effects/v2")


# ---- the fake -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", ["words", "alignment"])
def test_the_fakes_timestamps_read_back_as_espeaks_words(shape: str) -> None:
    espeak = [{"word": w, "start": s, "end": e} for w, s, e in EXPECTED]
    stamps = timestamps(SCRIPT, espeak, shape)
    assert stamps
    assert timed(words_from_output({"timestamps": stamps}, SCRIPT)) == EXPECTED
    assert timestamps(SCRIPT, espeak, "none") is None
    assert timestamps(SCRIPT, espeak[:3], shape) is None  # eSpeak's words must be the script's


# ---- a speech stage through the fake ----------------------------------------------------------------


@pytest.fixture
def fake() -> Iterator[FakeFal]:
    with FakeFal().running() as server:
        yield server


def fal_runtime(fake: FakeFal, monkeypatch: pytest.MonkeyPatch, model: str, **env: str) -> Runtime:
    monkeypatch.setenv("CASTFLOW_FAL__KEY", VALID_KEY)
    for host in ("QUEUE_URL", "REST_URL", "CDN_URL"):
        monkeypatch.setenv(f"CASTFLOW_FAL__{host}", fake.url)
    for name, value in env.items():
        monkeypatch.setenv(f"CASTFLOW_FAL__{name}", value)
    reset_settings()
    rt = get_runtime()
    client = rt.speech["fal"].client  # type: ignore[union-attr]
    client.poll = PollSchedule(first=0.05, factor=2, cap=0.2)
    client.policy = RetryPolicy(attempts=4, base_delay=0.01, max_delay=0.05, total_seconds=10)
    ensure_sample_actors(rt)
    voice = Voice(provider="fal", model=model, voice_id="Aria")
    import_actors(
        rt, [ActorSpec(key="nia", name="Nia", portrait="drawn:ava", voice=voice)], base_dir=Path.cwd()
    )
    return rt


def speech_meta(rt: Runtime) -> dict[str, Any]:
    with rt.session() as s:
        meta = s.scalar(sa.select(StageRun.meta).where(StageRun.stage == "speech"))
    assert meta is not None
    return dict(meta)


@pytest.mark.parametrize(
    ("model", "shape"),
    [
        ("fal-ai/elevenlabs/tts/multilingual-v2", "words"),
        ("fal-ai/elevenlabs/tts/turbo-v2.5", "alignment"),
        ("fal-ai/elevenlabs/tts/eleven-v3", "words"),
    ],
)
def test_an_elevenlabs_speech_stage_records_its_words(
    fake: FakeFal, data_dir: Path, monkeypatch: pytest.MonkeyPatch, model: str, shape: str
) -> None:
    rt = fal_runtime(fake, monkeypatch, model)
    fake.knobs.timestamps_shape = shape
    outcome = pipeline.speech(rt, pipeline.actor_ref(rt, "nia"), SCRIPT)
    assert [job.payload.get("timestamps") for job in fake.jobs.values()] == [True]
    seconds = media.decode_audio(rt.storage.local_path(outcome.output.key)).seconds
    meta = speech_meta(rt)
    words = meta["words"]
    check_words(words, SCRIPT, seconds)
    assert float(words[0]["start"]) >= 0.15  # eSpeak's breath of silence before the speech
    assert "timestamps_unread" not in meta
    assert pipeline.speech(rt, pipeline.actor_ref(rt, "nia"), SCRIPT).reused


@pytest.mark.parametrize("shape", ["words", "alignment"])
def test_the_synthetic_fake_answers_with_timestamps_too(
    fake: FakeFal, data_dir: Path, monkeypatch: pytest.MonkeyPatch, shape: str
) -> None:
    """The benchmarks' cheap fake speaks the same protocol: words spread over its tone, so a campaign on
    it times words as on ElevenLabs (from the speech), not by aligning a tone."""
    rt = fal_runtime(fake, monkeypatch, "fal-ai/elevenlabs/tts/multilingual-v2")
    fake.knobs.synthetic = True
    fake.knobs.timestamps_shape = shape
    outcome = pipeline.speech(rt, pipeline.actor_ref(rt, "nia"), SCRIPT)
    seconds = media.decode_audio(rt.storage.local_path(outcome.output.key)).seconds
    check_words(speech_meta(rt)["words"], SCRIPT, seconds)


def test_no_timestamps_in_the_output_records_no_words(
    fake: FakeFal, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rt = fal_runtime(fake, monkeypatch, "fal-ai/elevenlabs/tts/multilingual-v2")
    fake.knobs.timestamps_shape = "none"
    outcome = pipeline.speech(rt, pipeline.actor_ref(rt, "nia"), SCRIPT)
    assert outcome.output.seconds
    meta = speech_meta(rt)
    assert "words" not in meta
    assert "timestamps_unread" not in meta


def test_unreadable_timestamps_never_fail_the_paid_stage(
    fake: FakeFal, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import castflow.providers.fal.fake as fake_module

    monkeypatch.setattr(
        fake_module, "timestamps", lambda *_a: [{"mystery": [1, "two"], "n": 3}, {"mystery": None}]
    )
    rt = fal_runtime(fake, monkeypatch, "fal-ai/elevenlabs/tts/multilingual-v2")
    outcome = pipeline.speech(rt, pipeline.actor_ref(rt, "nia"), SCRIPT)
    assert outcome.output.seconds
    meta = speech_meta(rt)
    assert "words" not in meta
    assert meta["timestamps_unread"].startswith("{timestamps: list[2] of {mystery: list[2]")


def test_timestamps_can_be_turned_off(fake: FakeFal, data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rt = fal_runtime(fake, monkeypatch, "fal-ai/elevenlabs/tts/multilingual-v2", SPEECH_TIMESTAMPS="false")
    pipeline.speech(rt, pipeline.actor_ref(rt, "nia"), SCRIPT)
    assert [job.payload.get("timestamps") for job in fake.jobs.values()] == [None]
    assert "words" not in speech_meta(rt)


def test_minimax_is_not_asked_for_timestamps(
    fake: FakeFal, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rt = fal_runtime(fake, monkeypatch, "fal-ai/minimax/speech-2.8-hd")
    pipeline.speech(rt, pipeline.actor_ref(rt, "nia"), SCRIPT)
    assert "timestamps" not in next(iter(fake.jobs.values())).payload
    assert "words" not in speech_meta(rt)


def test_the_fake_refuses_a_timestamps_flag_that_is_not_a_boolean(fake: FakeFal) -> None:
    import httpx

    resp = httpx.post(
        f"{fake.url}/fal-ai/elevenlabs/tts/multilingual-v2",
        json={"text": "Hi.", "timestamps": "yes please"},
        headers={"Authorization": f"Key {VALID_KEY}"},
    )
    assert resp.status_code == 422
    assert resp.json()["detail"][0]["loc"] == ["body", "timestamps"]
