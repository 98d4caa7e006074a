"""A campaign's budget shared by every process that runs its rows: holds in the database, spend from the
ledger, and a cap no number of racing workers can cross."""

from __future__ import annotations

import multiprocessing
import time
import uuid

import pytest
import sqlalchemy as sa

from castflow import claims
from castflow.db import queries
from castflow.db.session import get_engine, make_engine
from castflow.db.tables import StageStatus, utcnow

CAP = 10.0
SPENT_BEFORE = 7.0
PRICE = 0.25  # one stage's cost: (CAP - SPENT_BEFORE) / PRICE = 12 stages fit


def _campaign(url: str, cap: float | None = CAP, spent: float = SPENT_BEFORE) -> uuid.UUID:
    """A campaign with a budget whose ledger already holds ``spent`` (a job of an earlier run)."""
    engine = make_engine(url)
    with engine.begin() as c:
        campaign = queries._CAMPAIGNS
        cid = uuid.uuid4()
        now = utcnow()
        c.execute(
            sa.insert(campaign).values(
                id=cid, name="race", sheet_name="race.csv", sheet_hash=uuid.uuid4().hex,
                status="running", settings={}, totals={}, budget_usd=cap, created_at=now, updated_at=now,
            )
        )  # fmt: skip
        if spent:
            _paid(c, cid, spent)
    engine.dispose()
    return cid


def _paid(c: sa.Connection, campaign_id: uuid.UUID, cost: float) -> None:
    """A stage job the campaign paid for, as the pipeline records it when it succeeds."""
    now = utcnow()
    c.execute(
        sa.insert(queries._STAGE_RUNS).values(
            id=uuid.uuid4(), stage_key=uuid.uuid4().hex, stage="lipsync", provider="wavespeed", model="m",
            status=StageStatus.succeeded.value, attempts=1, billed_units=1.0, cost_usd=cost, meta={},
            campaign_id=campaign_id, created_at=now, updated_at=now,
        )
    )  # fmt: skip


def _worker(url: str, campaign_id: str, name: str, start_at: float) -> int:
    """One worker: hold the price of a stage, pay it (the ledger records the job), drop the hold; again
    until the budget refuses. Returns the stages it paid for."""
    engine = make_engine(url)
    cid = uuid.UUID(campaign_id)
    owner = str(claims.me())
    paid = 0
    time.sleep(max(0.0, start_at - time.time()))
    for n in range(100):
        holder = f"{name}-{n}"
        with engine.begin() as c:
            ok = queries.hold_budget(c, campaign_id=cid, holder=holder, amount=PRICE, owner=owner, fresh=True)
        if not ok:
            break
        with engine.begin() as c:
            _paid(c, cid, PRICE)
        with engine.begin() as c:
            queries.release_budget(c, campaign_id=cid, holder=holder)
        paid += 1
    engine.dispose()
    return paid


def test_workers_racing_for_the_last_dollars_never_cross_the_cap(db_url: str) -> None:
    """Six processes spend a campaign's last $3 in $0.25 stages at the same instant: together they pay
    for exactly 12 stages and the ledger ends at the cap, never over it."""
    cid = _campaign(db_url)
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(6) as pool:
        pool.apply(time.sleep, (0,))  # every worker is up before the start
        start_at = time.time() + 0.5
        paid = pool.starmap(_worker, [(db_url, str(cid), f"w{i}", start_at) for i in range(6)])
    engine = get_engine(db_url)
    with engine.begin() as c:
        limit, spent, held = queries.budget_state(c, campaign_id=cid)
    assert limit == CAP
    assert sum(paid) == round((CAP - SPENT_BEFORE) / PRICE), paid
    assert spent == pytest.approx(CAP)
    assert held == 0.0


