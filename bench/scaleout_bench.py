"""Scale-out benchmark: one campaign in-process and on a Prefect process work pool with 1 and 2 workers.

Each configuration gets fresh real parts (bench/pool_harness.py): the provider fakes in their own
process at 1/100 of the real latencies with account caps fal 40 / WaveSpeed 20, a Prefect server on
PostgreSQL, castflow's database on PostgreSQL, and (pool) the workers. The campaign is
bench/campaign_bench.py's (10 actors with fal voices, 250 scripts, 4 scenes), run by the CLI
(`castflow campaign run`, with `--pool castflow` on the pool). With ``--finish`` runs each row also
makes one `tiktok` export (a 1080x1920 H.264 encode with burnt-in captions: CPU-heavy finishing).

Reported per run: makespan, makespan over the provider-bound ideal (P1), CPU seconds per row in each
process (the CLI's run; each worker with its flow-run processes; the fakes; Prefect's server),
Prefect API calls per row (counted at the server: its access log), and peak RSS per worker (the worker
and its flow-run processes, summed, sampled every 0.5 s). Prints one JSON document.

    .venv/bin/python bench/scaleout_bench.py                       # 1,000 rows; finishing on 200 rows
    .venv/bin/python bench/scaleout_bench.py --rows 40 --finish-rows 20 --modes pool2   # CI's short form
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parent))

import pool_harness
from campaign_bench import (
    ACTORS,
    EDIT_S,
    FAL_CAP,
    LIPSYNC_S_PER_AUDIO_S,
    SCENES,
    TTS_S,
    WAVESPEED_CAP,
    scripts,
)

TICK = os.sysconf("SC_CLK_TCK")
VOICES = ["Aria", "Roger", "Rachel", "Sarah", "Laura", "Charlie", "George", "Callum", "River", "Liam"]


def _stat(pid: int) -> list[str] | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def tree_cpu(pid: int) -> float:
    """CPU seconds of ``pid``, its reaped children and its live descendants."""
    total = 0.0
    for p in {pid} | pool_harness.descendants(pid):
        fields = _stat(p)
        if fields is not None:
            own = int(fields[11]) + int(fields[12])
            reaped = int(fields[13]) + int(fields[14])
            total += (own + reaped) / TICK
    return total


def tree_rss_mb(pid: int) -> float:
    total = 0
    for p in {pid} | pool_harness.descendants(pid):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
    return total / 1024


class PeakRss:
    """The largest summed RSS of each watched process tree, sampled in a thread."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.peak = dict.fromkeys(pids, 0.0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            for name, pid in self.pids.items():
                self.peak[name] = max(self.peak[name], tree_rss_mb(pid))

    def stop(self) -> dict[str, float]:
        self._stop.set()
        self._thread.join()
        return {k: round(v, 1) for k, v in self.peak.items()}


def api_calls(log: Path) -> int:
    """Requests the Prefect server answered so far (its access log), health checks aside."""
    text = log.read_text(errors="replace") if log.exists() else ""
    return sum(
        1 for line in text.splitlines() if "uvicorn.access" in line and '"' in line and "/health" not in line
    )


def write_inputs(work: Path, rows: int, finish: bool) -> tuple[Path, Path]:
    actors = work / "actors.yaml"
    looks = ["maya", "leo", "ava"]
    actors.write_text(
        "actors:\n"
        + "".join(
            f"  - key: actor{i}\n    name: Actor {i}\n    portrait: drawn:{looks[i % 3]}\n"
            f"    voice: {{provider: fal, model: fal-ai/elevenlabs/tts/multilingual-v2, voice_id: {VOICES[i]}}}\n"
            for i in range(ACTORS)
        ),
        encoding="utf-8",
    )
    texts = scripts(250)
    lines = ["row_id,actor,script,scene,resolution" + (",formats" if finish else "")]
    for i in range(rows):
        lines.append(
            f'r{i:05d},actor{i % ACTORS},"{texts[i % len(texts)]}",{SCENES[(i // ACTORS) % len(SCENES)]},480p'
            + (",tiktok" if finish else "")
        )
    sheet = work / "bench.csv"
    sheet.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return actors, sheet


