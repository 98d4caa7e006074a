"""Data access as a small API: keyword-only functions, the session passed in, parameterised SQL only."""

from __future__ import annotations

import functools
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from castflow.db.tables import (
    Actor,
    Approval,
    BudgetHold,
    Campaign,
    CampaignChunk,
    CampaignStatus,
    ImageVariant,
    StageRun,
    StageStatus,
    Take,
    Video,
    VideoStage,
    VideoStatus,
    WebhookEvent,
    WebhookStatus,
    utcnow,
)

# Core statements on the tables where no ORM object is needed back: no ORM bookkeeping per call.
_STAGE_RUNS: sa.Table = StageRun.__table__  # type: ignore[assignment]
_VIDEOS: sa.Table = Video.__table__  # type: ignore[assignment]
_HOLDS: sa.Table = BudgetHold.__table__  # type: ignore[assignment]
_CHUNKS: sa.Table = CampaignChunk.__table__  # type: ignore[assignment]
_CAMPAIGNS: sa.Table = Campaign.__table__  # type: ignore[assignment]


# The per-row statements below are Core only: they run on an ORM session or on a plain connection
# (castflow.db.session.connection_scope, the cheaper one for the hot path).
Db = Session | sa.Connection


def _dialect(db: Db) -> str:
    return db.dialect.name if isinstance(db, sa.Connection) else db.get_bind().dialect.name


_PREBUILT: dict[tuple[str, ...], Any] = {}


def _prebuilt(session: Db, name: str, build: Any, *extra: str) -> Any:
    """A statement built once per dialect (and shape) and then executed with parameters: the hot
    per-row writes skip building and compiling SQL each time."""
    key = (_dialect(session), name, *extra)
    stmt = _PREBUILT.get(key)
    if stmt is None:
        stmt = _PREBUILT[key] = build()
    return stmt


def _insert(session: Db, table: sa.Table) -> Any:
    dialect = _dialect(session)
    if dialect == "postgresql":
        return postgresql.insert(table)
    if dialect == "sqlite":
        return sqlite.insert(table)
    raise NotImplementedError(f"no upsert for dialect {dialect}")


# ---- actors -----------------------------------------------------------------------------------------


def upsert_actor(session: Session, *, key: str, values: dict[str, Any]) -> Actor:
    """Insert or update the actor with ``key``; returns the stored row."""
    now = utcnow()
    row = {"id": uuid.uuid4(), "key": key, "created_at": now, "updated_at": now, **values}
    ins = _insert(session, Actor.__table__)  # type: ignore[arg-type]
    stmt = ins.values(**row).on_conflict_do_update(
        index_elements=["key"], set_={**{c: ins.excluded[c] for c in values}, "updated_at": now}
    )
    session.execute(stmt)
    actor = get_actor(session, key=key)
    assert actor is not None
    return actor


def get_actor(session: Session, *, key: str) -> Actor | None:
    return session.scalars(sa.select(Actor).where(Actor.key == key)).one_or_none()


def list_actors(session: Session) -> Sequence[Actor]:
    return session.scalars(sa.select(Actor).order_by(Actor.key)).all()


# ---- stage runs ---------------------------------------------------------------------------------------


def get_stage_run(session: Session, *, stage_key: str) -> StageRun | None:
    return session.scalars(sa.select(StageRun).where(StageRun.stage_key == stage_key)).one_or_none()


_STAGE_STATE = sa.select(
    _STAGE_RUNS.c.status,
    _STAGE_RUNS.c.output_key,
    _STAGE_RUNS.c.output_hash,
    _STAGE_RUNS.c.cost_usd,
    _STAGE_RUNS.c.meta,
    _STAGE_RUNS.c.request_id,
    _STAGE_RUNS.c.updated_at,
    _STAGE_RUNS.c.owner,
    _STAGE_RUNS.c.lease_until,
    _STAGE_RUNS.c.sending_at,
    _STAGE_RUNS.c.campaign_id,
    _STAGE_RUNS.c.error,
).where(_STAGE_RUNS.c.stage_key == sa.bindparam("stage_key"))


def stage_run_state(session: Db, *, stage_key: str) -> Any:
    """What the pipeline needs to know of a stage run (status, output, cost, meta, request id, last
    update, the claim), as a plain row: the per-stage lookup of every video, kept cheap."""
    return session.execute(_STAGE_STATE, {"stage_key": stage_key}).one_or_none()


def stage_run_states(session: Db, *, stage_keys: Iterable[str], chunk: int = 500) -> dict[str, Any]:
    """:func:`stage_run_state` of many stages at once (an estimate of 100,000 rows), by stage key; a
    stage never run is absent. Keys go in chunks (SQLite allows 32,766 parameters, PostgreSQL more)."""
    keys = list(dict.fromkeys(stage_keys))
    found: dict[str, Any] = {}
    columns = list(_STAGE_STATE.selected_columns)
    for start in range(0, len(keys), chunk):
        part = keys[start : start + chunk]
        query = sa.select(_STAGE_RUNS.c.stage_key, *columns).where(_STAGE_RUNS.c.stage_key.in_(part))
        for row in session.execute(query):
            found[row.stage_key] = row
    return found


