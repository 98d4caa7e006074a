"""The flows end to end under a real (temporary) Prefect server: DAG, cache reuse, retries, failures."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from prefect.settings import PREFECT_TASKS_REFRESH_CACHE, temporary_settings

from castflow import media
from castflow.actors import ensure_sample_actors
from castflow.db import queries
from castflow.db.tables import StageRun, StageStatus, Video, VideoStatus
from castflow.models import VideoRequest, Voice
from castflow.providers.base import PermanentError, ProviderResult, TransientError
from castflow.runtime import Runtime
from flows.create_image_variant import create_image_variant
from flows.generate_video import generate_video

pytestmark = [pytest.mark.flow, pytest.mark.usefixtures("prefect_server")]


@dataclass
class Counting:
    """Wraps a provider, counts its calls and can fail the first ones."""

    inner: Any
    method: str
    fail_first: list[Exception]
    calls: int = 0

    def __getattr__(self, name: str) -> Any:
        if name == self.method:
            return self._call
        return getattr(self.inner, name)

    def _call(self, *args: Any, **kwargs: Any) -> ProviderResult:
        self.calls += 1
        if self.fail_first:
            raise self.fail_first.pop(0)
        result: ProviderResult = getattr(self.inner, self.method)(*args, **kwargs)
        return result


@pytest.fixture
def counted(rt: Runtime) -> dict[str, Counting]:
    ensure_sample_actors(rt)
    wrappers = {
        "image": Counting(rt.image, "edit", []),
        "speech": Counting(rt.speech["local"], "synthesize", []),
        "lipsync": Counting(rt.lipsync, "render", []),
    }
    rt.image = wrappers["image"]
    rt.speech = {"local": wrappers["speech"]}
    rt.lipsync = wrappers["lipsync"]
    rt.settings.pipeline.retry_backoff_s = 0
    return wrappers


def _calls(c: dict[str, Counting]) -> dict[str, int]:
    return {k: v.calls for k, v in c.items()}


def _stage_rows(rt: Runtime) -> list[StageRun]:
    with rt.session() as s:
        return list(s.scalars(sa.select(StageRun).order_by(StageRun.stage)))


def test_script_video_end_to_end_then_fully_reused(rt: Runtime, counted: dict[str, Counting]) -> None:
    request = VideoRequest(
        actor="maya", script="Hello from the beach! This is castflow.", scene="sunny beach"
    )
    result = generate_video(request)
    assert result.status == "succeeded"
    assert _calls(counted) == {"image": 1, "speech": 1, "lipsync": 1}
    assert result.video_key is not None
    path = rt.storage.local_path(result.video_key)
    info = media.probe(path)
    assert info.has_video
    assert info.has_audio
    assert (info.width, info.height) == (480, 854)
    assert result.audio_seconds is not None
    assert abs(info.duration - result.audio_seconds) < 0.1
    assert result.video_url == path.as_uri()

    rows = _stage_rows(rt)
    assert [(r.stage, r.status, r.attempts) for r in rows] == [
        ("lipsync", StageStatus.succeeded, 1),
        ("scene_variant", StageStatus.succeeded, 1),
        ("speech", StageStatus.succeeded, 1),
        ("timing", StageStatus.succeeded, 1),
    ]
    assert all(r.output_key and rt.storage.exists(r.output_key) for r in rows)
    with rt.session() as s:
        video = s.scalars(sa.select(Video)).one()
        assert video.status is VideoStatus.succeeded
        assert video.video_key == result.video_key
        assert video.finished_at is not None
        assert len(queries.list_image_variants(s, actor_key="maya")) == 1

    again = generate_video(request)
    assert again.status == "succeeded"
    assert again.video_key == result.video_key
    assert again.reused_stages == 4  # the word timing too
    assert _calls(counted) == {"image": 1, "speech": 1, "lipsync": 1}  # nothing paid twice
    with rt.session() as s:
        assert s.scalar(sa.select(sa.func.count()).select_from(Video)) == 1


def test_database_alone_prevents_repeat_calls(rt: Runtime, counted: dict[str, Counting]) -> None:
    """With Prefect's cache bypassed, the stage_run rows still stop every repeat provider call."""
    request = VideoRequest(actor="leo", script="Coffee in thirty seconds.", scene="kitchen")
    assert generate_video(request).status == "succeeded"
    with temporary_settings({PREFECT_TASKS_REFRESH_CACHE: True}):
        again = generate_video(request)
    assert again.status == "succeeded"
    assert again.reused_stages == 4  # the word timing too
    assert _calls(counted) == {"image": 1, "speech": 1, "lipsync": 1}


def test_audio_video_without_scene_uses_the_portrait(
    rt: Runtime, counted: dict[str, Counting], tmp_path: Path
) -> None:
    audio = tmp_path / "voice.wav"
    voice = Voice(provider="local", model="espeak-ng", voice_id="en-us")
    made = counted["speech"].inner.synthesize("An uploaded voice-over.", voice, workdir=tmp_path)
    made.path.rename(audio)
    result = generate_video(VideoRequest(actor="ava", audio=str(audio)))
    assert result.status == "succeeded"
    assert _calls(counted) == {"image": 0, "speech": 0, "lipsync": 1}
    assert result.audio_seconds == pytest.approx(media.decode_audio(audio).seconds, abs=0.01)
    assert {r.stage for r in _stage_rows(rt)} == {"audio_ingest", "lipsync"}


