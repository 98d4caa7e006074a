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
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import pool_harness

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
