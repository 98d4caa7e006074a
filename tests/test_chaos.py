"""The chaos suite's short version (bench/chaos.py --short): every scenario, every target."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.timeout(1500)
def test_the_short_chaos_suite_meets_every_target() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "chaos.py"), "--short"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1400,
        check=False,
    )
    start = done.stdout.find('{\n  "rows"')
    assert start >= 0, done.stdout[-3000:] + done.stderr[-3000:]
    report, _ = json.JSONDecoder().raw_decode(done.stdout[start:])
    totals = report["totals"]
    problems = {
        name: {
            k: s[k]
            for k in ("rows", "jobs_per_unique_stage", "unrecorded_jobs", "stuck_claims", "secrets_found")
            + ("interrupts",) * ("interrupts" in s)  # each Ctrl-C: its exit status and the CLI's last words
        }
        for name, s in report["scenarios"].items()
        if "rows" in s
    }
    assert totals["targets_met"], json.dumps({"totals": totals, "scenarios": problems}, indent=1)
    assert done.returncode == 0
    assert totals["lost"] == 0
    assert totals["failed"] == 0
    assert totals["jobs_per_unique_stage"] == 1.0
    assert totals["unrecorded_jobs"] == 0
    assert totals["stuck_claims"] == 0
    assert totals["secrets_found"] == 0
    ran = {name for name, s in report["scenarios"].items() if "rows" in s}
    assert {
        "sigkill",
        "provider_faults",
        "workers_sqlite",
        "workers_pg",
        "pg_outage",
        "storage_faults",
    } <= ran
    assert report["scenarios"]["pg_outage"]["runs"][1]["names_the_database"]
    # Every scenario made real provider jobs (recorded by the fakes): the ratios above are measured.
    assert all(
        s["billed_jobs"] >= s["unique_stages"] > 0 for name, s in report["scenarios"].items() if name in ran
    )
