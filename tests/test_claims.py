"""Never pay twice, part by part: atomic claims on SQLite and PostgreSQL, owners that live or die, the
submit journal, and transactions that outlast a database blink."""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import sqlalchemy as sa

from castflow import claims
from castflow.db import migrate, queries
from castflow.db.retry import DatabaseUnavailable, is_transient, run_tx
from castflow.db.session import get_engine, make_engine
from castflow.db.tables import StageStatus
from castflow.journal import Journal, read_entries, reconcile


def _free_pid() -> int:
    return next(pid for pid in range(4_000_000, 4_100_000) if not os.path.exists(f"/proc/{pid}"))


# ---- owners ----------------------------------------------------------------------------------------


def test_an_owner_is_alive_while_its_process_runs_and_dead_once_it_is_gone() -> None:
    me = claims.me()
    assert not claims.is_dead(str(me))
    assert claims.Owner.parse(str(me)) == me
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        ticks = claims._start_ticks(child.pid)
        assert ticks is not None
        live = str(claims.Owner(me.host, child.pid, ticks, "x"))
        assert not claims.is_dead(live)
        # The same pid with another start time is a reused pid: its owner is gone.
        assert claims.is_dead(str(claims.Owner(me.host, child.pid, str(int(ticks) + 1), "x")))
    finally:
        child.kill()
        child.wait()
    assert claims.is_dead(live)
    assert claims.is_dead(str(claims.Owner(me.host, _free_pid(), "1", "x")))
    # This very process under another nonce (an earlier runtime of a reused pid): gone.
    assert claims.is_dead(str(claims.Owner(me.host, me.pid, me.start, "other")))
    # Another machine cannot be inspected: only its lease tells.
    assert not claims.is_dead(str(claims.Owner("elsewhere", _free_pid(), "1", "x")))
    assert claims.is_dead("garbage")


def test_the_lease_keeper_renews_only_claims_held_now() -> None:
    renewed: list[list[str]] = []
    keeper = claims.LeaseKeeper(lambda keys: renewed.append(sorted(keys)), lease_s=0.15)
    with keeper.hold("a"), keeper.hold("b"):
        time.sleep(0.3)
    time.sleep(0.15)
    count = len(renewed)
    time.sleep(0.2)
    keeper.stop()
    assert ["a", "b"] in renewed
    assert len(renewed) == count  # nothing held: nothing renewed


# ---- atomic claims ---------------------------------------------------------------------------------


def _claim(url: str, owner: str, start_at: float, key: str) -> bool:
    engine = make_engine(url)
    time.sleep(max(0.0, start_at - time.time()))
    with engine.begin() as c:
        got = queries.claim_stage_run(
            c,
            stage_key=key,
            stage="lipsync",
            provider="wavespeed",
            model="m",
            meta={},
            owner=owner,
            lease_s=60,
        )
    engine.dispose()
    return got is not None


def test_processes_claiming_one_stage_at_the_same_instant_get_one_claim(db_url: str) -> None:
    """Eight processes race for each of five stages: every stage is claimed by exactly one."""
    ctx = multiprocessing.get_context("spawn")
    host = claims.me().host
    with ctx.Pool(8) as pool:
        pool.apply(time.sleep, (0,))  # the workers are up before the start signal is set
        for n in range(5):
            key = f"race-{n}-{uuid.uuid4().hex[:8]}"
            start_at = time.time() + 0.5
            args = [(db_url, f"{host}:{os.getpid()}:1:w{i}", start_at, key) for i in range(8)]
            won = pool.starmap(_claim, args)
            assert sum(won) == 1, won