def _new_stage_row(
    stage_key: str, stage: str, provider: str, model: str, meta: dict[str, Any], now: datetime
) -> dict[str, Any]:
    """The values of a stage's first row (running, first attempt, nothing billed yet)."""
    return {
        "id": uuid.uuid4(),
        "stage_key": stage_key,
        "stage": stage,
        "provider": provider,
        "model": model,
        "status": StageStatus.running.value,
        "attempts": 1,
        "billed_units": 0.0,
        "cost_usd": 0.0,
        "meta": meta,
        "created_at": now,
        "updated_at": now,
    }


def claim_stage_run(
    session: Db,
    *,
    stage_key: str,
    stage: str,
    provider: str,
    model: str,
    meta: dict[str, Any],
    owner: str,
    lease_s: float,
    stale_owner: str | None = None,
    rerun_succeeded: bool = False,
) -> Any:
    """Claim a stage in one statement (an upsert whose update is conditional), or learn that another
    process holds it: returns the claimed row's ``request_id`` (a job to re-attach to, or None), or
    None when the claim was refused. Atomic on SQLite and PostgreSQL alike: two processes that claim
    the same stage at the same instant get one claim between them.

    Refused: an ``unknown`` stage (only ``castflow stages resolve`` clears it); a send in progress with
    no request id yet (handled by the caller, never claimed blindly); a succeeded stage unless
    ``rerun_succeeded`` (its output was found missing); a running claim whose owner is neither this
    process nor ``stale_owner`` (one this process saw is gone) and whose lease holds.
    A claim over a failed run forgets that run's request id: the next submit is a new job.
    """

    def build() -> Any:
        ins = _insert(session, _STAGE_RUNS)
        c = _STAGE_RUNS.c
        failed = c.status == StageStatus.failed.value
        held = sa.and_(
            c.status == StageStatus.running.value,
            c.owner.is_not(None),
            c.owner != sa.bindparam("me"),
            sa.or_(c.owner != sa.bindparam("stale_owner"), sa.bindparam("stale_owner").is_(None)),
            c.lease_until.is_not(None),
            c.lease_until >= sa.bindparam("now"),
        )
        sending = sa.and_(
            c.status == StageStatus.running.value, c.sending_at.is_not(None), c.request_id.is_(None)
        )
        return ins.on_conflict_do_update(
            index_elements=["stage_key"],
            set_={
                "attempts": c.attempts + 1,
                "status": StageStatus.running.value,
                "error": None,
                "owner": ins.excluded.owner,
                "lease_until": ins.excluded.lease_until,
                "request_id": sa.case((failed, None), else_=c.request_id),
                "sending_at": sa.case((failed, None), else_=c.sending_at),
                "campaign_id": sa.case((failed, None), else_=c.campaign_id),
                "updated_at": ins.excluded.updated_at,
            },
            where=sa.and_(
                c.status != StageStatus.unknown.value,
                sa.or_(c.status != StageStatus.succeeded.value, sa.bindparam("rerun_succeeded")),
                sa.not_(held),
                sa.not_(sending),
            ),
        ).returning(_STAGE_RUNS.c.id, _STAGE_RUNS.c.request_id)

    now = utcnow()
    row = session.execute(
        _prebuilt(session, "claim_stage_run", build),
        {
            **_new_stage_row(stage_key, stage, provider, model, meta, now),
            "lease_until": now + timedelta(seconds=lease_s),
            "owner": owner,
            "me": owner,
            "now": now,
            "stale_owner": stale_owner,
            "rerun_succeeded": rerun_succeeded,
        },
    ).one_or_none()
    return None if row is None else Claim(row.request_id)


@dataclass(frozen=True)
class Claim:
    """A stage claimed by this process; ``request_id``: the recorded job to re-attach to, if any."""

    request_id: str | None


def start_stage_run(
    session: Db,
    *,
    stage_key: str,
    stage: str,
    provider: str,
    model: str,
    meta: dict[str, Any],
    returning: bool = True,
) -> StageRun | None:
    """Create a stage's row or count one more attempt on it, unconditionally (tests and tools; the
    pipeline claims with :func:`claim_stage_run`). Returns the row (None with ``returning=False``)."""

    def build() -> Any:
        ins = _insert(session, _STAGE_RUNS)
        return ins.on_conflict_do_update(
            index_elements=["stage_key"],
            set_={
                "attempts": _STAGE_RUNS.c.attempts + 1,
                "status": StageStatus.running.value,
                "error": None,
                "updated_at": ins.excluded.updated_at,
            },
        )

    now = utcnow()
    session.execute(
        _prebuilt(session, "start_stage_run", build),
        _new_stage_row(stage_key, stage, provider, model, meta, now),
    )
    if not returning:
        return None
    assert isinstance(session, Session), "reading the row back needs an ORM session"
    return get_stage_run(session, stage_key=stage_key)


def renew_leases(session: Db, *, owner: str, keys: list[str], lease_s: float) -> int:
    """Extend the running claims of ``owner`` on ``keys``; returns how many."""
    now = utcnow()
    result = session.execute(
        sa.update(_STAGE_RUNS)
        .where(
            _STAGE_RUNS.c.owner == owner,
            _STAGE_RUNS.c.status == StageStatus.running.value,
            _STAGE_RUNS.c.stage_key.in_(keys),
        )
        .values(lease_until=now + timedelta(seconds=lease_s))
    )
    return int(getattr(result, "rowcount", 0) or 0)


