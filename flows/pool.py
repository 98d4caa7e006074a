"""A campaign's rows on a Prefect work pool: split into chunks, each chunk one flow run of the
campaign-chunk deployment (``run_deployment(..., timeout=0)``) that any worker of the pool picks up, on
any machine; the campaign's run follows the rows in the ledger, not in Prefect's states.

What every worker shares lives in the database (the rows' videos and stages, the budget's holds, the
chunks and their leases) and in Prefect (the providers' global concurrency limits, created here when
missing). The run starts a chunk again when its lease lapses (its worker or machine died) or its flow
run ended without finishing it: the rows that ended are left alone, a row cut short resumes (its
recorded provider jobs are re-attached to, never paid twice).
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Iterable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from castflow import campaigns, interrupt, redact
from castflow.campaigns import RowResult
from castflow.db import queries
from castflow.db.tables import VideoStatus, utcnow
from castflow.pipeline import UserError
from castflow.sheets import SheetRow

DEFAULT_LIMIT_PREFIX = "castflow-"


def run_rows(
    rt: Any,
    campaign_id: uuid.UUID,
    name: str,
    rows: list[SheetRow],
    progress: Any,
    *,
    pool: str,
    sheet: str,
    sheet_path: Path,
    brand: str = "",
    preview: bool = False,
    row_concurrency: int | None = None,
) -> tuple[list[RowResult], int]:
    """Run ``rows`` of the campaign on ``pool`` and wait until each has ended; returns their results
    and how many never started (Ctrl-C: the chunks are cancelled, a rerun resumes)."""
    from prefect import get_run_logger

    logger = get_run_logger()
    cfg = rt.settings.campaign
    deployment = _chunk_deployment(cfg.chunk_deployment, pool)
    prefix = _global_limits(rt)
    size = cfg.chunk_rows
    chunks = [[r.row_id for r in rows[i : i + size]] for i in range(0, len(rows), size)]
    rt.db(lambda c: queries.plan_chunks(c, campaign_id=campaign_id, chunks=chunks), what="planning chunks")
    base = {
        "campaign_id": str(campaign_id),
        "sheet": _shared_sheet(rt, name, sheet, sheet_path),
        "name": name,
        "brand": brand,
        "preview": preview,
        "row_concurrency": row_concurrency or 0,
        "global_limit_prefix": prefix,
    }
    runs: dict[int, str] = {}
    for seq in range(len(chunks)):
        runs[seq] = _dispatch(rt, deployment, campaign_id, name, seq, base)
    logger.info(
        "%s: %d row(s) in %d chunk(s) of up to %d on work pool %s (deployment %s)",
        name, len(rows), len(chunks), size, pool, deployment,
    )  # fmt: skip
    follower = _Follower(rt, campaign_id, name, rows, chunks, progress, runs, pool, deployment, base, logger)
    return follower.follow()


class _Follower:
    """Reads the rows' states from the ledger until every row has ended; starts lost chunks again."""

    def __init__(
        self,
        rt: Any,
        campaign_id: uuid.UUID,
        name: str,
        rows: list[SheetRow],
        chunks: list[list[str]],
        progress: Any,
        runs: dict[int, str],
        pool: str,
        deployment: str,
        base: dict[str, Any],
        logger: Any,
    ) -> None:
        self.rt = rt
        self.campaign_id = campaign_id
        self.name = name
        self.rows = {r.row_id: r for r in rows}
        self.chunks = chunks  # each chunk's row ids, as planned
        self.progress = progress
        self.runs = runs
        self.pool = pool
        self.deployment = deployment
        self.base = base
        self.logger = logger
        self.ended: set[str] = set()
        self.since: datetime | None = None  # the rows' states read since then (None: all)
        self.waiting_since = time.monotonic()  # since when no chunk has run and no row has ended
        self.ended_before = 0
        self.told_waiting = False

    def follow(self) -> tuple[list[RowResult], int]:
        cfg = self.rt.settings.campaign
        next_check = 0.0
        while len(self.ended) < len(self.rows):
            if interrupt.stopping():
                self._cancel_all()
                break
            # Only the rows changed lately (a long campaign is not read whole every beat); the margin
            # covers the workers' clocks, which write updated_at, and transactions still committing.
            since = utcnow() - timedelta(seconds=60)
            states = self.rt.db(
                lambda c: queries.row_states(c, campaign_id=self.campaign_id, since=self.since),
                what="following the rows",
            )
            self.since = since
            self._count(states)
            if len(self.ended) >= len(self.rows):
                break
            if time.monotonic() >= next_check:
                next_check = time.monotonic() + max(cfg.follow_s, 2.0)
                self._check_chunks()
            _sleep(cfg.follow_s)
        return self._results(), len(self.rows) - len(self.ended)

    def _count(self, states: dict[str, str]) -> None:
        for row_id, row in self.rows.items():
            if row_id in self.ended:
                continue
            status = states.get(row_id)
            if status in queries.TERMINAL:
                self.ended.add(row_id)
                self.progress.step(RowResult(row=row.row, row_id=row_id, status=status or "failed"))

    def _check_chunks(self) -> None:
        """A chunk whose lease lapsed, or whose flow run ended with rows of it not ended, is lost:
        started again (up to chunk_attempts times), else its rows end failed."""
        chunks = self.rt.db(
            lambda c: queries.read_chunks(c, campaign_id=self.campaign_id), what="reading chunks"
        )
        flow_states = _flow_run_states(
            [c.flow_run_id for c in chunks if c.flow_run_id and c.status != "done"]
        )
        now = utcnow()
        if any(c.status == "running" for c in chunks) or len(self.ended) > self.ended_before:
            self.waiting_since = time.monotonic()  # a worker is on it, or rows keep ending
        self.ended_before = len(self.ended)
        if time.monotonic() - self.waiting_since > 60:
            self._tell_waiting()
        for chunk in chunks:
            left = [r for r in self.chunks[chunk.seq] if r not in self.ended]
            if chunk.status == "done" or not left:
                continue
            state = flow_states.get(chunk.flow_run_id or "")
            lapsed = chunk.status == "running" and chunk.lease_until is not None and chunk.lease_until < now
            ended = state is not None and state[0] in _FINAL
            if not (lapsed or ended):
                continue
            why = (
                f"its worker stopped renewing its lease ({chunk.owner or 'unknown'})"
                if lapsed
                else f"its flow run ended {state[0].lower() if state else 'unknown'}"
                + (f": {state[1]}" if state and state[1] else "")
            )
            self._lost(chunk, left, why, still_running=lapsed and not ended)

    def _lost(self, chunk: queries.Chunk, left: list[str], why: str, *, still_running: bool) -> None:
        cfg = self.rt.settings.campaign
        rt, cid = self.rt, self.campaign_id
        rt.db(
            lambda c: queries.end_chunk(c, campaign_id=cid, seq=chunk.seq, status="lost"), what="a lost chunk"
        )
        if still_running and chunk.flow_run_id:
            _mark_crashed(chunk.flow_run_id, f"castflow: chunk {chunk.seq} lost, {why}")
        if chunk.attempts < cfg.chunk_attempts:
            self.logger.warning(
                "%s: chunk %d lost (%s); starting it again for its %d unfinished row(s) (attempt %d of %d)",
                self.name, chunk.seq, redact.redact(why)[:300], len(left), chunk.attempts + 1, cfg.chunk_attempts,
            )  # fmt: skip
            self.runs[chunk.seq] = _dispatch(rt, self.deployment, cid, self.name, chunk.seq, self.base)
            return
        reason = f"chunk {chunk.seq} was lost {chunk.attempts} time(s), last: {why}; run the campaign again to resume"
        self.logger.error("%s: %s", self.name, redact.redact(reason)[:500])

        def fail(c: Any) -> None:
            queries.fail_rows(c, campaign_id=cid, row_ids=left, error=reason)
            started = queries.row_states(c, campaign_id=cid)
            for row_id in left:
                if row_id in started:
                    continue  # a row never started gets a video row, failed, so the manifest says why
                request = self.rows[row_id].request
                values = {
                    "campaign_id": cid, "row_id": row_id, "actor_key": request.actor,
                    "resolution": request.resolution, "status": VideoStatus.failed, "error": reason[:4000],
                    "finished_at": utcnow(),
                }  # fmt: skip
                queries.upsert_video(c, request_key=campaigns.request_key(cid, row_id), values=values)

        rt.db(fail, what="failing a lost chunk's rows")  # the next beat reads them as ended

    def _tell_waiting(self) -> None:
        if not self.told_waiting:
            self.told_waiting = True
            self.logger.warning(
                "%s: no chunk has run for a minute: are the pool's workers up? (prefect worker start "
                "--pool %s)", self.name, self.pool,
            )  # fmt: skip

    def _cancel_all(self) -> None:
        """Ctrl-C (or a cancel) on the campaign's run: its chunks' runs are cancelled; their workers stop
        them, and a rerun resumes every row."""
        for flow_run_id in self.runs.values():
            _cancel(flow_run_id)

    def _results(self) -> list[RowResult]:
        """Each row's result as the ledger has it."""
        rt = self.rt

        def read(s: Any) -> list[Any]:
            return list(queries.campaign_videos(s, campaign_id=self.campaign_id))

        made: list[RowResult] = []
        for v in rt.db_session(read, what="reading the rows' results"):
            row = self.rows.get(v.row_id or "")
            if row is None:
                continue
            status = v.status.value if hasattr(v.status, "value") else str(v.status)
            if status not in queries.TERMINAL:
                continue
            made.append(
                RowResult(
                    row=row.row, row_id=row.row_id, status=status, cost_usd=v.cost_usd or 0.0,
                    video_url=v.video_url if status == "succeeded" else None, error=v.error,
                    warning="; ".join(v.warnings or []) or None,
                )
            )  # fmt: skip
        return made