def test_claim_rules(db_url: str) -> None:
    engine = get_engine(db_url)
    host = claims.me().host
    a, b = f"{host}:1:1:a", f"{host}:2:1:b"

    def claim(owner: str, key: str = "k", **kw: object) -> queries.Claim | None:
        with engine.begin() as c:
            return queries.claim_stage_run(  # type: ignore[no-any-return]
                c, stage_key=key, stage="speech", provider="fal", model="m", meta={}, owner=owner, **kw
            )

    def state(key: str = "k") -> sa.Row[object]:
        with engine.begin() as c:
            return queries.stage_run_state(c, stage_key=key)  # type: ignore[no-any-return]

    assert claim(a, lease_s=60) == queries.Claim(None)
    assert claim(b, lease_s=60) is None  # held: a's lease runs
    assert claim(a, lease_s=60) is not None  # its own claim again (a retried transaction)
    assert claim(b, lease_s=60, stale_owner=a) is not None  # b saw that a is dead
    assert state().owner == b
    with engine.begin() as c:  # b records its job, then its lease lapses
        queries.set_request_id(c, stage_key="k", request_id="job-1")
        c.execute(sa.text("UPDATE stage_run SET lease_until = :t"), {"t": queries.utcnow()})
    assert claim(a, lease_s=60) == queries.Claim("job-1")  # taken over: re-attach to job-1
    with engine.begin() as c:
        queries.fail_stage_run(c, stage_key="k", error="boom")
    assert claim(b, lease_s=60) == queries.Claim(None)  # a failed run's job is not re-attached to
    # A send in flight (intent, no request id) is never claimed blindly, whoever asks.
    with engine.begin() as c:
        queries.mark_sending(c, stage_key="k", owner=b)
    assert claim(a, lease_s=60, stale_owner=b) is None
    assert claim(b, lease_s=60) is None
    with engine.begin() as c:
        assert queries.mark_stage_unknown(c, stage_key="k", error="answer lost")
    assert state().status is StageStatus.unknown
    assert claim(a, lease_s=60) is None
    with engine.begin() as c:  # the lost answer's id turns up: running again, re-attachable
        queries.set_request_id(c, stage_key="k", request_id="job-2")
    assert state().status is StageStatus.running
    assert claim(a, lease_s=60) == queries.Claim("job-2")


# ---- journal ---------------------------------------------------------------------------------------