class ClaimLost(Exception):
    """This process no longer holds the stage's claim (its lease lapsed and another process took it):
    it must not send anything for it."""


def mark_sending(session: Db, *, stage_key: str, owner: str, campaign_id: uuid.UUID | None = None) -> None:
    """The submit intent: set just before the submit goes out (so a crash after it is never taken for
    "nothing was sent"), with the campaign that pays. Fenced: only the claim's owner may send, so a
    process whose lease lapsed (and whose stage another took over) raises :class:`ClaimLost` instead."""
    now = utcnow()
    result = session.execute(
        sa.update(_STAGE_RUNS)
        .where(
            _STAGE_RUNS.c.stage_key == stage_key,
            _STAGE_RUNS.c.owner == owner,
            _STAGE_RUNS.c.status == StageStatus.running.value,
        )
        .values(sending_at=now, request_id=None, campaign_id=campaign_id, updated_at=now)
    )
    if not getattr(result, "rowcount", 0):
        raise ClaimLost(f"stage {stage_key[:12]}: claim lost to another process before sending")


def set_request_id(
    session: Db, *, stage_key: str, request_id: str, campaign_id: uuid.UUID | None = None
) -> None:
    """Record the provider's request id before waiting on it (never pay twice after a crash), and the
    campaign that paid for it (kept as recorded with the intent when not given). An ``unknown`` stage
    whose id turns up is running again."""
    values: dict[str, Any] = {
        "request_id": request_id,
        "status": sa.case(
            (_STAGE_RUNS.c.status == StageStatus.unknown.value, StageStatus.running.value),
            else_=_STAGE_RUNS.c.status,
        ),
        "updated_at": utcnow(),
    }
    if campaign_id is not None:
        values["campaign_id"] = campaign_id
    session.execute(sa.update(_STAGE_RUNS).where(_STAGE_RUNS.c.stage_key == stage_key).values(**values))


def apply_journal(session: Db, *, owner: str, entries: list[dict[str, Any]]) -> int:
    """Write a dead owner's journaled request ids where the database lacks them (castflow.journal):
    per stage its last entry, and only on a row that is still that owner's send (its intent recorded
    before the answer was journaled), so an old entry never names a later attempt's job and no other
    process's claim is touched. Returns how many rows took an id."""
    last: dict[str, dict[str, Any]] = {}
    for entry in entries:
        last[str(entry["stage_key"])] = entry
    taken = 0
    for key, entry in last.items():
        answered = datetime.fromtimestamp(float(entry.get("ts") or 0), UTC) + timedelta(seconds=1)
        result = session.execute(
            sa.update(_STAGE_RUNS)
            .where(
                _STAGE_RUNS.c.stage_key == key,
                _STAGE_RUNS.c.owner == owner,
                _STAGE_RUNS.c.request_id.is_(None),
                _STAGE_RUNS.c.sending_at.is_not(None),
                _STAGE_RUNS.c.sending_at <= answered,
                _STAGE_RUNS.c.status.in_([StageStatus.running.value, StageStatus.unknown.value]),
            )
            .values(
                request_id=str(entry["request_id"]),
                status=StageStatus.running.value,
                error=None,
                owner=None,
                lease_until=None,
                updated_at=utcnow(),
            )
        )
        taken += int(getattr(result, "rowcount", 0) or 0)
    return taken


def finish_stage_run(
    session: Db,
    *,
    stage_key: str,
    output_key: str,
    output_hash: str,
    billed_units: float,
    unit: str,
    cost_usd: float,
    run_seconds: float,
    queue_seconds: float | None = None,
    request_id: str | None = None,
    meta: dict[str, Any] | None = None,
    campaign_id: uuid.UUID | None = None,
) -> None:
    """The stage succeeded; ``campaign_id`` names the payer of a synchronous call (a queue job's payer
    was recorded with its request id)."""
    values: dict[str, Any] = {
        "status": StageStatus.succeeded,
        "output_key": output_key,
        "output_hash": output_hash,
        "billed_units": billed_units,
        "unit": unit,
        "cost_usd": cost_usd,
        "run_seconds": run_seconds,
        "queue_seconds": queue_seconds,
        "error": None,
        "owner": None,
        "lease_until": None,
        "updated_at": utcnow(),
    }
    if request_id is not None:
        values["request_id"] = request_id
    if meta is not None:
        values["meta"] = meta
    if campaign_id is not None:
        values["campaign_id"] = campaign_id
    session.execute(sa.update(_STAGE_RUNS).where(_STAGE_RUNS.c.stage_key == stage_key).values(**values))


def _owned(owner: str | None) -> Any:
    """Only the claim's owner writes a claimed row's outcome (None: whoever, for tools and QC)."""
    return sa.true() if owner is None else sa.or_(_STAGE_RUNS.c.owner == owner, _STAGE_RUNS.c.owner.is_(None))


def note_stage_error(session: Db, *, stage_key: str, error: str, owner: str | None = None) -> None:
    """Record a transient error on a stage that stays running (its request may still finish), and let
    go of the claim: whoever runs the stage next re-attaches to the request."""
    session.execute(
        sa.update(_STAGE_RUNS)
        .where(_STAGE_RUNS.c.stage_key == stage_key, _owned(owner))
        .values(error=error[:4000], owner=None, lease_until=None, updated_at=utcnow())
    )


