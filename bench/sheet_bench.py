"""Time and peak memory of reading sheets: `castflow campaign validate` and `campaign run --dry-run` on
the largest sheets castflow accepts and on refused ones, each in a fresh process (its own peak RSS, from
wait4), on the embedded defaults with the sample actors. Prints JSON; exits 1 if a target is missed.

Targets (issue 13): every command stays within 300 MB of RSS; the dry run of 100,000 rows takes at most
10 s (with CASTFLOW_CAMPAIGN__MAX_ROWS=100000: the default row limit is 10,000; the default size limit,
32 MiB, fits 100,000 rows).

    python bench/sheet_bench.py            # the full sheets (about a minute)
    python bench/sheet_bench.py --short    # 10,000 rows and smaller refused files (CI)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

RSS_LIMIT_MB = 300.0
DRY_RUN_LIMIT_S = 10.0
ACTORS = ("maya", "leo", "ava")
SCENES = ("sunny beach", "office", "kitchen")


def rows_sheet(path: Path, rows: int) -> None:
    """A typical sheet: three actors, three scenes, a script and a note of the team's own per row."""
    with path.open("w", encoding="utf-8") as fh:
        fh.write("row_id,actor,script,scene,campaign_note\n")
        for i in range(rows):
            fh.write(
                f"r{i},{ACTORS[i % 3]},This is script number {i} for a spring sale; buy now and save.,"
                f"{SCENES[i % 3]},note {i}\n"
            )


def fat_sheet(path: Path, rows: int, size: int) -> None:
    """As many bytes as the size limit accepts, in few rows: long notes of the team's own."""
    pad = "x" * (size // rows - 40)
    with path.open("w", encoding="utf-8") as fh:
        fh.write("row_id,actor,script,notes\n")
        for i in range(rows):
            fh.write(f"r{i},{ACTORS[i % 3]},Script {i} says hello.,{pad}\n")


# The command runs under a small launcher that reports the command's own peak RSS. Measured straight
# from this process it would not be the command's: Linux keeps the peak of the memory a process held
# before exec (here a copy of this bench, which holds the sheets it wrote) as the new program's.
_LAUNCHER = """
import os, subprocess, sys
proc = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
err = proc.stderr.read()
_pid, status, usage = os.wait4(proc.pid, 0)
sys.stderr.buffer.write(err)
print(os.waitstatus_to_exitcode(status), usage.ru_maxrss)
"""


def measure(argv: list[str], env: dict[str, str]) -> dict[str, Any]:
    """One command in a fresh process: exit code, seconds, its own peak RSS."""
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", _LAUNCHER, *argv], env=env, capture_output=True, text=True, check=True
    )
    seconds = time.monotonic() - started
    code, max_kb = (int(v) for v in done.stdout.split())
    return {
        "exit": code,
        "seconds": round(seconds, 2),
        "peak_rss_mb": round(max_kb / 1024, 1),
        "said": done.stderr.strip().splitlines()[-1:] if code else [],
    }


def main() -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--short", action="store_true", help="Smaller sheets (for CI).")
    args = parser.parse_args()
    rows = 10_000 if args.short else 100_000
    size_limit = 32 * 1024 * 1024
    work = Path(tempfile.mkdtemp(prefix="castflow-sheet-bench-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CASTFLOW_", "PREFECT_"))}
    env["CASTFLOW_DATA_DIR"] = str(work / "data")
    cli = [sys.executable, "-m", "castflow"]
    subprocess.run([*cli, "actors", "samples"], env=env, check=True, capture_output=True)

    cases: dict[str, tuple[Path, bool, dict[str, str]]] = {}
    many = work / f"rows-{rows}.csv"
    rows_sheet(many, rows)
    cases[f"{rows} rows"] = (many, True, {"CASTFLOW_CAMPAIGN__MAX_ROWS": str(rows)})
    fat = work / "fat.csv"
    fat_sheet(fat, 1_000 if args.short else 10_000, size_limit - 4096)
    cases["largest accepted by size (32 MiB)"] = (fat, True, {})
    big = work / "big.csv"  # refused by its size, before a byte is read
    with big.open("wb") as fh:
        fh.write(b"row_id,actor,script\n")
        line = b"a,leo,hi\n"
        fh.write(line * ((40 if args.short else 200) * 1024 * 1024 // len(line)))
    cases["refused: too big"] = (big, False, {})
    cell = work / "cell.csv"  # just under the size limit, one cell: refused by the cell limit
    cell.write_bytes(b"row_id,actor,script\na,leo," + b"a" * (size_limit - 64) + b"\n")
    cases["refused: one 32 MiB cell"] = (cell, False, {})

    results: dict[str, Any] = {}
    met = True
    for name, (path, accepted, extra) in cases.items():
        for command in (["campaign", "validate"], ["campaign", "run", "--dry-run"]):
            got = measure([*cli, *command, str(path)], {**env, **extra})
            got["sheet_mb"] = round(path.stat().st_size / 2**20, 1)
            got["rss_ok"] = got["peak_rss_mb"] <= RSS_LIMIT_MB
            got["verdict_ok"] = got["exit"] == (0 if accepted else 2)
            ok = got["rss_ok"] and got["verdict_ok"]
            if command[-1] == "--dry-run" and name == "100000 rows":
                got["time_ok"] = got["seconds"] <= DRY_RUN_LIMIT_S
                ok = ok and got["time_ok"]
            met = met and ok
            results[f"{name}: {' '.join(command[1:])}"] = got
    shutil.rmtree(work, ignore_errors=True)
    return {"short": args.short, "targets": {"rss_mb": RSS_LIMIT_MB, "dry_run_100k_s": DRY_RUN_LIMIT_S},
            "results": results, "targets_met": met}  # fmt: skip


if __name__ == "__main__":
    report = main()
    print(json.dumps(report, indent=2))
    sys.exit(0 if report["targets_met"] else 1)
