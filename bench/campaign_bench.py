"""Campaign benchmark: a sheet of N rows (default 1,000) against the loopback provider fakes, at 1/100 of
real latencies (image edit 0.1 s, TTS 0.05 s, lip-sync 0.15 s per second of audio) and account caps
(fal 40 in progress, WaveSpeed 20). Prints one JSON object:

- P1 ``makespan_ratio``: campaign wall time / the ideal lower bound given those caps (target <= 1.15)
- P2 ``cpu_per_row_ratio``: orchestration CPU per row / CPU of one trivial Prefect task measured in the
  same run (target <= 6)
- P3 ``paid_per_unique_stage``: paid calls / unique paid stage keys (target 1.00), and the paid calls of
  an immediate re-run (target 0)
- P4 ``peak_rss_mb``: peak RSS of this (orchestrating) process through the campaign and its re-run
  (target <= 300 MB); the trivial-task calibration of P2 runs afterwards

The fakes run in a separate process, so their CPU and memory are not counted. Usage:
``python bench/campaign_bench.py [--rows 1000] [--row-concurrency 40] [--keep] [--tuned-server]``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# At 1/100 of real time: image edit 1 s -> 0.01 s ... (the spec'd run times are the issue's).
EDIT_S, TTS_S, LIPSYNC_S_PER_AUDIO_S = 0.1, 0.05, 0.15
FAL_CAP, WAVESPEED_CAP = 40, 20
ACTORS = 10
SCENES = [
    "a sunny kitchen",
    "a city rooftop at dusk",
    "a cosy living room",
    "a beach at golden hour",
    "a modern office",
    "a park in autumn",
    "a gym with mirrors",
    "a bakery counter",
    "a car interior",
    "a bookstore aisle",
    "a mountain cabin",
    "a neon street",
    "a garden table",
    "a train window seat",
    "a hotel lobby",
    "a studio with soft light",
    "a ski lodge",
    "a market stall",
    "a lakeside dock",
    "a music studio",
]
OPENERS = ["Okay, real talk", "Quick tip", "Honestly", "Here is the thing", "Small win today"]
PRODUCTS = ["this serum", "our planner", "the new blender", "these headphones", "that coffee kit"]
CLOSERS = [
    "changed my mornings.",
    "saves me an hour.",
    "is worth every cent.",
    "just works.",
    "made my week.",
]


def scripts(n: int) -> list[str]:
    out = []
    for i in range(n):
        a, b, c = OPENERS[i % 5], PRODUCTS[(i // 5) % 5], CLOSERS[(i // 25) % 5]
        out.append(f"{a}: {b} {c} Offer {i}.")
    return out


def process_cpu(pid: int) -> float:
    """CPU seconds (user + system) a process has used so far, from /proc (Linux)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children_cpu() -> dict[int, float]:
    """CPU seconds of this process's children (the fakes, Prefect's temporary server)."""
    me = os.getpid()
    found = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == me:
            found[int(stat.parent.name)] = process_cpu(int(stat.parent.name))
    return found


def name_of(pid: int) -> str:
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return str(pid)
    text = " ".join(part.decode(errors="replace") for part in cmd)
    return "fakes" if "castflow.fakes.serve" in text else "prefect_server" if "prefect" in text else text[:40]


def fake_calls(url: str) -> dict[str, int]:
    import httpx

    return dict(httpx.get(f"{url}/_fake/calls", timeout=10).json())


def main(argv: list[str] | None = None) -> dict[str, Any]:
    if "MALLOC_ARENA_MAX" not in os.environ and argv is None:
        # glibc gives each thread its own malloc arena; with a row per thread that is tens of MB of
        # mostly empty heap. Two arenas is the usual setting for threaded Python services (and what the
        # README recommends for castflow workers); it must be set before the process starts.
        os.environ["MALLOC_ARENA_MAX"] = "2"
        os.execv(sys.executable, [sys.executable, __file__, *sys.argv[1:]])  # noqa: S606 - same interpreter, same arguments
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=1000, help="Rows in the campaign sheet.")
    parser.add_argument("--row-concurrency", type=int, default=40, help="Rows in flight.")
    parser.add_argument("--keep", action="store_true", help="Keep the working folder (printed in the JSON).")
    parser.add_argument(
        "--tuned-server",
        action="store_true",
        help="Turn off Prefect server services a flow runner does not need.",
    )
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="castflow-bench-"))
    fakes = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "castflow.fakes.serve",
            "--synthetic",
            "--fal-concurrency",
            str(FAL_CAP),
            "--wavespeed-concurrency",
            str(WAVESPEED_CAP),
            "--edit-seconds",
            str(EDIT_S),
            "--tts-seconds",
            str(TTS_S),
            "--lipsync-seconds-per-audio-second",
            str(LIPSYNC_S_PER_AUDIO_S),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert fakes.stdout is not None
        info = json.loads(fakes.stdout.readline())
        return run(args, work, info)
    finally:
        fakes.terminate()
        fakes.wait(timeout=30)
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