def fail_stage_run(session: Db, *, stage_key: str, error: str, owner: str | None = None) -> None:
    """Nothing paid is pending: the next claim submits anew. With ``owner``: only while it holds the
    claim (a process that lost it must not undo the new owner's send)."""
    session.execute(
        sa.update(_STAGE_RUNS)
        .where(
            _STAGE_RUNS.c.stage_key == stage_key,
            _STAGE_RUNS.c.status != StageStatus.unknown.value,
            _owned(owner),
        )
        .values(
            status=StageStatus.failed,
            error=error[:4000],
            sending_at=None,
            owner=None,
            lease_until=None,
            updated_at=utcnow(),
        )
    )


def mark_stage_unknown(session: Db, *, stage_key: str, error: str) -> bool:
    """A submit went out and no request id can be found: hold the stage until a person resolves it.
    Only a stage still without a request id changes (True then)."""
    result = session.execute(
        sa.update(_STAGE_RUNS)
        .where(
            _STAGE_RUNS.c.stage_key == stage_key,
            _STAGE_RUNS.c.request_id.is_(None),
            _STAGE_RUNS.c.status.in_([StageStatus.running.value, StageStatus.unknown.value]),
        )
        # The owner stays: its journal (castflow.journal) may still name the job.
        .values(status=StageStatus.unknown, error=error[:4000], lease_until=None, updated_at=utcnow())
    )
    return bool(getattr(result, "rowcount", 0))


def unknown_stage_runs(session: Session) -> Sequence[StageRun]:
    return session.scalars(
        sa.select(StageRun).where(StageRun.status == StageStatus.unknown).order_by(StageRun.updated_at)
    ).all()


def resolve_stage_run(session: Session, *, stage_key: str, request_id: str | None) -> bool:
    """Settle an ``unknown`` stage: with the request id found in the provider's dashboard, the next run
    re-attaches to that job; without one, the next run submits again (and may pay a second time)."""
    if request_id is not None:
        values: dict[str, Any] = {"status": StageStatus.running, "request_id": request_id}
    else:
        values = {"status": StageStatus.failed, "request_id": None}
    result = session.execute(
        sa.update(_STAGE_RUNS)
        .where(_STAGE_RUNS.c.stage_key == stage_key, _STAGE_RUNS.c.status == StageStatus.unknown.value)
        .values(**values, sending_at=None, owner=None, lease_until=None, error=None, updated_at=utcnow())
    )
    return bool(getattr(result, "rowcount", 0))


def jobs_in_flight(session: Db, *, campaign_id: uuid.UUID) -> int:
    """The campaign's provider jobs submitted and not yet fetched (their request ids are recorded)."""
    count = session.execute(
        sa.select(sa.func.count()).where(
            _STAGE_RUNS.c.campaign_id == campaign_id,
            _STAGE_RUNS.c.status == StageStatus.running.value,
            _STAGE_RUNS.c.request_id.is_not(None),
        )
    ).scalar_one()
    return int(count)


def campaign_spend(session: Db, *, campaign_id: uuid.UUID) -> float:
    """What a campaign paid, over all its runs: each stage job it submitted, counted once."""
    total = session.execute(
        sa.select(sa.func.coalesce(sa.func.sum(_STAGE_RUNS.c.cost_usd), 0.0)).where(
            _STAGE_RUNS.c.campaign_id == campaign_id, _STAGE_RUNS.c.status == StageStatus.succeeded.value
        )
    ).scalar_one()
    return float(total)


# ---- budget holds --------------------------------------------------------------------------------------


def hold_budget(
    db: Db, *, campaign_id: uuid.UUID, holder: str, amount: float, owner: str, fresh: bool = False
) -> bool:
    """Hold ``amount`` more of the campaign's budget for ``holder`` (a row) if the ledger's spend plus
    every hold plus ``amount`` stays within the cap; False (nothing held) when it would cross it.
    ``fresh``: the holder starts again, its earlier hold (a dead worker's) is dropped first.

    Race-free across processes: the campaign's row is locked first (``FOR UPDATE`` on PostgreSQL, where
    each statement after it reads what the previous holders committed; SQLite's transactions are
    ``BEGIN IMMEDIATE``, one writer at a time), so holders of one campaign take their turns.
    """
    limit = db.execute(
        sa.select(_CAMPAIGNS.c.budget_usd).where(_CAMPAIGNS.c.id == campaign_id).with_for_update()
    ).scalar_one_or_none()
    if fresh:
        db.execute(sa.delete(_HOLDS).where(_HOLDS.c.campaign_id == campaign_id, _HOLDS.c.holder == holder))
    if limit is None:
        return True
    if campaign_spend(db, campaign_id=campaign_id) + _held(db, campaign_id) + amount > float(limit) + 1e-9:
        return False
    ins = _insert(db, _HOLDS)
    db.execute(
        ins.values(
            id=uuid.uuid4(),
            campaign_id=campaign_id,
            holder=holder,
            amount_usd=amount,
            owner=owner,
            updated_at=utcnow(),
        ).on_conflict_do_update(
            index_elements=["campaign_id", "holder"],
            set_={
                "amount_usd": _HOLDS.c.amount_usd + ins.excluded.amount_usd,
                "owner": ins.excluded.owner,
                "updated_at": ins.excluded.updated_at,
            },
        )
    )
    return True


