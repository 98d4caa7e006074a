"""One campaign across two real workers of a Prefect process work pool, one of them killed mid-run.

Started by the test (bench/pool_harness.py): a Prefect server on PostgreSQL (its own database),
castflow's database on PostgreSQL, the provider fakes in their own process, the work pool with
castflow's deployments (`prefect deploy --all`) and two `prefect worker start` processes. The campaign
runs from the CLI (`castflow campaign run --pool`); one worker and every process under it are SIGKILLed
while they hold chunks, as when a machine is lost.
"""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import pool_harness

from castflow.db import queries

ROWS = 200
SCENES = ["in a sunny kitchen", "on a city street at dusk", "in a cozy living room", "at a beach cafe"]
ACTORS = ["maya", "leo", "ava"]


def _sheet(path: Path) -> Path:
    lines = ["row_id,actor,script,scene,resolution"]
    for i in range(ROWS):
        script = f"Take {i}: this serum changed my mornings, and number {i} is why I keep it."
        lines.append(f'r{i:04d},{ACTORS[i % 3]},"{script}",{SCENES[(i // 3) % 4]},480p')
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.mark.timeout(1500)
def test_a_campaign_on_two_workers_finishes_every_row_after_one_is_killed(
    tmp_path: Path, pg_admin_url: str
) -> None:
    settings = {
        "CASTFLOW_CAMPAIGN__CHUNK_ROWS": "20",
        "CASTFLOW_CAMPAIGN__ROW_CONCURRENCY": "6",
        "CASTFLOW_CAMPAIGN__FOLLOW_S": "1",
        "CASTFLOW_PIPELINE__CLAIM_LEASE_S": "8",  # a lost chunk is noticed within seconds
        "CASTFLOW_CAMPAIGN__PROVIDER_LIMITS": '{"fal": 6, "wavespeed": 4, "local": 2, "upload": 4}',
    }
    fakes = ["--fal-concurrency", "6", "--wavespeed-concurrency", "4", "--edit-seconds", "0.3",
             "--tts-seconds", "0.1", "--lipsync-seconds-per-audio-second", "0.1"]  # fmt: skip
    with pool_harness.team(tmp_path, pg_admin_url, fakes_args=fakes, env=settings) as team:
        sheet = _sheet(tmp_path / "scale.csv")
        estimate = team.castflow("campaign", "run", str(sheet), "--dry-run")
        assert estimate.returncode == 0, estimate.stderr[-2000:]
        dollars = float(re.search(r"estimate: \$([0-9.]+)", estimate.stdout).group(1))  # type: ignore[union-attr]
        budget = round(dollars * 1.1 + 0.01, 2)
        doomed = team.start_worker("worker-1", limit=2)
        team.start_worker("worker-2", limit=2)
        parent_log = open(tmp_path / "campaign.log", "w")  # noqa: SIM115 - closed below
        parent = subprocess.Popen(
            [sys.executable, "-m", "castflow", "campaign", "run", str(sheet), "--name", "scale",
             "--pool", pool_harness.POOL, "--budget", str(budget)],
            env=team.env, cwd=tmp_path, stdout=parent_log, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        engine = team.db()
        try:

            def holding() -> list[int] | None:
                """The chunks worker-1's processes run now, once some rows have ended."""
                with engine.connect() as c:
                    done = c.execute(
                        sa.text("SELECT count(*) FROM video WHERE status = 'succeeded'")
                    ).scalar()
                under = pool_harness.descendants(doomed.pid)
                mine = [seq for pid, seq in pool_harness.chunk_owner_pids(engine).items() if pid in under]
                return mine if mine and (done or 0) >= 10 else None

            held = pool_harness.wait_for(holding, 600, "worker-1 to hold chunks")
            killed = pool_harness.kill_tree(doomed)
            assert parent.wait(timeout=1200) == 0, (tmp_path / "campaign.log").read_text()[-4000:]
        finally:
            if parent.poll() is None:
                parent.kill()
            parent_log.close()
        said = (tmp_path / "campaign.log").read_text()
        with engine.connect() as c:
            statuses = dict(
                c.execute(sa.text("SELECT status, count(*) FROM video GROUP BY status")).all()  # type: ignore[arg-type]
            )
            chunks = c.execute(sa.text("SELECT seq, status, attempts, flow_run_id FROM campaign_chunk")).all()
            spent = c.execute(
                sa.text("SELECT coalesce(sum(cost_usd), 0) FROM stage_run WHERE status = 'succeeded'")
            ).scalar()
            holds = c.execute(sa.text("SELECT count(*) FROM budget_hold")).scalar()
            paid_stages = c.execute(
                sa.text(
                    "SELECT count(*) FROM stage_run WHERE status = 'succeeded' AND provider IN ('fal', 'wavespeed')"
                )
            ).scalar()
        engine.dispose()
        # Every row ended, and succeeded.
        assert statuses == {"succeeded": ROWS}, (statuses, said[-3000:])
        assert f"scale: {ROWS} succeeded, 0 failed, 0 skipped" in said, said[-3000:]
        # Nothing paid twice: one job per paid stage, no request sent twice.
        jobs = team.jobs()
        assert team.paid_twice() == []
        assert len(jobs) == paid_stages, (len(jobs), paid_stages)
        # The budget was never crossed, and nothing holds any of it now.
        assert 0 < float(spent) <= budget, (spent, budget)  # type: ignore[arg-type]
        assert holds == 0
        # The chunks worker-1 held were lost, started again and finished by worker-2 (worker-1 is gone).
        by_seq = {seq: (status, attempts, run) for seq, status, attempts, run in chunks}
        assert all(status == "done" for status, _, _ in by_seq.values()), by_seq
        for seq in held:
            _, attempts, run = by_seq[seq]
            assert attempts >= 2, (seq, by_seq[seq])
            state = httpx.get(f"{team.api}/flow_runs/{run}", timeout=10).json()["state"]["type"]
            assert state == "COMPLETED", (seq, state)
        assert doomed.poll() is not None
        assert killed
        assert all(f"chunk {seq} lost" in said for seq in held), said[-3000:]


# ---- the campaign's run and its chunks, in this process ----------------------------------------------


class _Pool:
    """Stands in for Prefect's deployment runs (the e2e test above uses the real ones): a dispatched
    chunk runs the campaign-chunk flow in a thread, unless told to crash (its run ends Crashed without
    running anything)."""

    def __init__(self, crash: dict[int, int]) -> None:
        self.crash = crash  # chunk -> how many of its first attempts crash
        self.states: dict[str, str] = {}
        self.dispatched: list[int] = []
        self.threads: list[threading.Thread] = []

    def dispatch(self, rt: object, deployment: str, campaign_id: object, name: str, seq: int,
                 base: dict[str, object]) -> str:  # fmt: skip
        from castflow.db import queries
        from flows.campaign_chunk import campaign_chunk

        run_id = str(uuid.uuid4())
        self.dispatched.append(seq)
        rt.db(lambda c: queries.dispatched_chunk(c, campaign_id=campaign_id, seq=seq, flow_run_id=run_id))  # type: ignore[attr-defined]
        if self.crash.get(seq, 0) > 0:
            self.crash[seq] -= 1
            self.states[run_id] = "CRASHED"
            return run_id
        self.states[run_id] = "RUNNING"

        def run() -> None:
            try:
                campaign_chunk(**{**base, "chunk": seq})  # type: ignore[arg-type]
                self.states[run_id] = "COMPLETED"
            except BaseException:
                self.states[run_id] = "FAILED"

        thread = threading.Thread(target=run, daemon=True)
        self.threads.append(thread)
        thread.start()
        return run_id

    def read(self, ids: object) -> dict[str, tuple[str, str]]:
        return {i: (self.states[i], "") for i in ids if i in self.states}  # type: ignore[attr-defined]


@pytest.fixture
def fake_pool(monkeypatch: pytest.MonkeyPatch) -> Callable[[dict[int, int]], _Pool]:
    import flows.campaign_chunk
    import flows.pool

    def make(crash: dict[int, int]) -> _Pool:
        pool = _Pool(crash)
        monkeypatch.setattr(flows.pool, "_chunk_deployment", lambda deployment, pool_name: deployment)
        monkeypatch.setattr(flows.pool, "_global_limits", lambda rt: "")
        monkeypatch.setattr(flows.pool, "_dispatch", pool.dispatch)
        monkeypatch.setattr(flows.pool, "_flow_run_states", pool.read)
        monkeypatch.setattr(flows.pool, "_mark_crashed", lambda run_id, message: None)
        monkeypatch.setattr(flows.campaign_chunk, "_flow_run_id", lambda: None)
        return pool

    return make


SMALL = "row_id,actor,script,scene\n" + "".join(
    f"s{i},{ACTORS[i % 3]},Line {i} of the small campaign.,{SCENES[i % 2]}\n" for i in range(6)
)


def test_a_chunk_whose_run_crashed_is_started_again_and_its_rows_finish(
    rt: Any, tmp_path: Path, prefect_server: None, fake_pool: Callable[[dict[int, int]], _Pool],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    from castflow.actors import ensure_sample_actors
    from castflow.settings import reset_settings
    from flows.run_campaign import run_campaign

    monkeypatch.setenv("CASTFLOW_CAMPAIGN__CHUNK_ROWS", "2")
    monkeypatch.setenv("CASTFLOW_CAMPAIGN__FOLLOW_S", "0.2")
    reset_settings()
    ensure_sample_actors(rt)
    pool = fake_pool({1: 1})
    sheet = tmp_path / "small.csv"
    sheet.write_text(SMALL, encoding="utf-8")
    result = run_campaign(sheet=str(sheet), name="small", work_pool="test", budget_usd=5.0)
    assert (result.succeeded, result.failed, result.skipped) == (6, 0, 0), result.results
    assert sorted(pool.dispatched) == [0, 1, 1, 2]  # chunk 1's first run crashed: started once more
    with rt.connection() as c:
        chunks = {ch.seq: ch for ch in queries.read_chunks(c, campaign_id=uuid.UUID(result.campaign_id))}
        assert queries.budget_holders(c, campaign_id=uuid.UUID(result.campaign_id)) == []
    assert {s: (ch.status, ch.attempts) for s, ch in chunks.items()} == {
        0: ("done", 1),
        1: ("done", 2),
        2: ("done", 1),
    }
    # The manifest and the result are read from the ledger, as an in-process run writes them.
    with open(result.manifest_path or "", encoding="utf-8") as fh:
        assert fh.read().count("succeeded") == 6
    # A rerun resumes: every row finished, nothing dispatched.
    again = run_campaign(sheet=str(sheet), name="small", work_pool="test")
    assert (again.succeeded, again.resumed) == (6, True)
    assert sorted(pool.dispatched) == [0, 1, 1, 2]


def test_a_chunk_lost_every_time_ends_its_rows_failed_and_the_others_finish(
    rt: Any, tmp_path: Path, prefect_server: None, fake_pool: Callable[[dict[int, int]], _Pool],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    from castflow.actors import ensure_sample_actors
    from castflow.settings import reset_settings
    from flows.run_campaign import run_campaign

    monkeypatch.setenv("CASTFLOW_CAMPAIGN__CHUNK_ROWS", "3")
    monkeypatch.setenv("CASTFLOW_CAMPAIGN__CHUNK_ATTEMPTS", "2")
    monkeypatch.setenv("CASTFLOW_CAMPAIGN__FOLLOW_S", "0.2")
    reset_settings()
    ensure_sample_actors(rt)
    pool = fake_pool({0: 5})
    sheet = tmp_path / "small.csv"
    sheet.write_text(SMALL, encoding="utf-8")
    result = run_campaign(sheet=str(sheet), name="small-lost", work_pool="test")
    assert (result.succeeded, result.failed) == (3, 3), result.results
    failed = [r for r in result.results if r.status == "failed"]
    assert {r.row_id for r in failed} == {"s0", "s1", "s2"}
    assert all("chunk 0 was lost 2 time(s)" in (r.error or "") for r in failed), failed
    assert sorted(pool.dispatched) == [0, 0, 1]


def test_ctrl_c_on_a_pool_run_cancels_its_chunk_runs_and_a_rerun_resumes(
    rt: Any, tmp_path: Path, prefect_server: None, fake_pool: Callable[[dict[int, int]], _Pool],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """A stop request (Ctrl-C) while chunks wait for a worker: the run cancels their flow runs and ends
    Cancelled with what is left; run again, it makes every row."""
    import flows.pool
    from castflow import interrupt
    from castflow.actors import ensure_sample_actors
    from castflow.settings import reset_settings
    from flows.run_campaign import run_campaign

    monkeypatch.setenv("CASTFLOW_CAMPAIGN__CHUNK_ROWS", "3")
    monkeypatch.setenv("CASTFLOW_CAMPAIGN__FOLLOW_S", "0.2")
    reset_settings()
    ensure_sample_actors(rt)
    pool = fake_pool({})
    cancelled: list[str] = []

    def waiting(rt_: object, deployment: str, campaign_id: object, name: str, seq: int,
                base: dict[str, object]) -> str:  # fmt: skip
        run_id = f"waiting-{seq}-{uuid.uuid4().hex[:6]}"
        pool.states[run_id] = "SCHEDULED"  # no worker takes it
        if seq == 1:
            threading.Timer(1.0, interrupt.request_stop).start()
        return run_id

    monkeypatch.setattr(flows.pool, "_dispatch", waiting)
    monkeypatch.setattr(flows.pool, "_cancel", cancelled.append)
    sheet = tmp_path / "small.csv"
    sheet.write_text(SMALL, encoding="utf-8")
    try:
        state = run_campaign(sheet=str(sheet), name="small-stop", work_pool="test", return_state=True)
    finally:
        interrupt.reset()
    assert state.is_cancelled(), state
    assert "interrupted: 0 row(s) finished, 6 left to run" in (state.message or ""), state.message
    assert sorted(r.split("-")[1] for r in cancelled) == ["0", "1"]  # both chunk runs cancelled
    monkeypatch.setattr(flows.pool, "_dispatch", pool.dispatch)
    again = run_campaign(sheet=str(sheet), name="small-stop", work_pool="test")
    assert (again.succeeded, again.failed) == (6, 0), again.results
