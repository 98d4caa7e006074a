"""The campaign benchmark's smoke test: a small run of bench/campaign_bench.py (fakes in their own
process, a temporary Prefect server) must finish every row, pay once per unique stage and nothing on
the re-run. The full 1,000-row figures are reported in the README and the closing notes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench" / "campaign_bench.py"


@pytest.mark.timeout(600)
def test_small_benchmark_runs_and_pays_once(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CASTFLOW_", "PREFECT_"))}
    done = subprocess.run(
        [sys.executable, str(BENCH), "--rows", "12", "--row-concurrency", "8"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=540,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)
    assert (report["rows"], report["succeeded"], report["failed"], report["rerun_succeeded"]) == (
        12,
        12,
        0,
        12,
    )
    assert report["P3_paid_per_unique_stage"] == 1.0
    assert report["P3_rerun_paid_calls"] == 0
    assert report["paid_calls"] == report["unique_paid_stage_keys"] > 0
    assert report["makespan_s"] > report["ideal_lower_bound_s"] > 0
    assert report["trivial_task_cpu_s"] > 0
    assert report["P4_peak_rss_mb"] > 50


@pytest.mark.timeout(300)
def test_reading_sheets_stays_within_300_mb(tmp_path: Path) -> None:
    """The sheet benchmark's short form: 10,000 rows, the largest sheet the size limit accepts, and
    refused ones, each command's own peak RSS within 300 MB and the verdict right. (The 100,000-row
    figures, with the dry-run time, come from the full run: python bench/sheet_bench.py.)"""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CASTFLOW_", "PREFECT_"))}
    bench = BENCH.with_name("sheet_bench.py")
    done = subprocess.run(
        [sys.executable, str(bench), "--short"], cwd=tmp_path, env=env, capture_output=True, text=True,
        timeout=280, check=False,
    )  # fmt: skip
    report = json.loads(done.stdout)
    assert report["targets_met"], json.dumps(report, indent=2)
    assert done.returncode == 0
    assert len(report["results"]) == 8
    assert all(r["peak_rss_mb"] > 50 for r in report["results"].values())  # a real measure, not zero


@pytest.mark.timeout(600)
def test_small_scaleout_benchmark_runs_on_one_worker(tmp_path: Path, pg_admin_url: str) -> None:
    """bench/scaleout_bench.py in short: 20 rows on a work pool of one real worker (a Prefect server and
    castflow on PostgreSQL); its figures come from the server's access log and event table."""
    bench = BENCH.parent / "scaleout_bench.py"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CASTFLOW_", "PREFECT_"))}
    done = subprocess.run(
        [sys.executable, str(bench), "--rows", "20", "--finish-rows", "0", "--modes", "pool1",
         "--pg", pg_admin_url],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=540, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    (run,) = json.loads(done.stdout)["runs"]
    assert (run["mode"], run["rows"], run["succeeded"], run["paid_twice"]) == ("pool1", 20, 20, 0)
    assert run["prefect_api_calls"] > 0
    assert run["prefect_events"] > 0
    assert run["cpu_s"]["worker1"] > 0
    assert run["peak_rss_mb"]["worker1"] > 50