def release_budget(db: Db, *, campaign_id: uuid.UUID, holder: str | None = None) -> None:
    """Drop ``holder``'s hold (its stages' true costs are in the ledger by now); None: every hold of
    the campaign (a run that starts it again, with nothing of it running)."""
    query = sa.delete(_HOLDS).where(_HOLDS.c.campaign_id == campaign_id)
    if holder is not None:
        query = query.where(_HOLDS.c.holder == holder)
    db.execute(query)


def budget_holders(db: Db, *, campaign_id: uuid.UUID) -> list[tuple[str, str | None]]:
    """The campaign's holds: (holder, owner process)."""
    rows = db.execute(
        sa.select(_HOLDS.c.holder, _HOLDS.c.owner).where(_HOLDS.c.campaign_id == campaign_id)
    ).all()
    return [(r[0], r[1]) for r in rows]


def budget_state(db: Db, *, campaign_id: uuid.UUID) -> tuple[float | None, float, float]:
    """The campaign's cap, what the ledger says it spent, and what its running rows hold."""
    limit = db.execute(
        sa.select(_CAMPAIGNS.c.budget_usd).where(_CAMPAIGNS.c.id == campaign_id)
    ).scalar_one_or_none()
    return limit, campaign_spend(db, campaign_id=campaign_id), _held(db, campaign_id)


def _held(db: Db, campaign_id: uuid.UUID) -> float:
    """What the campaign's running rows hold, together."""
    total = db.execute(
        sa.select(sa.func.coalesce(sa.func.sum(_HOLDS.c.amount_usd), 0.0)).where(
            _HOLDS.c.campaign_id == campaign_id
        )
    ).scalar_one()
    return float(total)


# ---- campaign chunks (a campaign's rows on a work pool) ------------------------------------------------


@dataclass(frozen=True)
class Chunk:
    """A chunk's state (its row ids, fixed when it is planned, are read only by who runs it)."""

    seq: int
    status: str  # pending | running | done | lost
    attempts: int
    flow_run_id: str | None
    owner: str | None
    lease_until: datetime | None


TERMINAL = (VideoStatus.succeeded.value, VideoStatus.failed.value, VideoStatus.skipped.value)


def plan_chunks(db: Db, *, campaign_id: uuid.UUID, chunks: list[list[str]]) -> None:
    """The campaign's chunks for a new run: the earlier run's are replaced. The rows are set pending
    again unless they succeeded (a failed or skipped row of an earlier run is run again)."""
    db.execute(sa.delete(_CHUNKS).where(_CHUNKS.c.campaign_id == campaign_id))
    now = utcnow()
    if chunks:
        db.execute(
            sa.insert(_CHUNKS),
            [
                {"id": uuid.uuid4(), "campaign_id": campaign_id, "seq": seq, "row_ids": rows,
                 "status": "pending", "attempts": 0, "created_at": now, "updated_at": now}
                for seq, rows in enumerate(chunks)
            ],
        )  # fmt: skip
    every = [row_id for rows in chunks for row_id in rows]
    for start in range(0, len(every), 1000):
        db.execute(
            sa.update(_VIDEOS)
            .where(
                _VIDEOS.c.campaign_id == campaign_id,
                _VIDEOS.c.row_id.in_(every[start : start + 1000]),
                _VIDEOS.c.status != VideoStatus.succeeded.value,
            )
            .values(status=VideoStatus.pending.value, updated_at=now)
        )


def read_chunks(db: Db, *, campaign_id: uuid.UUID, seq: int | None = None) -> list[Chunk]:
    """The campaign's chunks (``seq``: that one only), without their row ids."""
    c = _CHUNKS.c
    query = sa.select(c.seq, c.status, c.attempts, c.flow_run_id, c.owner, c.lease_until).where(
        c.campaign_id == campaign_id
    )
    if seq is not None:
        query = query.where(c.seq == seq)
    return [Chunk(*r) for r in db.execute(query.order_by(c.seq)).all()]


def dispatched_chunk(db: Db, *, campaign_id: uuid.UUID, seq: int, flow_run_id: str) -> None:
    """A flow run was created for the chunk (one more attempt); it is pending until a worker starts it."""
    db.execute(
        sa.update(_CHUNKS)
        .where(_CHUNKS.c.campaign_id == campaign_id, _CHUNKS.c.seq == seq)
        .values(
            flow_run_id=flow_run_id, status="pending", attempts=_CHUNKS.c.attempts + 1, owner=None,
            lease_until=None, updated_at=utcnow(),
        )
    )  # fmt: skip


