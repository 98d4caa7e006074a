"""A video's stage graph, declared once, and the runner that executes it in this thread.

The same graph runs two ways: :func:`run_video` here (a campaign row, a chunk worker), and
``tasks/video.py``'s adapter, which maps every unit onto a Prefect task (the generate-video flow: task
runs in the UI, Prefect's cache). Both use the same units, the same :class:`Watch` (budget) and the same
failure bookkeeping (``records.record_error``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Protocol

from castflow import interrupt
from castflow.db.retry import DatabaseUnavailable
from castflow.models import StageOutcome, VideoResult
from castflow.pipeline import records, steps
from castflow.pipeline.errors import Skipped
from castflow.pipeline.prepare import PreparedVideo
from castflow.pipeline.unit import Done, Unit
from castflow.runtime import Runtime

# Order matters only where a unit refines a role an earlier one made (captions after lip-sync and QC).
GRAPH: tuple[Unit, ...] = (
    steps.SCENE_VARIANT,
    steps.PORTRAIT,
    steps.PRODUCT_CHECK,
    steps.SPEECH,
    steps.SPEECH_PART1,
    steps.SPEECH_PART2,
    steps.JOIN,
    steps.AUDIO_INGEST,
    steps.LIPSYNC,
    steps.QUALITY_CHECK,
    steps.TIMING,
    steps.CAPTIONS,
    steps.PUBLISH,
    steps.FINISH,
    steps.WORDS,
)

RECORDED_ROLES = ("image", "audio", "video", "published")  # what records.record_success reads


def check_graph(graph: tuple[Unit, ...]) -> None:
    """Every role a unit needs is made by a unit before it; unit and task names are unique."""
    made: set[str] = set()
    names: set[str] = set()
    for unit in graph:
        missing = [role for role in unit.needs if role not in made]
        if missing:
            raise ValueError(f"unit {unit.name} needs {missing}, which no earlier unit makes")
        if unit.name in names:
            raise ValueError(f"two units are named {unit.name}")
        names.add(unit.name)
        made.add(unit.makes)
    if missing := [role for role in RECORDED_ROLES if role not in made]:
        raise ValueError(f"the graph makes no {missing}")


check_graph(GRAPH)


def plan(video: PreparedVideo, graph: tuple[Unit, ...] = GRAPH) -> list[Unit]:
    """The units this video needs, in graph order."""
    return [unit for unit in graph if unit.applies(video)]


class Watch(Protocol):
    """What a caller hears of a video's run: ``before`` each unit (it may raise :class:`Skipped`, as
    the budget does) and ``after`` each ledger stage (what it cost)."""

    def before(self, unit: Unit, rt: Runtime, video: PreparedVideo, done: Done) -> None: ...

    def after(self, outcome: StageOutcome) -> None: ...


def run_video(
    rt: Runtime, video: PreparedVideo, *, watch: Watch | None = None, graph: tuple[Unit, ...] = GRAPH
) -> VideoResult:
    """Every unit of the video's plan in this thread, then its record; published at ``video.output_key``.

    Failures go through :func:`bookkeeping`.
    """
    done: dict[str, StageOutcome] = {}
    used: list[StageOutcome] = []
    current = ["prepare"]
    with bookkeeping(rt, video, used, current):
        for unit in plan(video, graph):
            current[0] = unit.name
            interrupt.check(f"before {unit.name.replace('_', ' ')}")  # Ctrl-C: no new stage starts
            if watch is not None:
                watch.before(unit, rt, video, done)
            take(unit, unit.run(rt, video, done), done, used, watch)
        current[0] = "record"
        return records.record_success(rt, video, done, used)


def take(
    unit: Unit,
    outcome: StageOutcome,
    done: dict[str, StageOutcome],
    used: list[StageOutcome],
    watch: Watch | None,
) -> None:
    """A unit's outcome, taken by a runner: it fills the unit's role; a ledger stage is also one the
    video used, and the watch hears what it cost."""
    done[unit.makes] = outcome
    if unit.ledger:
        used.append(outcome)
        if watch is not None:
            watch.after(outcome)


@contextlib.contextmanager
def bookkeeping(
    rt: Runtime, video: PreparedVideo, used: list[StageOutcome], current: list[str]
) -> Iterator[None]:
    """The failure bookkeeping of every runner: a failure is recorded on the video (the unit named in
    ``current[0]`` when it raised, or the stage a StageFailed names) and re-raised; a :class:`Skipped`
    carries the stages used so far for the caller to record; with the database gone nothing can be
    recorded, and the stage rows already say what was paid (a rerun resumes)."""
    try:
        yield
    except (Skipped, interrupt.Interrupted) as exc:  # not a failure: a rerun resumes the video
        exc.used = used
        raise
    except DatabaseUnavailable:
        raise
    except Exception as exc:
        records.record_error(rt, video, exc, stage=current[0], used=used)
        raise
