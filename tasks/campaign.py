"""The campaign row as a Prefect task: one row's video within the run's budget, under the one retry policy.

A row task gets the campaign's id, not its objects: what a run shares between its rows (the budget, the
actors looked up once, each finished row's result) lives in this process's :class:`RunState`, opened and
closed by the run-campaign flow around its rows.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

from prefect import task
from prefect.cache_policies import NO_CACHE

from castflow import campaigns, pipeline
from castflow.budget import Budget
from castflow.campaigns import RowResult
from castflow.models import ActorRef
from castflow.runtime import get_runtime
from castflow.sheets import SheetRow
from tasks.policy import is_transient


@dataclass
class RunState:
    """What the rows of one campaign run share in this process."""

    budget: Budget
    preview: bool = False  # the rows are previews: the lip-sync rendered locally, for free
    takes: dict[str, dict[str, int]] = field(default_factory=dict)  # row -> stage -> seed (re-rolled)
    actors: dict[str, ActorRef] = field(default_factory=dict)  # looked up once per run
    # Each finished row's result, handed to the flow directly (reading it back through the task's state
    # costs more CPU than the rest of a reused row).
    results: dict[str, RowResult] = field(default_factory=dict)


_RUNS: dict[str, RunState] = {}


def open_run(
    campaign_id: str, budget: Budget, *, preview: bool = False, takes: dict[str, dict[str, int]] | None = None
) -> RunState:
    state = _RUNS[campaign_id] = RunState(budget, preview, takes or {})
    return state


def close_run(campaign_id: str) -> None:
    _RUNS.pop(campaign_id, None)


@task(
    name="campaign-row",
    task_run_name="row-{row.row_id}",
    cache_policy=NO_CACHE,
    retry_condition_fn=is_transient,
)
def campaign_row(campaign_id: str, campaign_name: str, row: SheetRow, run: str = "") -> RowResult:
    """One row of the sheet: its video, within the budget (``run``: the key its run was opened under,
    default the campaign's id; a chunk of the campaign has its own)."""
    rt = get_runtime()
    state = _RUNS[run or campaign_id]
    key = row.request.actor
    actor = state.actors.get(key)
    if actor is None:
        actor = state.actors[key] = pipeline.actor_ref(rt, key)
    result = campaigns.run_row(
        rt,
        campaign_id=uuid.UUID(campaign_id),
        campaign_name=campaign_name,
        row=row,
        budget=state.budget,
        actor=actor,
        preview=state.preview,
        takes=state.takes.get(row.row_id),
    )
    state.results[row.row_id] = result
    return result