def start_chunk(
    db: Db, *, campaign_id: uuid.UUID, seq: int, owner: str, flow_run_id: str | None, lease_s: float
) -> list[str] | None:
    """This process runs the chunk now (its owner and lease); returns the chunk's row ids. None: no such
    chunk, or it is done, or the campaign's run started another attempt of it since (another flow run
    holds it)."""
    c = _CHUNKS.c
    query = sa.update(_CHUNKS).where(c.campaign_id == campaign_id, c.seq == seq, c.status != "done")
    if flow_run_id is not None:
        query = query.where(sa.or_(c.flow_run_id.is_(None), c.flow_run_id == flow_run_id))
    found = db.execute(
        query.values(status="running", owner=owner, lease_until=utcnow() + timedelta(seconds=lease_s),
                     updated_at=utcnow())
        .returning(c.row_ids)
    ).first()  # fmt: skip
    return None if found is None else list(found[0])


def renew_chunk(db: Db, *, campaign_id: uuid.UUID, seq: int, owner: str, lease_s: float) -> int:
    result = db.execute(
        sa.update(_CHUNKS)
        .where(_CHUNKS.c.campaign_id == campaign_id, _CHUNKS.c.seq == seq, _CHUNKS.c.owner == owner,
               _CHUNKS.c.status == "running")
        .values(lease_until=utcnow() + timedelta(seconds=lease_s))
    )  # fmt: skip
    return int(getattr(result, "rowcount", 0) or 0)


def end_chunk(db: Db, *, campaign_id: uuid.UUID, seq: int, status: str, owner: str | None = None) -> None:
    """The chunk is done (every row ended) or lost (its run ended without finishing it)."""
    query = sa.update(_CHUNKS).where(_CHUNKS.c.campaign_id == campaign_id, _CHUNKS.c.seq == seq)
    if owner is not None:
        query = query.where(_CHUNKS.c.owner == owner)
    db.execute(query.values(status=status, lease_until=None, updated_at=utcnow()))


def fail_rows(db: Db, *, campaign_id: uuid.UUID, row_ids: list[str], error: str) -> None:
    """End these rows failed unless they ended already (a chunk given up on)."""
    db.execute(
        sa.update(_VIDEOS)
        .where(
            _VIDEOS.c.campaign_id == campaign_id,
            _VIDEOS.c.row_id.in_(row_ids),
            _VIDEOS.c.status.not_in(TERMINAL),
        )
        .values(status=VideoStatus.failed.value, error=error, finished_at=utcnow(), updated_at=utcnow())
    )


def row_states(db: Db, *, campaign_id: uuid.UUID, since: datetime | None = None) -> dict[str, str]:
    """Each row's video status (rows never started have none); ``since``: only rows changed since then."""
    query = sa.select(_VIDEOS.c.row_id, _VIDEOS.c.status).where(_VIDEOS.c.campaign_id == campaign_id)
    if since is not None:
        query = query.where(_VIDEOS.c.updated_at >= since)
    rows = db.execute(query).all()
    return {r[0]: str(r[1].value if hasattr(r[1], "value") else r[1]) for r in rows if r[0]}


# ---- image variants --------------------------------------------------------------------------------


def record_image_variant(
    session: Session,
    *,
    actor_id: uuid.UUID,
    prompt: str,
    seed: int,
    provider: str,
    model: str,
    stage_key: str,
    image_key: str,
    image_hash: str,
    cost_usd: float,
) -> ImageVariant:
    """Idempotent per stage key: the same edit of the same portrait is one variant."""
    now = utcnow()
    ins = _insert(session, ImageVariant.__table__)  # type: ignore[arg-type]
    session.execute(
        ins.values(
            id=uuid.uuid4(),
            actor_id=actor_id,
            prompt=prompt,
            seed=seed,
            provider=provider,
            model=model,
            stage_key=stage_key,
            image_key=image_key,
            image_hash=image_hash,
            cost_usd=cost_usd,
            created_at=now,
            updated_at=now,
        ).on_conflict_do_nothing(index_elements=["stage_key"])
    )
    variant = session.scalars(sa.select(ImageVariant).where(ImageVariant.stage_key == stage_key)).one()
    return variant


def list_image_variants(session: Session, *, actor_key: str) -> Sequence[ImageVariant]:
    """An actor's variants, newest first (the sketch's GET …/image-variants?actorKey=, parameterised)."""
    stmt = (
        sa.select(ImageVariant)
        .join(Actor, Actor.id == ImageVariant.actor_id)
        .where(Actor.key == actor_key)
        .order_by(ImageVariant.created_at.desc(), ImageVariant.id)
    )
    return session.scalars(stmt).all()


def get_image_variant_by_stage_key(session: Session, *, stage_key: str) -> ImageVariant | None:
    return session.scalars(sa.select(ImageVariant).where(ImageVariant.stage_key == stage_key)).one_or_none()


def get_image_variant(session: Session, *, variant_id: str) -> ImageVariant | None:
    try:
        vid = uuid.UUID(variant_id)
    except ValueError:
        return None
    return session.get(ImageVariant, vid)


# ---- videos -----------------------------------------------------------------------------------------


def upsert_video(session: Db, *, request_key: str, values: dict[str, Any]) -> uuid.UUID:
    """Create the video row for ``request_key`` or update it; idempotent per request key. Returns its id."""
    names = tuple(sorted(values))

    def build() -> Any:
        ins = _insert(session, _VIDEOS)
        return ins.on_conflict_do_update(
            index_elements=["request_key"],
            set_={name: ins.excluded[name] for name in (*names, "updated_at")},
        ).returning(_VIDEOS.c.id)

    now = utcnow()
    params = {"id": uuid.uuid4(), "request_key": request_key, "created_at": now, "updated_at": now, **values}
    found = session.execute(_prebuilt(session, "upsert_video", build, *names), params).scalar_one()
    return uuid.UUID(str(found))


