"""``CASTFLOW_PROVIDERS__FAKES=true``: every paid role runs its real client against in-process fakes."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa

from castflow import media
from castflow.actors import ActorSpec, ensure_sample_actors, import_actors
from castflow.db.tables import StageRun
from castflow.fakes import running_fakes
from castflow.models import VideoRequest, Voice
from castflow.providers.fal.roles import FalImageEditor, FalSpeech
from castflow.providers.http import RetryPolicy
from castflow.providers.wavespeed.lipsync import WaveSpeedLipSync
from castflow.runtime import get_runtime
from castflow.settings import reset_settings


def test_video_on_fakes_without_keys(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch, prefect_server: None
) -> None:
    from flows.generate_video import generate_video

    monkeypatch.setenv("CASTFLOW_PROVIDERS__FAKES", "true")
    monkeypatch.setenv("CASTFLOW_PROVIDERS__IMAGE", "fal")
    monkeypatch.setenv("CASTFLOW_PROVIDERS__LIPSYNC", "wavespeed")
    reset_settings()
    rt = get_runtime()
    assert isinstance(rt.image, FalImageEditor)
    assert isinstance(rt.speech["fal"], FalSpeech)
    assert isinstance(rt.lipsync, WaveSpeedLipSync)
    ensure_sample_actors(rt)
    voice = Voice(provider="fal", model="fal-ai/minimax/speech-2.8-hd", voice_id="Wise_Woman")
    import_actors(
        rt, [ActorSpec(key="zoe", name="Zoe", portrait="drawn:leo", voice=voice)], base_dir=Path.cwd()
    )
    calls_before = {name: dict(fake.calls) for name, fake in running_fakes().items()}
    result = generate_video(VideoRequest(actor="zoe", script="Fakes all the way down.", scene="a garden"))
    assert result.status == "succeeded", result.error
    assert result.video_key is not None
    assert result.audio_seconds is not None
    info = media.probe(rt.storage.local_path(result.video_key))
    assert abs(info.duration - result.audio_seconds) < 0.1
    fakes = running_fakes()
    assert fakes["fal"].calls["submit"] - calls_before["fal"]["submit"] == 2  # edit + speech
    assert fakes["wavespeed"].calls["submit"] - calls_before["wavespeed"]["submit"] == 1
    with rt.session() as s:
        providers = {r.stage: r.provider for r in s.scalars(sa.select(StageRun))}
    # the word timing is free and local (the fal speech brought its own timestamps, read from the stage)
    assert providers == {"scene_variant": "fal", "speech": "fal", "lipsync": "wavespeed", "timing": "local"}
    assert result.cost_usd > 0


def test_video_on_fakes_with_supabase_storage(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch, prefect_server: None
) -> None:
    """Storage on the Supabase fake: outputs land in its buckets, signed URLs serve them, QC reads a
    cached copy."""
    import httpx

    from flows.generate_video import generate_video

    monkeypatch.setenv("CASTFLOW_PROVIDERS__FAKES", "true")
    monkeypatch.setenv("CASTFLOW_PROVIDERS__LIPSYNC", "wavespeed")
    monkeypatch.setenv("CASTFLOW_PROVIDERS__IMAGE", "fal")
    monkeypatch.setenv("CASTFLOW_STORAGE__BACKEND", "supabase")
    reset_settings()
    rt = get_runtime()
    ensure_sample_actors(rt)
    uploads_before = (running_fakes()["fal"].calls["upload"], running_fakes()["wavespeed"].calls["upload"])
    result = generate_video(
        VideoRequest(actor="ava", script="Stored in Supabase.", scene="a studio", resolution="720p")
    )
    assert result.status == "succeeded", result.error
    assert result.video_url is not None
    assert result.video_key is not None
    supa = running_fakes()["supabase"]
    assert ("ugc-video", result.video_key) in supa.objects
    # inputs reached the providers as signed storage URLs, not as uploads to their CDNs
    assert (
        running_fakes()["fal"].calls["upload"],
        running_fakes()["wavespeed"].calls["upload"],
    ) == uploads_before
    assert supa.calls["download_signed"] >= 3, supa.calls
    resp = httpx.get(result.video_url, timeout=30)
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("video/mp4")
    video = data_dir / "downloaded.mp4"
    video.write_bytes(resp.content)
    info = media.probe(video)
    assert (info.width, info.height) == (704, 1280)


def test_faults_everywhere_give_the_same_correct_video_as_the_embedded_defaults(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch, prefect_server: None
) -> None:
    """429s, 5xx, slow queues and one failed job on every paid role: the video comes out as correct as
    on the embedded defaults (QC-checked durations and frame rate, every stage succeeded, costs recorded),
    and each failure costs exactly one extra submit."""
    from castflow.providers.wavespeed.fake import Outcome
    from flows.generate_video import generate_video

    reset_settings()
    embedded_rt = get_runtime()
    ensure_sample_actors(embedded_rt)
    script = "Faults are part of the job."
    embedded = generate_video(VideoRequest(actor="leo", script=script, scene="a quiet library"))
    assert embedded.status == "succeeded"

    monkeypatch.setenv("CASTFLOW_DATA_DIR", str(data_dir.parent / "faulty"))
    monkeypatch.setenv("CASTFLOW_PROVIDERS__FAKES", "true")
    monkeypatch.setenv("CASTFLOW_PROVIDERS__IMAGE", "fal")
    monkeypatch.setenv("CASTFLOW_PROVIDERS__LIPSYNC", "wavespeed")
    monkeypatch.setenv("CASTFLOW_PIPELINE__RETRY_BACKOFF_S", "0.2")
    reset_settings()
    rt = get_runtime()
    for role in (rt.image, rt.speech["fal"], rt.lipsync):
        role.client.policy = RetryPolicy(attempts=5, base_delay=0.01, max_delay=0.05, total_seconds=10)  # type: ignore[union-attr]
    ensure_sample_actors(rt)
    voice = Voice(provider="fal", model="fal-ai/elevenlabs/tts/multilingual-v2", voice_id="Roger")
    import_actors(
        rt, [ActorSpec(key="ben", name="Ben", portrait="drawn:leo", voice=voice)], base_dir=Path.cwd()
    )
    fal, ws = running_fakes()["fal"], running_fakes()["wavespeed"]
    before = (fal.calls["submit"], ws.calls["submit"])
    fal.knobs.submit_errors = [429, 503]  # ingress answers: nothing was queued, retried at once
    fal.knobs.status_errors = [500, 502]
    fal.knobs.queue_seconds = 0.5
    fal.knobs.fail_jobs = [("Runner disconnected", "runner_disconnected")]  # transient: the task resubmits
    ws.knobs.submit_errors = [429]
    ws.knobs.result_errors = [503, 500]
    ws.knobs.queue_seconds = 0.5
    ws.knobs.fail_jobs = [Outcome("failed", 5003, "Service unavailable")]
    try:
        faulty = generate_video(VideoRequest(actor="ben", script=script, scene="a quiet library"))
    finally:
        fal.knobs = type(fal.knobs)()
        ws.knobs = type(ws.knobs)()
    assert faulty.status == "succeeded", faulty.error
    for result, runtime in ((embedded, embedded_rt), (faulty, rt)):
        assert result.video_key is not None
        assert result.audio_seconds is not None
        info = media.probe(runtime.storage.local_path(result.video_key))
        assert info.fps == 25
        assert abs(info.duration - result.audio_seconds) < 0.1
        with runtime.session() as s:
            runs = list(s.scalars(sa.select(StageRun)))
        assert sorted(r.stage for r in runs) == ["lipsync", "scene_variant", "speech", "timing"]
        assert all(r.status.value == "succeeded" for r in runs)
    # submits seen: the stages (fal 2, WaveSpeed 1) + answers refused with 429/503 (fal 2, WaveSpeed 1)
    # + one resubmit after each failed job. Nothing else was submitted twice.
    assert fal.calls["submit"] - before[0] == 2 + 2 + 1
    assert ws.calls["submit"] - before[1] == 1 + 1 + 1
    assert faulty.cost_usd > 0
    assert embedded.cost_usd == 0
