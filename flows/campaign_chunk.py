"""The ``campaign-chunk`` flow: a slice of a campaign's rows, run by any worker of the work pool.

A campaign run on a work pool (``flows/pool.py``) starts one flow run of this flow per chunk. It reads
the sheet as the campaign's run was given it (checked against the campaign's sheet hash), takes its
rows' ids from the database, runs those that have not ended exactly as the run would in its own
process (same row task, same budget in the database, same claims), and renews its chunk's lease while
it runs: the campaign's run starts the chunk again elsewhere if the lease lapses.
"""

from __future__ import annotations

import os
import uuid
from typing import Annotated, Any

from prefect import flow
from pydantic import BaseModel

from castflow import campaigns, claims, interrupt, pipeline, redact
from castflow.budget import LedgerBudget
from castflow.db import queries
from castflow.inputs import PathRefused, flow_path, sheet_source
from castflow.runtime import get_runtime
from flows.form import label
from flows.run_campaign import _Progress, _runner, drive
from tasks.campaign import close_run, open_run


class ChunkResult(BaseModel):
    campaign_id: str
    chunk: int
    rows: int  # the chunk's rows
    ran: int = 0  # rows this run started (the others had ended before)
    succeeded: int = 0
    failed: int = 0
    skipped: int = 0
    not_started: int = 0


@flow(name="campaign-chunk", task_runner=_runner(), validate_parameters=True)
def campaign_chunk(
    campaign_id: Annotated[str, label("Campaign id", min_length=1)],
    chunk: Annotated[int, label("Chunk", ge=0)],
    sheet: Annotated[str, label("Sheet", min_length=1)],
    name: Annotated[str, label("Campaign name", min_length=1, max_length=200)],
    brand: Annotated[str, label("Brand kit")] = "",
    preview: Annotated[bool, label("Previews")] = False,
    row_concurrency: Annotated[int, label("Rows at once", ge=0, le=512)] = 0,
    global_limit_prefix: Annotated[str, label("Provider limits prefix", max_length=100)] = "",
) -> ChunkResult:
    """Run one chunk of a campaign's rows (started by run-campaign on a work pool; not run by hand).

    Args:
        campaign_id: The campaign, as run-campaign opened it.
        chunk: Which of its chunks (the row ids are in castflow's database).
        sheet: The sheet, as run-campaign passed it (a name in the sheets folder, storage:<key>, or text).
        name: The campaign's name.
        brand: The campaign's brand kit, as run-campaign was given it.
        preview: Render previews (the free local lip-sync) in place of the videos.
        row_concurrency: Rows in flight at once in this worker. 0: its setting.
        global_limit_prefix: Hold each provider job in the Prefect global concurrency limit
            <prefix><provider>, shared by every worker.
    """
    if global_limit_prefix:  # before the runtime reads its settings: every provider job takes a slot
        os.environ["CASTFLOW_CAMPAIGN__GLOBAL_LIMIT_PREFIX"] = global_limit_prefix
        from castflow.settings import reset_settings

        reset_settings()
    rt = get_runtime()
    redact.install(rt.settings)
    cid = uuid.UUID(campaign_id)
    try:
        source = sheet_source(rt.settings, rt.storage, sheet)
        kit = flow_path(rt.settings, "run-campaign", brand, what="brand kit") if brand else None
    except PathRefused as exc:
        raise pipeline.UserError(str(exc)) from None
    loaded = campaigns.load_sheet(rt, source.path, brand=kit)
    campaign = rt.db_session(lambda s: queries.find_campaign(s, name_or_id=campaign_id), what="reading it")
    if campaign is None:
        raise pipeline.UserError(f"no campaign {campaign_id} in castflow's database")
    if loaded.content_hash != campaign.sheet_hash:
        raise pipeline.UserError(
            f"the sheet {source.origin} is not the one campaign {name!r} was started with "
            "(it changed since, or another was given): nothing was run"
        )
    me = str(claims.me())
    flow_run_id = _flow_run_id()
    lease_s = rt.settings.pipeline.claim_lease_s
    row_ids = rt.db(
        lambda c: queries.start_chunk(
            c, campaign_id=cid, seq=chunk, owner=me, flow_run_id=flow_run_id, lease_s=lease_s
        ),
        what="starting the chunk",
    )
    if row_ids is None:  # done already, or the campaign's run gave it to another flow run since
        return ChunkResult(campaign_id=campaign_id, chunk=chunk, rows=0)
    states = rt.db(lambda c: queries.row_states(c, campaign_id=cid), what="reading the rows")
    wanted = set(row_ids)
    rows = [r for r in loaded.rows if r.row_id in wanted and states.get(r.row_id) not in queries.TERMINAL]
    missing = wanted - {r.row_id for r in loaded.rows}
    if missing:  # the sheet reads differently here (a file beside it missing on this worker)
        problems = "; ".join(str(p) for p in loaded.problems if p.severity == "error")[:1000]
        raise pipeline.UserError(
            f"rows {', '.join(sorted(missing)[:10])} of the sheet do not validate on this worker: {problems}"
        )
    keeper = claims.LeaseKeeper(
        lambda keys: rt.db(
            lambda c: queries.renew_chunk(c, campaign_id=cid, seq=chunk, owner=me, lease_s=lease_s),
            retry_s=0,
        ),
        lease_s,
    )
    key = f"{campaign_id}:{chunk}"
    takes = campaigns.takes(rt, cid)
    run = open_run(key, LedgerBudget(rt, cid, campaign.budget_usd), preview=preview, takes=takes)
    progress = _Progress(len(rows), 0, f"{name}-chunk-{chunk}")
    limit = row_concurrency or rt.settings.campaign.row_concurrency
    try:
        with keeper.hold(key):
            results, not_started, outage = drive(
                rt,
                campaign_id,
                name,
                rows,
                limit,
                run,
                progress,
                run_key=key,
                keep_going=_Still(rt, cid, chunk, me),
            )
    finally:
        keeper.stop()
        close_run(key)
        progress.close()
    if outage is not None:
        raise outage
    if not interrupt.stopping() and not not_started:
        rt.db(
            lambda c: queries.end_chunk(c, campaign_id=cid, seq=chunk, status="done", owner=me),
            what="ending the chunk",
        )
    return ChunkResult(
        campaign_id=campaign_id,
        chunk=chunk,
        rows=len(row_ids),
        ran=len(results),
        succeeded=sum(r.status == "succeeded" for r in results),
        failed=sum(r.status == "failed" for r in results),
        skipped=sum(r.status == "skipped" for r in results),
        not_started=not_started,
    )


class _Still:
    """Whether this run still holds its chunk (checked at most every few seconds): the campaign's run
    may have given it to another flow run (this one was cut off longer than its lease)."""

    def __init__(self, rt: Any, campaign_id: uuid.UUID, seq: int, owner: str) -> None:
        self.rt, self.campaign_id, self.seq, self.owner = rt, campaign_id, seq, owner
        self.checked = 0.0
        self.holds = True

    def __call__(self) -> bool:
        import time

        if self.holds and time.monotonic() - self.checked > 5.0:
            self.checked = time.monotonic()
            try:
                found = self.rt.db(
                    lambda c: queries.read_chunks(c, campaign_id=self.campaign_id, seq=self.seq), retry_s=0
                )
            except Exception:
                return True  # a blink: the rows' own writes retry; keep going
            self.holds = any(c.owner == self.owner and c.status == "running" for c in found)
        return self.holds


def _flow_run_id() -> str | None:
    from prefect.runtime import flow_run

    found = flow_run.get_id()
    return str(found) if found else None