def get_video(session: Session, *, request_key: str) -> Video | None:
    return session.scalars(sa.select(Video).where(Video.request_key == request_key)).one_or_none()


def finish_video(
    session: Db, *, request_key: str, status: VideoStatus, finished_at: datetime, **values: Any
) -> uuid.UUID | None:
    """Write the video's final state; returns its id (None when there is no such video)."""
    found = session.execute(
        sa.update(_VIDEOS)
        .where(_VIDEOS.c.request_key == request_key)
        .values(status=status, finished_at=finished_at, updated_at=utcnow(), **values)
        .returning(_VIDEOS.c.id)
    ).scalar_one_or_none()
    return None if found is None else uuid.UUID(str(found))


IntegrityError = sa_exc.IntegrityError


# ---- campaigns --------------------------------------------------------------------------------------


def open_campaign(
    session: Session, *, name: str, sheet_name: str, sheet_hash: str, budget_usd: float | None
) -> tuple[Campaign, bool]:
    """The campaign of (name, sheet content), created if new; returns it and whether it existed."""
    query = sa.select(Campaign).where(Campaign.name == name, Campaign.sheet_hash == sheet_hash)
    found = session.scalars(query).one_or_none()
    if found is not None:
        return found, True
    now = utcnow()
    ins = _insert(session, Campaign.__table__)  # type: ignore[arg-type]
    session.execute(
        ins.values(
            id=uuid.uuid4(),
            name=name,
            sheet_name=sheet_name,
            sheet_hash=sheet_hash,
            status=CampaignStatus.pending.value,
            settings={},
            totals={},
            budget_usd=budget_usd,
            created_at=now,
            updated_at=now,
        ).on_conflict_do_nothing(index_elements=["name", "sheet_hash"])
    )
    return session.scalars(query).one(), False


def campaign_by_hash(session: Session, *, sheet_hash: str) -> Campaign | None:
    """The first campaign run from a sheet with this content (under any name)."""
    return session.scalars(
        sa.select(Campaign).where(Campaign.sheet_hash == sheet_hash).order_by(Campaign.created_at).limit(1)
    ).one_or_none()


def get_campaign(session: Session, *, name: str) -> Campaign | None:
    """The newest campaign called ``name`` (a name may have run several sheets)."""
    return session.scalars(
        sa.select(Campaign).where(Campaign.name == name).order_by(Campaign.created_at.desc()).limit(1)
    ).one_or_none()


def update_campaign(session: Session, *, campaign_id: uuid.UUID, **values: Any) -> None:
    session.execute(
        sa.update(Campaign).where(Campaign.id == campaign_id).values(updated_at=utcnow(), **values)
    )


def campaign_videos(session: Session, *, campaign_id: uuid.UUID) -> Sequence[Video]:
    """The campaign's videos, by row id."""
    return session.scalars(
        sa.select(Video).where(Video.campaign_id == campaign_id).order_by(Video.row_id)
    ).all()


def find_campaign(session: Session, *, name_or_id: str) -> Campaign | None:
    """The campaign with this id, or the latest one with this name."""
    query = sa.select(Campaign)
    try:
        query = query.where(Campaign.id == uuid.UUID(name_or_id))
    except ValueError:
        query = query.where(Campaign.name == name_or_id).order_by(Campaign.created_at.desc()).limit(1)
    return session.scalars(query).first()


def campaign_names(session: Session) -> list[str]:
    return sorted(set(session.scalars(sa.select(Campaign.name))))


def campaign_stage_links(
    session: Session, *, campaign_id: uuid.UUID
) -> list[tuple[VideoStage, str | None, str, StageRun | None]]:
    """Each stage a video of the campaign used: (the link, the row id, the actor, its stage run if any)."""
    rows = session.execute(
        sa.select(VideoStage, Video.row_id, Video.actor_key, StageRun)
        .join(Video, Video.id == VideoStage.video_id)
        .outerjoin(StageRun, StageRun.stage_key == VideoStage.stage_key)
        .where(Video.campaign_id == campaign_id)
    )
    return [(link, row_id, actor, run) for link, row_id, actor, run in rows]


# ---- webhook events ---------------------------------------------------------------------------------


def record_webhook_event(
    session: Session,
    *,
    provider: str,
    delivery_id: str,
    request_id: str,
    status: WebhookStatus | str,
    error: str | None,
    payload: dict[str, Any] | None,
) -> WebhookEvent | None:
    """Store a verified delivery; None (and nothing written) when (provider, delivery_id) is already stored."""
    ins = _insert(session, WebhookEvent.__table__)  # type: ignore[arg-type]
    stmt = (
        ins.values(
            id=uuid.uuid4(),
            provider=provider,
            delivery_id=delivery_id,
            request_id=request_id,
            status=WebhookStatus(status).value,
            error=error[:4000] if error is not None else None,
            payload=payload,
            received_at=utcnow(),
        )
        .on_conflict_do_nothing(index_elements=["provider", "delivery_id"])
        .returning(WebhookEvent.__table__.c.id)
    )
    new_id = session.execute(stmt).scalar_one_or_none()
    return None if new_id is None else session.get(WebhookEvent, new_id)


