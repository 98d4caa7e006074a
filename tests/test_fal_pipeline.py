"""castflow's stages on fal (through the loopback fake): costs, reuse, and never paying twice."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from castflow import pipeline
from castflow.actors import ActorSpec, ensure_sample_actors, import_actors
from castflow.db.tables import StageRun, StageStatus
from castflow.models import VideoRequest, Voice
from castflow.providers.fal.fake import VALID_KEY, FakeFal
from castflow.providers.fal.roles import FalImageEditor
from castflow.providers.http import PollSchedule, RetryPolicy
from castflow.runtime import Runtime, get_runtime
from castflow.settings import reset_settings


@pytest.fixture
def fake() -> Iterator[FakeFal]:
    with FakeFal().running() as server:
        yield server


@pytest.fixture
def fal_rt(fake: FakeFal, data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Runtime:
    monkeypatch.setenv("CASTFLOW_PROVIDERS__IMAGE", "fal")
    monkeypatch.setenv("CASTFLOW_FAL__KEY", VALID_KEY)
    for host in ("QUEUE_URL", "REST_URL", "CDN_URL"):
        monkeypatch.setenv(f"CASTFLOW_FAL__{host}", fake.url)
    reset_settings()
    rt = get_runtime()
    for provider in (rt.image, rt.speech["fal"]):
        client = provider.client  # type: ignore[union-attr]
        client.poll = PollSchedule(first=0.05, factor=2, cap=0.2)
        client.policy = RetryPolicy(attempts=4, base_delay=0.01, max_delay=0.05, total_seconds=10)
    ensure_sample_actors(rt)
    import_actors(
        rt,
        [
            ActorSpec(
                key="nia",
                name="Nia",
                portrait="drawn:ava",
                voice=Voice(provider="fal", model="fal-ai/elevenlabs/tts/multilingual-v2", voice_id="Aria"),
            )
        ],
        base_dir=Path.cwd(),
    )
    return rt


def test_fal_stages_record_cost_and_are_reused(fal_rt: Runtime, fake: FakeFal) -> None:
    assert isinstance(fal_rt.image, FalImageEditor)
    actor = pipeline.actor_ref(fal_rt, "nia")
    variant = pipeline.scene_variant(fal_rt, actor, "on a beach", 3)
    speech = pipeline.speech(fal_rt, actor, "Hello from fal.")
    assert variant.cost_usd == pytest.approx(0.039)
    assert speech.cost_usd == pytest.approx(0.10 * len("Hello from fal.") / 1000)
    assert fake.calls["submit"] == 2
    with fal_rt.session() as s:
        runs = {r.stage: r for r in s.scalars(sa.select(StageRun))}
    assert runs["scene_variant"].request_id
    assert runs["scene_variant"].provider == "fal"
    assert runs["scene_variant"].model == "fal-ai/nano-banana/edit"
    assert runs["speech"].unit == "characters"
    assert runs["speech"].billed_units == len("Hello from fal.")
    again_v = pipeline.scene_variant(fal_rt, actor, "on a  beach", 3)
    again_s = pipeline.speech(fal_rt, actor, "Hello from fal.")
    assert again_v.reused
    assert again_s.reused
    assert fake.calls["submit"] == 2


def test_a_crash_while_waiting_reattaches_instead_of_paying_again(fal_rt: Runtime, fake: FakeFal) -> None:
    editor = fal_rt.image
    assert isinstance(editor, FalImageEditor)
    actor = pipeline.actor_ref(fal_rt, "nia")
    fake.knobs.queue_seconds = 0.3

    class Crash(BaseException):
        pass

    real_collect = editor.collect

    def crash(request_id: str, *, workdir: Path) -> object:
        raise Crash  # the process dies after the submit was recorded

    editor.collect = crash  # type: ignore[method-assign]
    with pytest.raises(Crash):
        pipeline.scene_variant(fal_rt, actor, "kitchen", 0)
    with fal_rt.session() as s:
        run = s.scalars(sa.select(StageRun)).one()
        assert run.status is StageStatus.running  # what a killed process leaves behind
        recorded = run.request_id
    assert recorded
    editor.collect = real_collect  # type: ignore[method-assign]
    outcome = pipeline.scene_variant(fal_rt, actor, "kitchen", 0)
    assert fake.calls["submit"] == 1
    with fal_rt.session() as s:
        run = s.scalars(sa.select(StageRun)).one()
        assert run.request_id == recorded
        assert run.status is StageStatus.succeeded
        assert run.attempts == 2
    assert fal_rt.storage.exists(outcome.output.key)


def test_transient_job_failure_keeps_the_request_for_the_retry(fal_rt: Runtime, fake: FakeFal) -> None:
    from castflow.providers.base import TransientError

    actor = pipeline.actor_ref(fal_rt, "nia")
    fake.knobs.queue_seconds = 30  # never finishes within the deadline below
    fal_rt.speech["fal"].deadline_s = 0.2  # type: ignore[union-attr]
    with pytest.raises(TransientError):
        pipeline.speech(fal_rt, actor, "Slow queue.")
    with fal_rt.session() as s:
        run = s.scalars(sa.select(StageRun)).one()
        assert run.status is StageStatus.running
        assert run.request_id
        assert run.error is not None
    fake.knobs.queue_seconds = 0
    for job in fake.jobs.values():
        job.knobs_queue = 0
    fal_rt.speech["fal"].deadline_s = 10  # type: ignore[union-attr]
    assert not pipeline.speech(fal_rt, actor, "Slow queue.").reused
    assert fake.calls["submit"] == 1


def test_video_with_fal_stages_end_to_end(fal_rt: Runtime, fake: FakeFal, prefect_server: None) -> None:
    from flows.generate_video import generate_video

    result = generate_video(
        VideoRequest(actor="nia", script="Made with fal and castflow.", scene="city at night")
    )
    assert result.status == "succeeded"
    assert result.cost_usd == pytest.approx(0.039 + 0.10 * len("Made with fal and castflow.") / 1000)
    assert fake.calls["submit"] == 2
    again = generate_video(
        VideoRequest(actor="nia", script="Made with fal and castflow.", scene="city at night")
    )
    assert again.cost_usd == 0
    assert fake.calls["submit"] == 2


def test_the_key_never_reaches_the_database(fal_rt: Runtime, fake: FakeFal) -> None:
    actor = pipeline.actor_ref(fal_rt, "nia")
    fake.knobs.fail_jobs = [("Unsafe content detected", "content_policy_violation")]
    with pytest.raises(Exception, match="Unsafe content"):
        pipeline.scene_variant(fal_rt, actor, "somewhere", 1)
    pipeline.speech(fal_rt, actor, "Fine words.")
    secret = VALID_KEY.split(":")[1]
    with fal_rt.engine.connect() as conn:
        for table in ("stage_run", "actor", "image_variant", "video"):
            for row in conn.execute(sa.text(f"SELECT * FROM {table}")):  # noqa: S608 - fixed table names
                assert secret not in repr(tuple(row))


def test_sigkill_while_waiting_then_rerun_submits_once(
    fal_rt: Runtime, fake: FakeFal, data_dir: Path
) -> None:
    """A real crash: the process is SIGKILLed while it polls fal; the rerun re-attaches (one submit)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    fake.knobs.queue_seconds = 60
    code = (
        "from castflow import pipeline\n"
        "from castflow.runtime import get_runtime\n"
        "rt = get_runtime()\n"
        "pipeline.scene_variant(rt, pipeline.actor_ref(rt, 'nia'), 'rooftop', 5)\n"
    )
    env = {**os.environ}
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, cwd=data_dir.parent)
    try:
        deadline = time.monotonic() + 60
        recorded = None
        while time.monotonic() < deadline and recorded is None:
            assert proc.poll() is None, "the worker ended before it was killed"
            with fal_rt.session() as s:
                run = s.scalars(sa.select(StageRun)).one_or_none()
                recorded = run.request_id if run else None
            time.sleep(0.1)
        assert recorded, "the request id was not recorded while waiting"
        time.sleep(0.3)  # let it poll a little
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert fake.calls["submit"] == 1
    fake.jobs[recorded].knobs_queue = 0
    outcome = pipeline.scene_variant(fal_rt, pipeline.actor_ref(fal_rt, "nia"), "rooftop", 5)
    assert fake.calls["submit"] == 1
    assert fal_rt.storage.exists(outcome.output.key)
    with fal_rt.session() as s:
        run = s.scalars(sa.select(StageRun)).one()
        assert (run.request_id, run.status, run.attempts) == (recorded, StageStatus.succeeded, 2)