def configure(work: Path, info: dict[str, Any], row_concurrency: int, tuned_server: bool = False) -> None:
    """Environment for castflow and Prefect: set before either reads its settings."""
    from castflow.fakes.serve import client_env  # reads no settings (nor imports Prefect)

    env = {
        "CASTFLOW_DATA_DIR": str(work / "data"),
        **client_env(info),
        # Polling at 1/100 of the defaults too (fal 1 s -> 16 s; WaveSpeed 5 s -> 30 s).
        "CASTFLOW_FAL__POLL_FIRST_S": "0.01",
        "CASTFLOW_FAL__POLL_CAP_S": "0.16",
        "CASTFLOW_WAVESPEED__POLL_FIRST_S": "0.05",
        "CASTFLOW_WAVESPEED__POLL_CAP_S": "0.3",
        # castflow's limits: more jobs than the accounts run at once. Both queue what is over their cap
        # (fal's queue; WaveSpeed holds it in "created", spec section 6.2), so a provider slot that frees
        # starts the next job at once while castflow is still polling, downloading and storing the last.
        "CASTFLOW_CAMPAIGN__PROVIDER_LIMITS": json.dumps(
            {"fal": FAL_CAP + 8, "wavespeed": 2 * WAVESPEED_CAP, "local": 4, "upload": 16}
        ),
        # The docs' 10 s of render per audio second, at 1/100: the first poll waits that long.
        "CASTFLOW_WAVESPEED__EXPECTED_SECONDS_PER_AUDIO_SECOND": "0.1",
        "CASTFLOW_CAMPAIGN__ROW_CONCURRENCY": str(row_concurrency),
        # The benchmark measures the rows' orchestration; the report a finished run publishes (thumbnails
        # of every video) is timed apart: `castflow report` on the campaign.
        "CASTFLOW_CAMPAIGN__PUBLISH_REPORT": "false",
        "CASTFLOW_PIPELINE__RETRY_BACKOFF_S": "0.05",
    }
    if tuned_server:
        # A server dedicated to running flows: no automations (they evaluate every event), no
        # scheduler/late-run/foreman loops, no event log; task runs are still recorded for the UI.
        for service in ("TRIGGERS", "SCHEDULER", "LATE_RUNS", "FOREMAN", "EVENT_LOGGER", "CANCELLATION_CLEANUP",
                        "PAUSE_EXPIRATIONS", "REPOSSESSOR", "DB_VACUUM"):  # fmt: skip
            env[f"PREFECT_SERVER_SERVICES_{service}_ENABLED"] = "false"
        env["PREFECT_LOGGING_TO_API_ENABLED"] = "false"
    os.environ.update(env)
    from castflow.prefect_env import prefect_environment

    # What the castflow CLI gives its temporary Prefect server (task runs recorded in batches).
    prefect_environment(work / "data", max_workers=8)
    from castflow.prefect_env import ensure_prefect_api

    ensure_prefect_api()  # as the CLI runs flows: Prefect's temporary server in a child process


def trivial_flow() -> Any:
    """A flow submitting ``count`` trivial tasks, as the campaign flow submits rows."""
    from prefect import flow, task
    from prefect.futures import wait

    @task
    def trivial(i: int) -> int:
        return i

    @flow
    def trivial_flow(count: int) -> None:
        wait([trivial.submit(i) for i in range(count)])

    return trivial_flow


def trivial_task_cpu(runner: Any, n: int = 300) -> float:
    """CPU seconds this process spends on one trivial Prefect task (submitted from a flow, as rows are).
    Measured after the campaign (its peak memory is the campaign's, not the calibration's)."""
    runs = []
    for _ in range(3):  # the median of three, as one run varies with the server's background work
        start = time.process_time()
        runner(n)
        runs.append((time.process_time() - start) / n)
    return sorted(runs)[1]