_FINAL = ("COMPLETED", "FAILED", "CRASHED", "CANCELLED", "CANCELLING")


def _sleep(seconds: float) -> None:
    """Sleep in short steps (a signal handler runs between them)."""
    end = time.monotonic() + seconds
    while not interrupt.stopping() and (left := end - time.monotonic()) > 0:
        time.sleep(min(left, 0.25))


def _shared_sheet(rt: Any, name: str, sheet: str, path: Path) -> str:
    """The sheet as every worker can read it: the run's own parameter when it names a sheet in storage,
    in the workers' sheets folder, or is the sheet's text; a file given by an absolute path (the CLI's)
    is put in castflow's storage beside the campaign's videos."""
    if sheet.startswith("storage:") or "\n" in sheet.strip("\r\n") or not Path(sheet).is_absolute():
        return sheet
    key = f"{campaigns.videos_prefix(name)}sheets/{path.name}"
    rt.storage.put_file(key, path, "text/csv" if path.suffix.lower() != ".yaml" else "application/yaml")
    return f"storage:{key}"


def _dispatch(
    rt: Any, deployment: str, campaign_id: uuid.UUID, name: str, seq: int, base: dict[str, Any]
) -> str:
    """A flow run of the chunk deployment for chunk ``seq``; returns its id."""
    from prefect.deployments import run_deployment

    run = run_deployment(
        deployment,
        parameters={**base, "chunk": seq},
        timeout=0,
        flow_run_name=f"{campaigns.slug(name, 40)}-chunk-{seq}",
        tags=["castflow", "campaign-chunk"],
    )
    flow_run_id = str(run.id)  # type: ignore[union-attr]
    rt.db(
        lambda c: queries.dispatched_chunk(c, campaign_id=campaign_id, seq=seq, flow_run_id=flow_run_id),
        what="recording a chunk's run",
    )
    return flow_run_id


