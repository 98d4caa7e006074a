"""Word timings (issue 15, first slice): eSpeak NG's own word events, kept with the speech stage's record
and published as ``<name>.words.json`` beside the video, on both paths of the graph."""

from __future__ import annotations

import itertools
import json
import re
from pathlib import Path

import sqlalchemy as sa

from castflow import media, pipeline
from castflow.actors import ensure_sample_actors
from castflow.db.tables import StageRun
from castflow.models import VideoRequest, Voice
from castflow.runtime import Runtime

SCRIPT = "Fresh coffee, every single morning. Try it today!"


def spoken(text: str) -> list[str]:
    return re.findall(r"[\w']+", text)


def test_espeak_gives_each_word_its_start_and_end(rt: Runtime, tmp_path: Path) -> None:
    voice = Voice(provider="local", model="espeak-ng", voice_id="en-us+f2")
    made = rt.speech["local"].synthesize(SCRIPT, voice, workdir=tmp_path)  # type: ignore[union-attr]
    words = made.meta["words"]
    assert [w["word"] for w in words] == spoken(SCRIPT)
    seconds = media.decode_audio(made.path).seconds
    starts = [w["start"] for w in words]
    assert starts == sorted(starts)
    assert starts[0] >= 0.15  # after the breath of silence put before the speech
    for word, following in zip(words, [*words[1:], None], strict=True):
        assert word["end"] > word["start"]
        assert word["end"] <= (following["start"] if following else seconds)
    # The pause at the full stop shows: the gap after "morning" is the longest between two words.
    gaps = [b["start"] - a["end"] for a, b in itertools.pairwise(words)]
    assert gaps.index(max(gaps)) == spoken(SCRIPT).index("morning")


def test_a_script_video_publishes_its_words_beside_it(rt: Runtime) -> None:
    ensure_sample_actors(rt)
    video = pipeline.prepare_video(rt, VideoRequest(actor="maya", script=SCRIPT))
    pipeline.record_start(rt, video)
    result = pipeline.run_video(rt, video)
    assert result.video_key is not None
    key = result.video_key.removesuffix(".mp4") + ".words.json"
    published = json.loads(rt.storage.local_path(key).read_text(encoding="utf-8"))
    assert [w["word"] for w in published["words"]] == spoken(SCRIPT)
    assert published["words"][-1]["end"] <= published["audio_seconds"]
    with rt.session() as s:  # kept with the stage's record
        meta = s.scalar(sa.select(StageRun.meta).where(StageRun.stage == "speech"))
    assert meta is not None
    assert meta["words"] == published["words"]


def test_an_uploaded_audio_gets_no_words_file(rt: Runtime, tmp_path: Path) -> None:
    ensure_sample_actors(rt)
    voice = Voice(provider="local", model="espeak-ng", voice_id="en-us")
    made = rt.speech["local"].synthesize("An uploaded voice.", voice, workdir=tmp_path)  # type: ignore[union-attr]
    video = pipeline.prepare_video(rt, VideoRequest(actor="leo", audio=str(made.path)))
    pipeline.record_start(rt, video)
    result = pipeline.run_video(rt, video)
    assert result.video_key is not None
    assert not rt.storage.exists(result.video_key.removesuffix(".mp4") + ".words.json")


def test_the_generate_video_flow_publishes_the_words_too(rt: Runtime, prefect_server: None) -> None:
    from flows.generate_video import generate_video

    ensure_sample_actors(rt)
    result = generate_video(VideoRequest(actor="leo", script="Words on the Prefect path."))
    assert result.video_key is not None
    key = result.video_key.removesuffix(".mp4") + ".words.json"
    words = json.loads(rt.storage.local_path(key).read_text(encoding="utf-8"))["words"]
    assert [w["word"] for w in words] == ["Words", "on", "the", "Prefect", "path"]


def test_an_uploaded_audio_with_its_script_gets_aligned_words_and_captions(
    rt: Runtime, tmp_path: Path
) -> None:
    """The row gives both: the audio plays, the script says what it says. Its words are aligned to the
    audio (no engine timings: source 'aligned'), within 80 ms of where the speech really has them."""
    ensure_sample_actors(rt)
    voice = Voice(provider="local", model="espeak-ng", voice_id="en-us+m3")
    made = rt.speech["local"].synthesize(SCRIPT, voice, workdir=tmp_path)  # type: ignore[union-attr]
    truth = made.meta["words"]  # where this audio really has its words (eSpeak's own events)
    video = pipeline.prepare_video(
        rt, VideoRequest(actor="leo", audio=str(made.path), script=SCRIPT, captions="karaoke")
    )
    pipeline.record_start(rt, video)
    result = pipeline.run_video(rt, video)
    assert result.status == "succeeded", result.error
    assert result.video_key is not None
    stem = result.video_key.removesuffix(".mp4")
    published = json.loads(rt.storage.local_path(stem + ".words.json").read_text(encoding="utf-8"))
    assert published["source"] == "aligned"
    assert [w["word"] for w in published["words"]] == spoken(SCRIPT)
    errors = sorted(abs(a["start"] - b["start"]) for a, b in zip(published["words"], truth, strict=True))
    assert errors[len(errors) // 2] <= 0.08
    assert rt.storage.exists(stem + ".srt")
    assert "\\k" in rt.storage.local_path(stem + ".ass").read_text(encoding="utf-8")
    with rt.session() as s:
        stages = sorted(s.scalars(sa.select(StageRun.stage)))
    assert stages == ["audio_ingest", "captions", "lipsync", "timing"]  # no speech: nothing spoken