def run(args: argparse.Namespace, work: Path, info: dict[str, Any]) -> dict[str, Any]:
    configure(work, info, args.row_concurrency, args.tuned_server)
    # The database is migrated once, as deployments do (`castflow db upgrade`); the orchestrating
    # process then only checks that it is current.
    subprocess.run([sys.executable, "-m", "castflow", "db", "upgrade"], check=True, stdout=subprocess.DEVNULL)
    import sqlalchemy as sa

    from castflow.actors import ActorSpec, ensure_sample_actors, import_actors
    from castflow.db.tables import StageRun, StageStatus
    from castflow.models import Voice
    from castflow.runtime import get_runtime
    from flows.run_campaign import run_campaign

    rt = get_runtime()
    ensure_sample_actors(rt)
    looks = ["maya", "leo", "ava"]
    voices = ["Aria", "Roger", "Rachel", "Sarah", "Laura", "Charlie", "George", "Callum", "River", "Liam"]
    specs = [
        ActorSpec(
            key=f"actor{i}",
            name=f"Actor {i}",
            portrait=f"drawn:{looks[i % 3]}",
            voice=Voice(provider="fal", model="fal-ai/elevenlabs/tts/multilingual-v2", voice_id=voices[i]),
        )
        for i in range(ACTORS)
    ]
    import_actors(rt, specs, base_dir=work)
    lines = ["row_id,actor,script,scene,resolution"]
    texts = scripts(250)
    for i in range(args.rows):
        lines.append(
            f'r{i:05d},actor{i % ACTORS},"{texts[i % len(texts)]}",{SCENES[(i // ACTORS) % len(SCENES)]},480p'
        )
    sheet = work / "bench.csv"
    sheet.write_text("\n".join(lines) + "\n", encoding="utf-8")

    calibration = trivial_flow()
    calibration(20)  # warm-up before the campaign: Prefect's temporary server, clients, imports

    def paid_calls() -> int:
        return fake_calls(info["fal"]["url"])["submit"] + fake_calls(info["wavespeed"]["url"])["submit"]

    params = {"sheet": str(sheet), "name": "bench", "row_concurrency": args.row_concurrency}
    others0 = children_cpu()
    cpu0, wall0 = time.process_time(), time.monotonic()
    result = run_campaign(**params)
    makespan = time.monotonic() - wall0
    cpu_per_row = (time.process_time() - cpu0) / args.rows
    others: dict[str, float] = {}
    for pid, cpu in children_cpu().items():
        label = name_of(pid)
        others[label] = round(others.get(label, 0.0) + cpu - others0.get(pid, 0.0), 2)
    paid = paid_calls()
    calls = {"fal": fake_calls(info["fal"]["url"]), "wavespeed": fake_calls(info["wavespeed"]["url"])}
    again = run_campaign(**params)
    rerun_paid = paid_calls() - paid
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    trivial = trivial_task_cpu(calibration)

    with rt.session() as s:
        runs = list(
            s.scalars(
                sa.select(StageRun).where(
                    StageRun.provider.in_(("fal", "wavespeed")), StageRun.status == StageStatus.succeeded
                )
            )
        )
    edits = sum(1 for r in runs if r.stage == "scene_variant")
    tts = sum(1 for r in runs if r.stage == "speech")
    lipsync_work = sum(
        LIPSYNC_S_PER_AUDIO_S * float(r.meta.get("seconds") or 0) for r in runs if r.stage == "lipsync"
    )
    longest = max((float(r.meta.get("seconds") or 0) for r in runs if r.stage == "lipsync"), default=0.0)
    ideal = max(
        (edits * EDIT_S + tts * TTS_S) / FAL_CAP,
        lipsync_work / WAVESPEED_CAP,
        EDIT_S + TTS_S + LIPSYNC_S_PER_AUDIO_S * longest,
    )
    report = {
        "rows": args.rows,
        "row_concurrency": args.row_concurrency,
        "tuned_server": args.tuned_server,
        "succeeded": result.succeeded,
        "failed": result.failed,
        "skipped": result.skipped,
        "rerun_succeeded": again.succeeded,
        "makespan_s": round(makespan, 3),
        "ideal_lower_bound_s": round(ideal, 3),
        "P1_makespan_ratio": round(makespan / ideal, 3),
        "cpu_per_row_s": round(cpu_per_row, 5),
        "campaign_cpu_s": {
            "castflow": round(cpu_per_row * args.rows, 2),
            **others,
        },
        "trivial_task_cpu_s": round(trivial, 5),
        "P2_cpu_per_row_ratio": round(cpu_per_row / trivial, 3),
        "paid_calls": paid,
        "unique_paid_stage_keys": len(runs),
        "P3_paid_per_unique_stage": round(paid / max(1, len(runs)), 3),
        "P3_rerun_paid_calls": rerun_paid,
        "P4_peak_rss_mb": round(peak_rss_mb, 1),
        "provider_calls": calls,
        "stages": {"scene_variant": edits, "speech": tts, "lipsync": len(runs) - edits - tts},
        "targets": {"P1": "<= 1.15", "P2": "<= 6", "P3": "1.00 and 0", "P4": "<= 300 MB"},
    }
    if args.keep:
        report["work_dir"] = str(work)
    return report


if __name__ == "__main__":
    print(json.dumps(main(), indent=2))