def test_transient_errors_are_retried_permanent_ones_are_not(
    rt: Runtime, counted: dict[str, Counting]
) -> None:
    counted["image"].fail_first = [TransientError("HTTP 503", provider="test")]
    ok = generate_video(VideoRequest(actor="maya", script="Retry me.", scene="office"))
    assert ok.status == "succeeded"
    assert counted["image"].calls == 2
    with rt.session() as s:
        run = s.scalars(sa.select(StageRun).where(StageRun.stage == "scene_variant")).one()
        assert run.attempts == 2
        assert run.status is StageStatus.succeeded

    counted["speech"].fail_first = [PermanentError("content policy violation", provider="test")]
    request = VideoRequest(actor="maya", script="Something the provider refuses.", scene="office")
    state = generate_video(request, return_state=True)
    assert state.is_failed()
    assert counted["speech"].calls == 2  # one for the first video, one (not retried) here
    assert counted["image"].calls == 2  # the scene variant was reused from the first video
    with rt.session() as s:
        failed = s.scalars(sa.select(Video).where(Video.status == VideoStatus.failed)).one()
        assert failed.failed_stage == "speech"
        assert failed.error is not None
        assert "content policy" in failed.error


def test_quality_check_failure_fails_the_video_with_the_reason(
    rt: Runtime, counted: dict[str, Counting]
) -> None:
    real = counted["lipsync"].inner

    class ShortVideo:
        name, model = real.name, real.model

        def render(self, image: Path, audio: Path, **kw: Any) -> ProviderResult:
            clip = Path(kw["workdir"]) / "short.wav"
            sound = media.decode_audio(audio)
            pcm = (sound.samples[: sound.rate // 2] * 32767).astype("int16")
            media.write_wav(clip, pcm, sound.rate)
            return real.render(image, clip, **kw)

        def size_problem(self, width: int, height: int, resolution: str) -> str | None:
            return real.size_problem(width, height, resolution)

        def price(self, audio_seconds: float, resolution: str) -> float:
            return real.price(audio_seconds, resolution)

    counted["lipsync"].inner = ShortVideo()
    state = generate_video(
        VideoRequest(actor="leo", script="This one comes out too short."), return_state=True
    )
    assert state.is_failed()
    with rt.session() as s:
        video = s.scalars(sa.select(Video)).one()
        assert video.status is VideoStatus.failed
        assert video.failed_stage == "qc"
        assert video.error is not None
        assert "lasts" in video.error
        lip = s.scalars(sa.select(StageRun).where(StageRun.stage == "lipsync")).one()
        assert lip.status is StageStatus.failed  # a rerun renders again instead of reusing a bad video


def test_create_image_variant_then_reuse_it_in_a_video(rt: Runtime, counted: dict[str, Counting]) -> None:
    made = create_image_variant(actor="ava", prompt="rooftop at sunset", seed=4)
    assert not made.reused
    assert rt.storage.exists(made.image_key)
    again = create_image_variant(actor="ava", prompt="  rooftop   at sunset ", seed=4)
    assert again.variant_id == made.variant_id
    assert again.reused
    assert counted["image"].calls == 1
    result = generate_video(
        VideoRequest(actor="ava", script="Look at this view.", image_variant_id=made.variant_id)
    )
    assert result.status == "succeeded"
    assert counted["image"].calls == 1
    with rt.session() as s:
        video = s.scalars(sa.select(Video)).one()
        assert video.image_key == made.image_key


@pytest.mark.postgres
def test_video_end_to_end_on_postgres(pg_rt: Runtime) -> None:
    ensure_sample_actors(pg_rt)
    assert pg_rt.engine.dialect.name == "postgresql"
    request = VideoRequest(actor="leo", script="Postgres keeps the records.", scene="office")
    first = generate_video(request)
    again = generate_video(request)
    assert first.status == again.status == "succeeded"
    assert again.reused_stages == 4  # the word timing too
    with pg_rt.session() as s:
        video = s.scalars(sa.select(Video)).one()
        assert video.status is VideoStatus.succeeded
        assert video.finished_at is not None
        assert video.finished_at.tzinfo is not None
        runs = s.scalars(sa.select(StageRun)).all()
        assert sorted(r.stage for r in runs) == ["lipsync", "scene_variant", "speech", "timing"]
        assert all(r.attempts == 1 for r in runs)


def test_paths_in_parameters_are_confined_when_the_cli_is_not_trusted(
    rt: Runtime, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What a deployment's run does (here forced by CASTFLOW_CAMPAIGN__CLI_ANY_PATH=false): a sheet, an
    audio file or an inbox outside the parameter roots is refused before anything is read or recorded."""
    from castflow.pipeline import UserError
    from castflow.settings import reset_settings
    from flows.run_campaign import run_campaign
    from flows.sweep_inbox import sweep_inbox

    ensure_sample_actors(rt)
    monkeypatch.setenv("CASTFLOW_CAMPAIGN__CLI_ANY_PATH", "false")
    reset_settings()
    sheets = rt.settings.data_dir / "sheets"
    sheets.mkdir(parents=True)
    body = "row_id,actor,script\na,leo,Inside the roots.\n"
    (sheets / "in.csv").write_text(body, encoding="utf-8")
    (tmp_path / "out.csv").write_text(body, encoding="utf-8")
    (tmp_path / "out.wav").write_bytes(b"RIFF")

    estimated = run_campaign(sheet="in.csv", dry_run=True)  # relative: <data dir>/sheets
    assert estimated.rows == 1
    for call in (
        lambda: run_campaign(sheet=str(tmp_path / "out.csv")),
        lambda: run_campaign(sheet="../../out.csv"),
        lambda: generate_video(VideoRequest(actor="ava", audio=str(tmp_path / "out.wav"))),
        lambda: sweep_inbox(inbox=str(tmp_path)),
    ):
        with pytest.raises(UserError, match="outside the folders a deployment's parameters may name"):
            call()
    with rt.session() as s:
        assert s.scalars(sa.select(Video)).all() == []
    assert not (tmp_path / "processing").exists()  # the outside inbox was not touched
