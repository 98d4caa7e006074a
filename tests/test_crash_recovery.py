"""Never pay twice, end to end: a flow process is SIGKILLed while it waits on WaveSpeed; the rerun
re-attaches to the recorded request, and each paid stage was submitted exactly once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from castflow.actors import ActorSpec, ensure_sample_actors, import_actors
from castflow.db.tables import StageRun, StageStatus
from castflow.models import VideoRequest, Voice
from castflow.providers.fal import fake as fal_fake
from castflow.providers.wavespeed import fake as ws_fake
from castflow.runtime import Runtime, get_runtime
from castflow.settings import reset_settings


@pytest.fixture
def paid_rt(
    provider_fakes: tuple[fal_fake.FakeFal, ws_fake.FakeWaveSpeed],
    data_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Runtime:
    fal, ws = provider_fakes
    env = {
        "CASTFLOW_PROVIDERS__IMAGE": "fal",
        "CASTFLOW_PROVIDERS__LIPSYNC": "wavespeed",
        "CASTFLOW_FAL__KEY": fal_fake.VALID_KEY,
        "CASTFLOW_WAVESPEED__KEY": ws_fake.VALID_KEY,
        "CASTFLOW_FAL__QUEUE_URL": fal.url,
        "CASTFLOW_FAL__REST_URL": fal.url,
        "CASTFLOW_FAL__CDN_URL": fal.url,
        "CASTFLOW_WAVESPEED__BASE_URL": ws.url,
        "CASTFLOW_WAVESPEED__POLL_FIRST_S": "0.1",
        "CASTFLOW_WAVESPEED__EXPECTED_SECONDS_PER_AUDIO_SECOND": "0",
        "CASTFLOW_WAVESPEED__POLL_CAP_S": "0.3",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    reset_settings()
    rt = get_runtime()
    ensure_sample_actors(rt)
    voice = Voice(provider="fal", model="fal-ai/elevenlabs/tts/multilingual-v2", voice_id="Roger")
    import_actors(
        rt, [ActorSpec(key="sam", name="Sam", portrait="drawn:leo", voice=voice)], base_dir=Path.cwd()
    )
    return rt


def test_sigkill_during_lipsync_then_rerun_pays_each_stage_once(
    paid_rt: Runtime,
    provider_fakes: tuple[fal_fake.FakeFal, ws_fake.FakeWaveSpeed],
    data_dir: Path,
    prefect_server: None,
) -> None:
    from prefect.settings import PREFECT_API_URL

    from flows.generate_video import generate_video

    fal, ws = provider_fakes
    ws.knobs.queue_seconds = 120  # the render waits in WaveSpeed's queue until released below
    code = (
        "from castflow.models import VideoRequest\n"
        "from flows.generate_video import generate_video\n"
        "generate_video(VideoRequest(actor='sam', script='Killed mid render.', scene='a rooftop'))\n"
    )
    env = {**os.environ, "PREFECT_API_URL": str(PREFECT_API_URL.value())}
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, cwd=data_dir.parent)
    recorded = None
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and recorded is None:
            assert proc.poll() is None, "the flow process ended before it was killed"
            with paid_rt.session() as s:
                run = s.scalars(sa.select(StageRun).where(StageRun.stage == "lipsync")).one_or_none()
                recorded = run.request_id if run else None
            time.sleep(0.2)
        assert recorded, "the lip-sync request id was not recorded while waiting"
        time.sleep(0.5)  # let it poll
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert (fal.calls["submit"], ws.calls["submit"]) == (2, 1)

    ws.knobs.queue_seconds = 0  # the provider finishes the job it was given
    result = generate_video(VideoRequest(actor="sam", script="Killed mid render.", scene="a rooftop"))
    assert result.status == "succeeded", result.error
    assert (fal.calls["submit"], ws.calls["submit"]) == (2, 1)  # one submit per stage, crash included
    with paid_rt.session() as s:
        lip = s.scalars(sa.select(StageRun).where(StageRun.stage == "lipsync")).one()
        assert (lip.request_id, lip.status, lip.attempts) == (recorded, StageStatus.succeeded, 2)
