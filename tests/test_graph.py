"""The stage graph, declared once: its plans, its checks, and the same units, budget and failure bookkeeping
on both paths (in-process rows and the generate-video flow's Prefect tasks)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from castflow import media, pipeline
from castflow.actors import ensure_sample_actors
from castflow.budget import Budget, Spend
from castflow.db.tables import StageRun, Video, VideoStage, VideoStatus
from castflow.models import StageOutcome, VideoRequest, Voice
from castflow.pipeline import GRAPH, Unit, plan, steps
from castflow.pipeline.graph import check_graph
from castflow.providers.base import Billing, ProviderResult
from castflow.runtime import Runtime


def _names(units: list[Unit]) -> list[str]:
    return [u.name for u in units]


def test_each_kind_of_video_gets_its_plan(rt: Runtime, tmp_path: Path) -> None:
    ensure_sample_actors(rt)
    scene = pipeline.prepare_video(rt, VideoRequest(actor="maya", script="Hi there.", scene="a beach"))
    assert _names(plan(scene)) == ["scene_variant", "speech", "lipsync", "qc", "timing", "publish", "words"]
    captioned = pipeline.prepare_video(rt, VideoRequest(actor="maya", script="Hi there.", captions=True))
    assert _names(plan(captioned)) == [
        "portrait",
        "speech",
        "lipsync",
        "qc",
        "timing",
        "captions",
        "publish",
        "words",
    ]
    voice = Voice(provider="local", model="espeak-ng", voice_id="en-us")
    made = rt.speech["local"].synthesize("An uploaded voice.", voice, workdir=tmp_path)  # type: ignore[union-attr]
    uploaded = pipeline.prepare_video(rt, VideoRequest(actor="leo", audio=str(made.path), captions=True))
    # captions need the words: an audio row without its script gets none
    assert _names(plan(uploaded)) == ["portrait", "audio_ingest", "lipsync", "qc", "publish"]
    told = pipeline.prepare_video(
        rt, VideoRequest(actor="leo", audio=str(made.path), script="An uploaded voice.", captions="karaoke")
    )
    assert told.script is None  # played, not spoken
    assert told.transcript == "An uploaded voice."
    assert _names(plan(told)) == [
        "portrait",
        "audio_ingest",
        "lipsync",
        "qc",
        "timing",
        "captions",
        "publish",
        "words",
    ]
    assert told.request_key != uploaded.request_key


def test_a_graph_whose_unit_reads_a_role_nobody_makes_is_refused() -> None:
    check_graph(GRAPH)
    broken = Unit(name="music", makes="video", needs=("soundtrack",), run=lambda rt, v, d: d["video"])
    with pytest.raises(ValueError, match="needs \\['soundtrack'\\]"):
        check_graph((*GRAPH, broken))
    with pytest.raises(ValueError, match="two units are named lipsync"):
        check_graph((*GRAPH, steps.LIPSYNC))
    with pytest.raises(ValueError, match="makes no \\['published'\\]"):
        check_graph(tuple(u for u in GRAPH if u.name != "publish"))


def _stamp_unit(calls: list[str]) -> Unit:
    """A new free stage, as a team would add one: it refines the checked video (a copy, re-stored)."""

    def run(rt: Runtime, video: pipeline.PreparedVideo, done: pipeline.Done) -> StageOutcome:
        calls.append(video.request_key)
        source = done["video"]

        def call(workdir: Path) -> ProviderResult:
            out = workdir / "stamped.mp4"
            out.write_bytes(rt.storage.local_path(source.output.key).read_bytes())
            return ProviderResult(out, "video/mp4", Billing(0, "videos"), seconds=source.output.seconds)

        return pipeline.run_stage(
            rt, stage="stamp", key="stamp-" + source.output.sha256, provider="local", model="-", call=call
        )

    return Unit(
        name="stamp",
        makes="video",
        needs=("video", "checked"),
        run=run,
        key=lambda _rt, _v, d: "stamp-" + d["video"].output.sha256,
        task="stamp",
    )


def _with(unit: Unit) -> tuple[Unit, ...]:
    """GRAPH with ``unit`` before publish: the one line a new stage adds."""
    at = [u.name for u in GRAPH].index("publish")
    return (*GRAPH[:at], unit, *GRAPH[at:])


def _links(rt: Runtime, request_key: str) -> list[str]:
    with rt.session() as s:
        video = s.scalars(sa.select(Video).where(Video.request_key == request_key)).one()
        return sorted(s.scalars(sa.select(VideoStage.stage).where(VideoStage.video_id == video.id)))


def test_a_new_unit_runs_in_process_and_on_prefect_tasks(rt: Runtime, prefect_server: None) -> None:
    from tasks.video import run_on_tasks

    ensure_sample_actors(rt)
    calls: list[str] = []
    graph = _with(_stamp_unit(calls))
    check_graph(graph)
    first = pipeline.prepare_video(rt, VideoRequest(actor="leo", script="Stamped in process."))
    pipeline.record_start(rt, first)
    result = pipeline.run_video(rt, first, graph=graph)
    assert result.status == "succeeded"
    assert calls == [first.request_key]
    assert _links(rt, first.request_key) == ["lipsync", "speech", "stamp", "timing"]

    from prefect import flow

    second = pipeline.prepare_video(rt, VideoRequest(actor="ava", script="Stamped on tasks."))

    @flow
    def on_tasks() -> Any:
        pipeline.record_start(rt, second)
        return run_on_tasks(rt, second, graph=graph)

    assert on_tasks().status == "succeeded"
    assert calls == [first.request_key, second.request_key]
    assert _links(rt, second.request_key) == ["lipsync", "speech", "stamp", "timing"]
    with rt.session() as s:
        stamps = s.scalars(sa.select(StageRun).where(StageRun.stage == "stamp")).all()
        assert len(stamps) == 2
        published = s.scalars(sa.select(Video).where(Video.request_key == second.request_key)).one()
    assert published.video_key is not None
    assert media.probe(rt.storage.local_path(published.video_key)).has_video


@dataclasses.dataclass
class PricedLipSync:
    """The embedded renderer with a price, to give a budget something to stop."""

    inner: Any
    usd_per_second: float
    renders: int = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def price(self, audio_seconds: float, resolution: str) -> float:
        return round(audio_seconds * self.usd_per_second, 6)

    def render(self, *args: Any, **kwargs: Any) -> ProviderResult:
        self.renders += 1
        result: ProviderResult = self.inner.render(*args, **kwargs)
        return result


def test_the_budget_stops_the_same_stage_on_both_paths(rt: Runtime, prefect_server: None) -> None:
    from flows.generate_video import generate_video

    ensure_sample_actors(rt)
    priced = PricedLipSync(rt.lipsync, usd_per_second=1.0)
    rt.lipsync = priced
    request = VideoRequest(actor="maya", script="This would cost a few dollars to render.")

    # In process: a budget of $1 cannot pay a lip-sync of several seconds.
    video = pipeline.prepare_video(rt, request)
    pipeline.record_start(rt, video)
    spend = Spend(Budget(1.0))
    with pytest.raises(pipeline.Skipped, match="budget: lipsync would cost"):
        pipeline.run_video(rt, video, watch=spend)
    assert priced.renders == 0

    # The generate-video flow: the same unit is stopped, and the video fails with why.
    state = generate_video(request, budget_usd=1.0, return_state=True)
    assert state.is_failed()
    assert priced.renders == 0
    with rt.session() as s:
        row = s.scalars(sa.select(Video).where(Video.request_key == video.request_key)).one()
        assert row.status is VideoStatus.failed
        assert row.failed_stage == "budget"
        assert row.error is not None
        assert "lipsync would cost" in row.error

    # A budget that fits lets it through, and counts what it cost.
    ok = generate_video(request, budget_usd=100.0)
    assert ok.status == "succeeded"
    assert priced.renders == 1
    assert ok.cost_usd == 0.0  # the embedded renderer records no cost; the price only gates the start


def test_a_failure_is_recorded_alike_on_both_paths(rt: Runtime, prefect_server: None) -> None:
    from flows.generate_video import generate_video

    ensure_sample_actors(rt)

    class Broken:
        name, model = "local", "espeak-ng"

        def price(self, voice: Voice, characters: int) -> float:
            return 0.0

        def synthesize(self, text: str, voice: Voice, *, workdir: Path) -> ProviderResult:
            raise pipeline.StageFailed("speech", "the voice is hoarse")

    rt.speech = {"local": Broken()}
    video = pipeline.prepare_video(rt, VideoRequest(actor="leo", script="Row path."))
    pipeline.record_start(rt, video)
    with pytest.raises(pipeline.StageFailed):
        pipeline.run_video(rt, video)
    assert generate_video(VideoRequest(actor="leo", script="Flow path."), return_state=True).is_failed()
    with rt.session() as s:
        rows = s.scalars(sa.select(Video)).all()
    assert sorted((r.status, r.failed_stage, r.error) for r in rows) == [
        (VideoStatus.failed, "speech", "the voice is hoarse"),
        (VideoStatus.failed, "speech", "the voice is hoarse"),
    ]