def _chunk_deployment(deployment: str, pool: str) -> str:
    """The chunk deployment's name, checked: it exists and belongs to ``pool``."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            found = client.read_deployment_by_name(deployment)
        except ObjectNotFound:
            raise UserError(
                f"work pool {pool!r}: no deployment {deployment!r} on the Prefect server; deploy it to the "
                "pool first (CASTFLOW_PROJECT_DIR=$PWD prefect --no-prompt deploy --all, deployments/README.md)"
            ) from None
    if found.work_pool_name and found.work_pool_name != pool:
        raise UserError(
            f"deployment {deployment!r} runs on work pool {found.work_pool_name!r}, not {pool!r}: deploy it "
            "to that pool or set CASTFLOW_CAMPAIGN__WORK_POOL to its pool"
        )
    return deployment


def _global_limits(rt: Any) -> str:
    """The providers' limits as Prefect global concurrency limits shared by every worker: created at the
    size of this worker's settings when missing (an existing one keeps its size). Returns the prefix."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    prefix = rt.settings.campaign.global_limit_prefix or DEFAULT_LIMIT_PREFIX
    with get_client(sync_client=True) as client:
        shared = rt.settings.global_limit_providers()
        for provider, limit in sorted(rt.settings.provider_limits().items()):
            if provider not in shared:
                continue
            try:
                client.read_global_concurrency_limit_by_name(f"{prefix}{provider}")
            except ObjectNotFound:
                with contextlib.suppress(ObjectAlreadyExists):  # another run created it at once
                    client.create_global_concurrency_limit(
                        GlobalConcurrencyLimitCreate(name=f"{prefix}{provider}", limit=limit)
                    )
    return prefix


def _flow_run_states(ids: Iterable[str]) -> dict[str, tuple[str, str]]:
    """``flow run id -> (state type, message)`` for the chunks' runs, in one call."""
    wanted = [uuid.UUID(i) for i in ids]
    if not wanted:
        return {}
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=wanted)))
    return {
        str(r.id): (r.state.type.value if r.state else "PENDING", (r.state.message or "") if r.state else "")
        for r in runs
    }


def _mark_crashed(flow_run_id: str, message: str) -> None:
    """The lost chunk's run shown as Crashed in the UI (its process is gone, or cut off)."""
    from prefect.client.orchestration import get_client
    from prefect.states import Crashed

    try:
        with get_client(sync_client=True) as client:
            client.set_flow_run_state(uuid.UUID(flow_run_id), Crashed(message=message), force=True)
    except Exception as exc:  # only the UI's view: the chunk is started again either way
        from prefect import get_run_logger

        get_run_logger().warning("could not mark run %s crashed: %s", flow_run_id, type(exc).__name__)


def _cancel(flow_run_id: str) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.objects import State, StateType

    try:
        with get_client(sync_client=True) as client:
            run = client.read_flow_run(uuid.UUID(flow_run_id))
            if run.state is not None and run.state.is_final():
                return
            client.set_flow_run_state(
                uuid.UUID(flow_run_id), State(type=StateType.CANCELLING, name="Cancelling"), force=True
            )
    except Exception:  # best effort: a rerun resumes whatever still runs
        return