def ideal_s(engine: sa.Engine) -> float:
    """The provider-bound lower bound, as bench/campaign_bench.py computes it from the ledger."""
    with engine.connect() as c:
        runs = c.execute(
            sa.text(
                "SELECT stage, meta FROM stage_run WHERE status = 'succeeded' AND provider IN ('fal', 'wavespeed')"
            )
        ).all()
    edits = sum(1 for stage, _ in runs if stage == "scene_variant")
    tts = sum(1 for stage, _ in runs if stage == "speech")
    seconds = [float((meta or {}).get("seconds") or 0) for stage, meta in runs if stage == "lipsync"]
    return max(
        (edits * EDIT_S + tts * TTS_S) / FAL_CAP,
        LIPSYNC_S_PER_AUDIO_S * sum(seconds) / WAVESPEED_CAP,
        EDIT_S + TTS_S + LIPSYNC_S_PER_AUDIO_S * max(seconds, default=0.0),
    )


def run_one(
    admin_url: str, work: Path, *, mode: str, rows: int, finish: bool, args: argparse.Namespace
) -> dict[str, Any]:
    workers = {"inprocess": 0, "pool1": 1, "pool2": 2}[mode]
    fakes = [
        "--fal-concurrency", str(FAL_CAP), "--wavespeed-concurrency", str(WAVESPEED_CAP),
        "--edit-seconds", str(EDIT_S), "--tts-seconds", str(TTS_S),
        "--lipsync-seconds-per-audio-second", str(LIPSYNC_S_PER_AUDIO_S),
    ]  # fmt: skip
    env = {
        **({"CASTFLOW_CAMPAIGN__GLOBAL_LIMITS": "[]"} if args.no_global_limits else {}),
        "CASTFLOW_CAMPAIGN__PROVIDER_LIMITS": json.dumps(
            {"fal": FAL_CAP + 8, "wavespeed": 2 * WAVESPEED_CAP, "local": 4, "upload": 16}
        ),
        "CASTFLOW_CAMPAIGN__ROW_CONCURRENCY": str(args.row_concurrency),
        "CASTFLOW_CAMPAIGN__CHUNK_ROWS": str(args.chunk_rows),
    }
    server_env = {"PREFECT_SERVER_LOGGING_LEVEL": "INFO"}  # its access log counts the API calls
    with pool_harness.team(work, admin_url, fakes_args=fakes, env=env, server_env=server_env) as team:
        actors, sheet = write_inputs(work, rows, finish)
        done = team.castflow("actors", "import", str(actors))
        assert done.returncode == 0, done.stderr[-2000:]
        cores = os.cpu_count() or 1
        procs = {
            f"worker{i + 1}": team.start_worker(
                f"worker-{i + 1}", limit=args.worker_limit, cpus=str(i % cores) if args.pin else None
            )
            for i in range(workers)
        }
        if procs:  # the workers are polling before the clock starts
            pool_harness.wait_for(
                lambda: all("started" in (work / f"worker-{i + 1}.log").read_text(errors="replace").lower()
                            for i in range(workers)),
                120, "the workers",
            )  # fmt: skip
        server_log = work / "server.log"
        calls0, events0, logs0 = api_calls(server_log), team.prefect_events(), team.prefect_events("log")
        tx0 = team.castflow_transactions()
        cpu0 = {"fakes": 0.0, "prefect_server": 0.0}
        server_pid = fakes_pid = None
        for pid in pool_harness.descendants(os.getpid()):
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes() if Path(f"/proc/{pid}/cmdline").exists() else b""
            if b"castflow.fakes.serve" in cmd:
                fakes_pid = pid
            elif b"server\x00start" in cmd:
                server_pid = pid
        if fakes_pid:
            cpu0["fakes"] = tree_cpu(fakes_pid)
        if server_pid:
            cpu0["prefect_server"] = tree_cpu(server_pid)
        worker_cpu0 = {name: tree_cpu(p.pid) for name, p in procs.items()}
        cli = [sys.executable, "-m", "castflow", "campaign", "run", str(sheet), "--name", "bench"]
        if args.pin and not workers:  # in-process on one core, as one worker is
            cli = ["taskset", "-c", "0", *cli]
        if workers:
            cli += ["--pool", pool_harness.POOL]
        peaks = PeakRss({name: p.pid for name, p in procs.items()})
        started = time.monotonic()
        parent = subprocess.Popen(
            cli, env=team.env, cwd=work, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        _, status, usage = os.wait4(parent.pid, 0)
        makespan = time.monotonic() - started
        out = parent.stdout.read().decode(errors="replace") if parent.stdout else ""
        parent.returncode = os.waitstatus_to_exitcode(status)
        peak = peaks.stop()
        time.sleep(1.0)  # the workers reap their last flow-run processes
        time.sleep(3.0)  # the server's event persister flushes every 2 s
        calls, events = api_calls(server_log) - calls0, team.prefect_events() - events0
        logs = team.prefect_events("log") - logs0
        transactions = team.castflow_transactions() - tx0
        engine = team.db()
        with engine.connect() as c:
            statuses = dict(c.execute(sa.text("SELECT status, count(*) FROM video GROUP BY status")).all())  # type: ignore[arg-type]
        ideal = ideal_s(engine)
        engine.dispose()
        cpu = {"cli": round(usage.ru_utime + usage.ru_stime, 2)}
        cpu |= {name: round(tree_cpu(p.pid) - worker_cpu0[name], 2) for name, p in procs.items()}
        if fakes_pid:
            cpu["fakes"] = round(tree_cpu(fakes_pid) - cpu0["fakes"], 2)
        if server_pid:
            cpu["prefect_server"] = round(tree_cpu(server_pid) - cpu0["prefect_server"], 2)
        if parent.returncode != 0:
            raise SystemExit(f"{mode}: the campaign failed ({parent.returncode}):\n{out[-3000:]}")
        result = {
            "mode": mode,
            "workers": workers,
            "finish": finish,
            "rows": rows,
            "succeeded": statuses.get("succeeded", 0),
            "makespan_s": round(makespan, 2),
            "ideal_s": round(ideal, 2),
            "P1_makespan_over_ideal": round(makespan / ideal, 3) if ideal else None,
            "cpu_s": cpu,
            "cpu_per_row_s": {k: round(v / rows, 4) for k, v in cpu.items()},
            "prefect_api_calls": calls,
            "prefect_api_calls_per_row": round(calls / rows, 2),
            "prefect_events": events,
            "prefect_events_per_row": round(events / rows, 2),
            "castflow_db_transactions_per_row": round(transactions / rows, 2),
            "prefect_logs": logs,
            "prefect_logs_per_row": round(logs / rows, 2),
            "peak_rss_mb": peak if procs else {"cli": round(usage.ru_maxrss / 1024, 1)},
            "paid_twice": len(team.paid_twice()),
        }
        print(json.dumps(result), file=sys.stderr, flush=True)
        return result


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=1000, help="Rows without finishing.")
    parser.add_argument(
        "--finish-rows", type=int, default=200, help="Rows with a tiktok export each (0: skip)."
    )
    parser.add_argument(
        "--modes", default="inprocess,pool1,pool2", help="Comma-separated: inprocess, pool1, pool2."
    )
    parser.add_argument(
        "--row-concurrency", type=int, default=20, help="Rows in flight per chunk (in-process: per run)."
    )
    parser.add_argument("--worker-limit", type=int, default=2, help="Flow runs (chunks) at once per worker.")
    parser.add_argument("--chunk-rows", type=int, default=100, help="Rows per chunk.")
    parser.add_argument("--pg", default=os.environ.get("CASTFLOW_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres"),
                        help="A PostgreSQL server's URL to make the runs' databases on.")  # fmt: skip
    parser.add_argument("--pin", action="store_true",
                        help="Each worker (and the in-process run) on one core of its own: one machine per worker.")  # fmt: skip
    parser.add_argument("--no-global-limits", action="store_true",
                        help="No Prefect global concurrency limits: each process caps its own provider jobs.")  # fmt: skip
    args = parser.parse_args(argv)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    runs: list[dict[str, Any]] = []
    for finish, rows in ((False, args.rows), (True, args.finish_rows)):
        if rows <= 0:
            continue
        for mode in modes:
            with tempfile.TemporaryDirectory(prefix=f"castflow-scale-{mode}-") as tmp:
                runs.append(run_one(args.pg, Path(tmp), mode=mode, rows=rows, finish=finish, args=args))

    def find(mode: str, finish: bool) -> dict[str, Any] | None:
        return next((r for r in runs if r["mode"] == mode and r["finish"] == finish), None)

    report: dict[str, Any] = {
        "settings": {k: v for k, v in vars(args).items() if k != "pg"},
        "fakes": {"fal_cap": FAL_CAP, "wavespeed_cap": WAVESPEED_CAP, "edit_s": EDIT_S, "tts_s": TTS_S,
                  "lipsync_s_per_audio_s": LIPSYNC_S_PER_AUDIO_S},
        "cores": os.cpu_count(),
        "runs": runs,
    }  # fmt: skip
    one, two = find("pool1", True), find("pool2", True)
    if one and two:
        report["finish_speedup_2_vs_1_workers"] = round(one["makespan_s"] / two["makespan_s"], 3)
    plain = find("pool2", False)
    if plain:
        report["P1_2_workers_no_finish"] = plain["P1_makespan_over_ideal"]
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