def find_webhook_completion(session: Session, *, provider: str, request_id: str) -> WebhookEvent | None:
    """The first recorded completion of a provider job (one indexed lookup), or None."""
    stmt = (
        sa.select(WebhookEvent)
        .where(WebhookEvent.request_id == request_id, WebhookEvent.provider == provider)
        .order_by(WebhookEvent.received_at, WebhookEvent.id)
        .limit(1)
    )
    return session.scalars(stmt).first()


def link_video_stages(
    session: Db, *, video_id: uuid.UUID, links: Sequence[tuple[str, str, bool, float]]
) -> None:
    """Record which stages a video used: (stage, stage key, reused, cost paid) each, one row per video
    and stage. A rerun that reused a stage keeps what the first attempt recorded (and paid)."""
    now = utcnow()

    def build(reused: bool) -> Any:
        ins = _insert(session, VideoStage.__table__)  # type: ignore[arg-type]
        if reused:  # a rerun that reused a stage keeps what the first attempt recorded
            return ins.on_conflict_do_nothing(index_elements=["video_id", "stage"])
        return ins.on_conflict_do_update(
            index_elements=["video_id", "stage"],
            set_={name: ins.excluded[name] for name in ("stage_key", "reused", "cost_usd")},
        )

    for reused in (True, False):  # one statement each for the reused and the paid stages
        rows = [
            {"id": uuid.uuid4(), "video_id": video_id, "stage": stage, "created_at": now,
             "stage_key": stage_key, "reused": reused, "cost_usd": cost_usd}
            for stage, stage_key, was_reused, cost_usd in links
            if was_reused is reused
        ]  # fmt: skip
        if rows:
            stmt = _prebuilt(session, "link_video_stages", functools.partial(build, reused), str(reused))
            session.execute(stmt, rows)


def record_approvals(
    session: Session, *, campaign_id: uuid.UUID, decisions: dict[str, tuple[str, str]], source: str
) -> None:
    """Each row's decision (``row_id -> (approved|rejected, reason)``), replacing an earlier one."""
    if not decisions:
        return
    now = utcnow()
    table = Approval.__table__
    ins = _insert(session, table)  # type: ignore[arg-type]
    rows = [
        {"id": uuid.uuid4(), "campaign_id": campaign_id, "row_id": row_id, "decision": decision,
         "reason": reason or None, "source": source, "decided_at": now}
        for row_id, (decision, reason) in decisions.items()
    ]  # fmt: skip
    stmt = ins.values(rows)
    session.execute(
        stmt.on_conflict_do_update(
            index_elements=["campaign_id", "row_id"],
            set_={
                "decision": stmt.excluded.decision,
                "reason": stmt.excluded.reason,
                "source": stmt.excluded.source,
                "decided_at": stmt.excluded.decided_at,
            },
        )
    )


def approvals(session: Session, *, campaign_id: uuid.UUID) -> dict[str, str]:
    """``row_id -> decision`` of a campaign's decided rows."""
    query = sa.select(Approval.row_id, Approval.decision).where(Approval.campaign_id == campaign_id)
    return dict(session.execute(query).all())


def record_take(
    session: Session,
    *,
    campaign_id: uuid.UUID,
    row_id: str,
    stage: str,
    seed: int,
    reason: str,
    kept_key: str | None,
) -> None:
    session.add(
        Take(
            campaign_id=campaign_id,
            row_id=row_id,
            stage=stage,
            seed=seed,
            reason=reason[:500],
            kept_key=kept_key,
        )
    )


def takes(session: Session, *, campaign_id: uuid.UUID) -> dict[str, dict[str, int]]:
    """``row_id -> {stage: seed}``: each row's newest take of each stage re-rolled."""
    found: dict[str, dict[str, int]] = {}
    query = sa.select(Take.row_id, Take.stage, Take.seed).where(Take.campaign_id == campaign_id)
    for row_id, stage, seed in session.execute(query.order_by(Take.created_at)).all():
        found.setdefault(row_id, {})[stage] = seed
    return found


def row_takes(session: Session, *, campaign_id: uuid.UUID, row_id: str) -> Sequence[Take]:
    query = sa.select(Take).where(Take.campaign_id == campaign_id, Take.row_id == row_id)
    return session.scalars(query.order_by(Take.created_at)).all()


def settle_takes(
    session: Session, *, campaign_id: uuid.UUID, row_id: str, made: dict[str, tuple[str, float]]
) -> None:
    """The row's takes not yet made, now made: ``stage -> (stage key, cost)``."""
    for take in row_takes(session, campaign_id=campaign_id, row_id=row_id):
        if take.stage_key is None and take.stage in made:
            take.stage_key, take.cost_usd = made[take.stage]


def reset_video(session: Session, *, campaign_id: uuid.UUID, row_id: str) -> None:
    """The row's video to make again (a new take): the next run of the campaign renders it."""
    session.execute(
        sa.update(Video)
        .where(Video.campaign_id == campaign_id, Video.row_id == row_id)
        .values(status=VideoStatus.pending, updated_at=utcnow())
    )
