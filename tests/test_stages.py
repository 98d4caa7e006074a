from __future__ import annotations

import subprocess
import sys

import pytest

from castflow.models import MediaRef, Voice
from castflow.pipeline import lipsync_key, scene_variant_key, speech_key
from castflow.runtime import Runtime
from castflow.stages import normalise_text, stage_key

BASE = {"stage": "speech", "provider": "fal", "model": "m1", "text": "hello", "voice": "v1", "seed": 1}


def _key(**changes: object) -> str:
    args = {**BASE, **changes}
    stage = args.pop("stage")
    return stage_key(str(stage), **args)  # type: ignore[arg-type]


def test_key_is_stable_in_process_and_across_processes() -> None:
    here = _key()
    assert here == _key()
    assert len(here) == 64
    code = (
        "from castflow.stages import stage_key;"
        "print(stage_key('speech', provider='fal', model='m1', text='hello', voice='v1', seed=1))"
    )
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert other.stdout.strip() == here


@pytest.mark.parametrize(
    "change",
    [
        {"stage": "lipsync"},
        {"provider": "local"},
        {"model": "m2"},
        {"text": "hello!"},
        {"voice": "v2"},
        {"seed": 2},
        {"resolution": "720p"},
    ],
)
def test_key_changes_with_every_input(change: dict[str, object]) -> None:
    assert _key(**change) != _key()


def test_argument_order_does_not_matter() -> None:
    assert stage_key("s", provider="p", model="m", a=1, b=2) == stage_key(
        "s", model="m", provider="p", b=2, a=1
    )


def test_text_normalisation_ignores_spacing_and_unicode_form() -> None:
    assert normalise_text("  Hello \n  world\t") == "Hello world"
    assert normalise_text("Cafe\u0301") == normalise_text("Café")
    assert speech_key(Voice(provider="p", model="m", voice_id="v"), " hi  there ") == speech_key(
        Voice(provider="p", model="m", voice_id="v"), "hi there"
    )


def test_pipeline_keys_follow_their_inputs(rt: Runtime) -> None:
    voice = Voice(provider="local", model="espeak-ng", voice_id="en-us")
    assert speech_key(voice, "hi") != speech_key(voice.model_copy(update={"voice_id": "en"}), "hi")
    assert speech_key(voice, "hi") != speech_key(voice.model_copy(update={"model": "x"}), "hi")
    assert speech_key(voice, "hi") != speech_key(voice, "hi.")
    img = MediaRef(key="a.png", sha256="1" * 64, content_type="image/png")
    img2 = MediaRef(key="a.png", sha256="2" * 64, content_type="image/png")
    aud = MediaRef(key="a.wav", sha256="3" * 64, content_type="audio/wav")
    # Keys depend on content hashes, not on storage keys or paths.
    assert scene_variant_key(rt, img, "beach", 0) == scene_variant_key(
        rt, img.model_copy(update={"key": "elsewhere.png"}), "beach", 0
    )
    assert scene_variant_key(rt, img, "beach", 0) != scene_variant_key(rt, img2, "beach", 0)
    assert scene_variant_key(rt, img, "beach", 0) != scene_variant_key(rt, img, "beach", 1)
    assert scene_variant_key(rt, img, "beach", 0) != scene_variant_key(rt, img, "kitchen", 0)
    base = lipsync_key(rt, img, aud, "480p", 0)
    assert base != lipsync_key(rt, img2, aud, "480p", 0)
    assert base != lipsync_key(rt, img, aud.model_copy(update={"sha256": "4" * 64}), "480p", 0)
    assert base != lipsync_key(rt, img, aud, "720p", 0)
    assert base != lipsync_key(rt, img, aud, "480p", 7)


def test_a_stage_finished_in_this_process_is_reused_without_a_database_round_trip(rt: Runtime) -> None:
    """Rows sharing a speech: the first finds it in the database, later ones in the process's memory
    of finished stages (no SQL at all); an entry older than its time limit is looked up again."""
    import sqlalchemy as sa

    from castflow import pipeline
    from castflow.actors import ensure_sample_actors

    ensure_sample_actors(rt)
    actor = pipeline.actor_ref(rt, "maya")
    first = pipeline.speech(rt, actor, "One script, many rows.")
    assert not first.reused
    statements: list[str] = []

    def count(_conn: object, _cursor: object, statement: str, *_args: object) -> None:
        statements.append(statement)

    sa.event.listen(rt.engine, "before_cursor_execute", count)
    try:
        again = pipeline.speech(rt, actor, "One script, many rows.")
        assert again.reused
        assert again.output == first.output
        assert statements == []
        rt.finished_stages.ttl_s = 0.0  # expired: back to the database, which still says succeeded
        third = pipeline.speech(rt, actor, "One script, many rows.")
        assert third.reused
        assert third.output == first.output
        assert any("stage_run" in s for s in statements)
    finally:
        sa.event.remove(rt.engine, "before_cursor_execute", count)
        rt.finished_stages.ttl_s = 300.0


def test_a_videos_request_key_derives_from_every_field_of_the_request(rt: Runtime) -> None:
    from pydantic import Field

    from castflow import pipeline
    from castflow.actors import ensure_sample_actors
    from castflow.models import VideoRequest

    ensure_sample_actors(rt)
    request = VideoRequest(actor="maya", script="Hi  there.", scene="a beach")
    key = pipeline.prepare_video(rt, request).request_key
    # The key of c0b2db8 for this request: videos made before the refactor are found again.
    assert key == "video:3b379752bf5ccb6030d7fdcafa041e2a4ac8ad0d42dad9e72ecca21ca6fc3257"

    class WithHook(VideoRequest):  # a column added to the request, as a team would add one
        hook: str | None = Field(default=None)

    same = WithHook(actor="maya", script="Hi there.", scene="a beach")
    assert pipeline.prepare_video(rt, same).request_key == key  # at its default: the same video
    hooked = WithHook(actor="maya", script="Hi there.", scene="a beach", hook="Wait for it")
    assert pipeline.prepare_video(rt, hooked).request_key != key  # given: another video


def test_text_normalisation_is_the_regex_form_keys_were_made_with() -> None:
    """Stage keys of earlier versions were made with re.sub(r"\\s+", " ", ...).strip(): the faster form
    must give the same text for every whitespace character Python knows (else old stages are missed)."""
    import random
    import re
    import sys
    import unicodedata

    spaces = [chr(c) for c in range(sys.maxunicode + 1) if re.fullmatch(r"\s", chr(c))]
    alphabet = [*spaces, "a", "é", "e\u0301", "\u200b", "-"]
    rng = random.Random(7)
    for _ in range(20_000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 10)))
        assert normalise_text(text) == re.sub(r"\s+", " ", unicodedata.normalize("NFC", text)).strip()
    # A key as json.dumps and the regex made it before (the stored stages of earlier runs match it).
    text = normalise_text(" Cafe\u0301 \u3000 brûlée\n")
    assert stage_key("speech", provider="fal", model="m", voice="v", text=text) == (
        "226bcce8729c739f3d70cb379552f101b36849471e64f73de7a7f4d566ab4cee"
    )
