"""What a video would cost if run now, from its stage graph, without calling any paid API.

Each unit of the video's plan is priced by its provider (``Unit.price``); a unit already done (its stage
key has a finished run), or one an earlier row of the same sheet will pay for, costs nothing. A unit not
yet run stands in for its output with a placeholder named by its stage key, so the units after it get a
stable key of their own (two rows sharing a scene and a script share one lip-sync estimate).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from pydantic import BaseModel

from castflow.db import queries
from castflow.models import MediaRef, StageOutcome
from castflow.pipeline import PreparedVideo, finished_output, plan
from castflow.runtime import Runtime

# The estimate's columns, by the role a unit fills (a unit that refines a role adds to its column).
ROLE_COLUMNS = {"image": "image_usd", "audio": "speech_usd", "video": "lipsync_usd"}


class RowEstimate(BaseModel):
    """What a row would cost if run now (stages already done cost nothing)."""

    row: int
    row_id: str
    actor: str
    image_usd: float = 0.0
    speech_usd: float = 0.0
    lipsync_usd: float = 0.0
    speech_seconds: float = 0.0
    reused_stages: int = 0
    by_stage: dict[str, float] = {}  # each priced unit's estimate (a budget compares its true price)

    @property
    def total_usd(self) -> float:
        return round(self.image_usd + self.speech_usd + self.lipsync_usd, 6)


def finished(rt: Runtime, key: str) -> MediaRef | None:
    """The output of a finished stage, or None."""
    return rt.db(lambda c: finished_output(queries.stage_run_state(c, stage_key=key)))


def estimate_video(
    rt: Runtime, video: PreparedVideo, *, row: int = 0, row_id: str = "", seen: set[str] | None = None
) -> RowEstimate:
    """Cost estimate of one video. With ``seen`` (shared by the rows of a sheet) a stage an earlier row
    will pay for costs nothing here."""
    seen = set() if seen is None else seen
    done: dict[str, StageOutcome] = {}
    columns = dict.fromkeys(ROLE_COLUMNS.values(), 0.0)
    by_stage: dict[str, float] = {}
    reused = 0
    for unit in plan(video):
        if any(role not in done for role in unit.needs):
            continue  # fed by a unit the estimate does not run (QC): free, nothing to price
        if unit.key is None:
            if not unit.needs and unit.price is None:
                done[unit.makes] = unit.run(rt, video, done)  # free and pure: the given portrait
            continue
        key = unit.key(rt, video, done)
        # A placeholder input (a unit not run yet) means this unit cannot have run either.
        runnable = all(done[role].output.content_type for role in unit.needs)
        found = finished(rt, key) if unit.ledger and runnable else None
        shared = key in seen
        cost = 0.0 if found is not None or shared else unit.cost_now(rt, video, done)
        if unit.ledger and (found is not None or shared):
            reused += 1
        seen.add(key)
        output = found or MediaRef(key="", sha256=key, content_type="", seconds=unit.guess_seconds(video))
        done[unit.makes] = StageOutcome(stage=unit.name, stage_key=key, output=output)
        if unit.price is not None:
            by_stage[unit.name] = cost
            column = ROLE_COLUMNS.get(unit.makes)
            if column is not None:
                columns[column] += cost
    audio = done.get("audio")
    seconds = audio.output.seconds if audio is not None and audio.output.seconds else 0.0
    return RowEstimate(
        row=row,
        row_id=row_id,
        actor=video.actor.key,
        speech_seconds=round(seconds, 2),
        reused_stages=reused,
        by_stage=by_stage,
        **columns,
    )


def budget_total(estimates: Iterable[RowEstimate]) -> float:
    return round(math.fsum(e.total_usd for e in estimates), 6)