def test_the_journal_keeps_request_ids_and_a_later_process_reconciles_a_dead_owners(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path / 'j.db'}"
    engine = get_engine(url)
    migrate.upgrade(engine)
    dead = str(claims.Owner(claims.me().host, _free_pid(), "1", "dead"))
    live = str(claims.me())
    with engine.begin() as c:  # the dead owner sent three submits; the database never got their ids
        for key, owner in (("k1", dead), ("k2", dead), ("k4", live)):
            assert queries.claim_stage_run(
                c, stage_key=key, stage="lipsync", provider="wavespeed", model="m", meta={}, owner=owner,
                lease_s=60,
            )  # fmt: skip
            queries.mark_sending(c, stage_key=key, owner=owner)
    folder = tmp_path / "journal"
    folder.mkdir()
    now = time.time()
    lines = [
        json.dumps({"owner": dead}),
        json.dumps({"stage_key": "k1", "request_id": "job-8", "provider": "w", "ts": now - 5}),
        json.dumps({"stage_key": "k1", "request_id": "job-9", "provider": "w", "ts": now}),  # the last wins
        # An answer older than k2's send is an earlier attempt's job: never adopted for this send.
        json.dumps({"stage_key": "k2", "request_id": "job-old", "provider": "w", "ts": now - 100}),
        # k4 is a live process's send now: a dead process's old line must not touch it.
        json.dumps({"stage_key": "k4", "request_id": "job-x", "provider": "w", "ts": now}),
    ]
    (folder / f"{dead}.jsonl").write_bytes(
        ("\n".join(lines) + "\n").encode() + b'{"stage_key": "k2", "req' + b"\0" * 64
    )
    owner, entries = read_entries(folder / f"{dead}.jsonl")
    assert owner == dead
    assert [e["request_id"] for e in entries] == ["job-8", "job-9", "job-old", "job-x"]

    def apply(_owner: str, found: list[dict[str, object]]) -> None:
        with engine.begin() as c:
            queries.apply_journal(c, owner=_owner, entries=found)  # type: ignore[arg-type]

    assert reconcile(tmp_path, apply) == 4
    assert not (folder / f"{dead}.jsonl").exists()
    with engine.begin() as c:
        run, old, other = (queries.stage_run_state(c, stage_key=k) for k in ("k1", "k2", "k4"))
    assert (run.status, run.request_id, run.owner) == (StageStatus.running, "job-9", None)
    assert (old.request_id, old.owner) == (None, dead)
    assert (other.request_id, other.owner) == (None, live)

    journal = Journal(tmp_path)  # this process's own: preallocated, synced, found again
    journal.record(stage_key="k3", request_id="job-3", provider="fal")
    mine = folder / f"{claims.me()}.jsonl"
    assert mine.stat().st_size >= 1 << 20
    owner, entries = read_entries(mine)
    assert owner == str(claims.me())
    assert [(e["stage_key"], e["request_id"], e["provider"]) for e in entries] == [("k3", "job-3", "fal")]
    assert journal.find("k3") == "job-3"
    assert reconcile(tmp_path, apply) == 0  # a live owner's file is left alone
    journal.forget("k3")
    journal.close()
    assert not mine.exists()  # every id reached the database: nothing left to keep


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "disk"
    mount.mkdir()
    command = ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)]
    done = subprocess.run(command, check=False, capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill(path: Path) -> None:
    with open(path, "wb", buffering=0) as fh:
        while True:
            fh.write(b"\0" * (1 << 16))


def test_the_journal_still_takes_request_ids_on_a_full_disk(small_disk: Path) -> None:
    journal = Journal(small_disk)
    journal.check()  # opened (and preallocated) before the disk fills up
    with pytest.raises(OSError, match="No space left"):
        _fill(small_disk / "filler")
    for n in range(200):
        journal.record(stage_key=f"k{n}", request_id=f"job-{n}", provider="fal")
    _owner, entries = read_entries(small_disk / "journal" / f"{claims.me()}.jsonl")
    assert [e["request_id"] for e in entries] == [f"job-{n}" for n in range(200)]


# ---- database blinks -------------------------------------------------------------------------------


def test_a_transaction_outlasts_its_connection_being_killed(pg_url: str, pg_admin_url: str) -> None:
    engine = get_engine(pg_url)
    migrate.upgrade(engine)
    with engine.connect() as c:
        pid = c.execute(sa.text("SELECT pg_backend_pid()")).scalar_one()
    calls = {"n": 0}

    def work(c: sa.Connection) -> int:
        calls["n"] += 1
        if calls["n"] == 1:  # the server drops this very connection mid-transaction
            with psycopg.connect(pg_admin_url, autocommit=True) as admin:
                admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE pid = %s", (pid,))
        return int(c.execute(sa.text("SELECT 1")).scalar_one())

    assert run_tx(engine, work, retry_s=10) == 1
    assert calls["n"] == 2


def test_a_database_that_stays_down_fails_in_one_line_naming_it_without_the_password() -> None:
    engine = make_engine("postgresql+psycopg://castflow:hunter2secret@127.0.0.1:9/db?connect_timeout=1")
    started = time.monotonic()
    with pytest.raises(DatabaseUnavailable) as failed:
        run_tx(engine, lambda c: c.execute(sa.text("SELECT 1")), retry_s=1.5, what="testing")
    assert 1.5 <= time.monotonic() - started < 8
    text = str(failed.value)
    assert "127.0.0.1:9/db" in text
    assert "hunter2secret" not in text
    assert "\n" not in text
    assert "unreachable for 2 s" in text or "unreachable for 1 s" in text


def test_statement_errors_are_not_waited_out(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'x.db'}")
    with pytest.raises(sa.exc.OperationalError) as failed:
        run_tx(engine, lambda c: c.execute(sa.text("SELECT * FROM no_such_table")), retry_s=30)
    assert not is_transient(failed.value)