def _hold_once(url: str, campaign_id: str, holder: str, start_at: float) -> bool:
    engine = make_engine(url)
    with engine.connect() as c:  # connected before the start: only the statements race
        c.rollback()
        time.sleep(max(0.0, start_at - time.time()))
        with c.begin():
            ok = queries.hold_budget(
                c, campaign_id=uuid.UUID(campaign_id), holder=holder, amount=1.0, owner=holder, fresh=True
            )
    engine.dispose()
    return ok


def test_eight_holds_at_the_same_instant_for_three_dollars_get_three(db_url: str) -> None:
    """The tightest race: eight processes ask for $1 each at the same instant with $3 left, five
    times over; each time exactly three get it."""
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(8) as pool:
        pool.apply(time.sleep, (0,))
        for _ in range(5):
            cid = _campaign(db_url)
            start_at = time.time() + 0.5
            won = pool.starmap(_hold_once, [(db_url, str(cid), f"w{i}", start_at) for i in range(8)])
            assert sum(won) == 3, won


def test_a_hold_counts_until_released_and_a_restarted_row_replaces_its_own(db_url: str) -> None:
    cid = _campaign(db_url)
    engine = get_engine(db_url)
    me = str(claims.me())

    def hold(holder: str, amount: float, fresh: bool = False) -> bool:
        with engine.begin() as c:
            return queries.hold_budget(
                c, campaign_id=cid, holder=holder, amount=amount, owner=me, fresh=fresh
            )

    assert hold("row-1", 2.0, fresh=True)
    assert not hold("row-2", 1.5, fresh=True)  # 7 spent + 2 held + 1.5 > 10
    assert hold("row-2", 1.0, fresh=True)  # exactly at the cap
    assert not hold("row-1", 0.01)  # more for row 1: over
    # Row 1's worker died; the row starts again and its new hold replaces the old one.
    assert hold("row-1", 1.5, fresh=True)
    with engine.begin() as c:
        assert queries.budget_state(c, campaign_id=cid) == (CAP, SPENT_BEFORE, 2.5)
        queries.release_budget(c, campaign_id=cid, holder="row-1")
        assert queries.budget_state(c, campaign_id=cid)[2] == 1.0
    # No budget: every hold is granted and nothing is recorded.
    free = _campaign(db_url, cap=None)
    with engine.begin() as c:
        assert queries.hold_budget(c, campaign_id=free, holder="r", amount=1e9, owner=me)
        assert queries.budget_holders(c, campaign_id=free) == []


def test_a_dead_processs_holds_are_released_when_the_campaign_opens_again(db_url: str) -> None:
    from castflow.budget import LedgerBudget

    cid = _campaign(db_url)
    engine = get_engine(db_url)
    gone = str(claims.Owner(claims.me().host, 4_099_999, "1", "x"))  # no such process
    elsewhere = str(claims.Owner("another-machine", 1234, "1", "x"))
    with engine.begin() as c:
        assert queries.hold_budget(c, campaign_id=cid, holder="a", amount=1.0, owner=gone)
        assert queries.hold_budget(c, campaign_id=cid, holder="b", amount=1.0, owner=elsewhere)

    class _Rt:  # the runtime surface LedgerBudget and release_dead_holds use
        def db(self, fn, *, what: str = "", retry_s: float | None = None):  # type: ignore[no-untyped-def]
            with engine.begin() as c:
                return fn(c)

    from castflow.campaigns import release_dead_holds

    assert release_dead_holds(_Rt(), cid) == 1  # type: ignore[arg-type]
    with engine.begin() as c:
        assert [h for h, _ in queries.budget_holders(c, campaign_id=cid)] == ["b"]
    budget = LedgerBudget(_Rt(), cid, CAP)  # type: ignore[arg-type]
    assert budget.reserve(1.0, holder="c", fresh=True)
    assert not budget.reserve(1.01, holder="d", fresh=True)  # 7 + 1 (b) + 1 (c) + 1.01
    budget.settle(1.0, 0.0, holder="c")
    assert budget.reserve(1.0, holder="d", fresh=True)
