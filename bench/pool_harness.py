"""Real parts for a campaign on a work pool, started on loopback: the provider fakes in their own process
(every job created appended to a jobs file), a Prefect server on PostgreSQL (its own database), castflow's
database on PostgreSQL, a process work pool with castflow's deployments, and ``prefect worker start``
processes. Used by ``tests/test_scaleout.py`` and ``bench/scaleout_bench.py``.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg
import sqlalchemy as sa

from castflow.fakes.serve import client_env as fakes_env

ROOT = Path(__file__).resolve().parents[1]
POOL = "castflow"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(check: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = check()
        except (httpx.HTTPError, OSError):
            value = None
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def descendants(pid: int) -> set[int]:
    """Every process started under ``pid`` (from /proc)."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", "rb") as fh:
                    stat = fh.read().decode(errors="replace")
            except OSError:
                continue
            parents[int(entry)] = int(stat[stat.rfind(")") + 2 :].split()[1])
    found: set[int] = set()
    frontier = [pid]
    while frontier:
        parent = frontier.pop()
        for child, ppid in parents.items():
            if ppid == parent and child not in found:
                found.add(child)
                frontier.append(child)
    return found


def kill_tree(proc: subprocess.Popen[bytes], sig: int = signal.SIGKILL) -> list[int]:
    """``proc`` and everything under it, at once (a machine gone); returns the pids signalled."""
    pids = [proc.pid, *sorted(descendants(proc.pid))]
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=30)
    return pids


def stop(proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_tree(proc)


def _database(admin_url: str, name: str) -> str:
    """A new database ``name`` on the server of ``admin_url`` (libpq form); returns its libpq URL."""
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return sa.engine.make_url(admin_url).set(database=name).render_as_string(hide_password=False)


def _drop(admin_url: str, name: str) -> None:
    with contextlib.suppress(psycopg.Error), psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@dataclass
class Team:
    work: Path
    api: str
    env: dict[str, str]  # castflow's and Prefect's client environment (CLI, workers)
    fakes: dict[str, Any]
    jobs_file: Path
    castflow_db: str  # SQLAlchemy URL
    prefect_db: str = ""  # Prefect server's database (SQLAlchemy URL, psycopg)
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)
    logs: list[Any] = field(default_factory=list)

    def start_worker(self, name: str, limit: int = 4, cpus: str | None = None) -> subprocess.Popen[bytes]:
        """A ``prefect worker start`` process (with ``cpus``, it and its flow runs on those cores only:
        one machine of that many cores)."""
        log = open(self.work / f"{name}.log", "wb")  # noqa: SIM115 - closed by the team
        self.logs.append(log)
        pin = ["taskset", "-c", cpus] if cpus else []
        proc = subprocess.Popen(
            [*pin, sys.executable, "-m", "prefect", "worker", "start", "--pool", POOL, "--name", name,
             "--limit", str(limit)],
            env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=ROOT,
        )  # fmt: skip
        self.workers.append(proc)
        return proc

    def castflow(self, *args: str, timeout: float = 1800) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "castflow", *args],
            env=self.env, cwd=self.work, capture_output=True, text=True, timeout=timeout, check=False,
        )  # fmt: skip

    def jobs(self) -> list[dict[str, Any]]:
        if not self.jobs_file.exists():
            return []
        return [json.loads(line) for line in self.jobs_file.read_text().splitlines() if line.strip()]

    def paid_twice(self) -> list[tuple[str, str, str]]:
        """Paid jobs submitted more than once for the same request (provider, model, payload)."""
        counts = Counter((j["provider"], j["model"], j["payload_sha256"]) for j in self.jobs())
        return [key for key, n in counts.items() if n > 1]

    def db(self) -> sa.Engine:
        return sa.create_engine(self.castflow_db)

    def castflow_transactions(self) -> int:
        """Transactions committed in castflow's database so far (pg_stat_database)."""
        engine = self.db()
        try:
            with engine.connect() as c:
                c.execute(sa.text("SELECT pg_stat_clear_snapshot()"))
                return int(
                    c.execute(
                        sa.text("SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()")
                    ).scalar()
                    or 0
                )
        finally:
            engine.dispose()

    def prefect_events(self, table: str = "events") -> int:
        """Events Prefect's server has stored (task and flow run states arrive as events, over a
        websocket: no HTTP request each); ``table="log"``: the log lines sent to it."""
        assert table in ("events", "log")
        engine = sa.create_engine(self.prefect_db)
        try:
            with engine.connect() as c:
                return int(c.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar() or 0)  # noqa: S608 - a fixed name
        finally:
            engine.dispose()


@contextlib.contextmanager
def team(
    work: Path,
    admin_url: str,
    *,
    fakes_args: list[str] | None = None,
    env: dict[str, str] | None = None,
    server_env: dict[str, str] | None = None,
) -> Iterator[Team]:
    """Everything but the workers (``Team.start_worker``) and the campaign, stopped afterwards."""
    admin_url = admin_url.replace("postgresql+psycopg://", "postgresql://", 1)
    tag = uuid.uuid4().hex[:10]
    prefect_db, castflow_db = f"prefect_{tag}", f"castflow_{tag}"
    base = {k: v for k, v in os.environ.items() if not k.startswith(("CASTFLOW_", "PREFECT_"))}
    base["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{base.get('PATH', '')}"
    procs: list[subprocess.Popen[bytes]] = []
    logs: list[Any] = []
    made_team: Team | None = None
    try:
        prefect_url = _database(admin_url, prefect_db).replace("postgresql://", "postgresql+asyncpg://", 1)
        castflow_url = _database(admin_url, castflow_db).replace("postgresql://", "postgresql+psycopg://", 1)
        jobs_file = work / "jobs.jsonl"
        fakes_log = open(work / "fakes.log", "wb")  # noqa: SIM115 - closed below
        logs.append(fakes_log)
        fakes = subprocess.Popen(
            [sys.executable, "-m", "castflow.fakes.serve", "--synthetic", "--jobs-file", str(jobs_file),
             *(fakes_args or [])],
            env=base, stdout=subprocess.PIPE, stderr=fakes_log, start_new_session=True,
        )  # fmt: skip
        procs.append(fakes)
        assert fakes.stdout is not None
        info = json.loads(fakes.stdout.readline())
        port = free_port()
        api = f"http://127.0.0.1:{port}/api"
        server_log = open(work / "server.log", "wb")  # noqa: SIM115 - closed below
        logs.append(server_log)
        server = subprocess.Popen(
            [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            env={
                **base,
                "PREFECT_HOME": str(work / "prefect-server"),
                "PREFECT_API_DATABASE_CONNECTION_URL": prefect_url,
                "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                "PREFECT_LOGGING_LEVEL": "WARNING",
                "PREFECT_UI_ENABLED": "false",
                # As deployments/README.md recommends for a server that runs campaigns.
                "PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_BATCH_SIZE": "200",
                "PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_FLUSH_INTERVAL": "1",
                "PREFECT_SERVER_SERVICES_EVENT_PERSISTER_BATCH_SIZE": "200",
                "PREFECT_SERVER_SERVICES_EVENT_PERSISTER_FLUSH_INTERVAL": "2",
                **(server_env or {}),
            },
            stdout=server_log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        procs.append(server)
        client_env = {
            **base,
            "PREFECT_API_URL": api,
            "PREFECT_HOME": str(work / "prefect-client"),
            "PREFECT_LOGGING_LEVEL": "WARNING",
            "CASTFLOW_PROJECT_DIR": str(ROOT),
            "CASTFLOW_DATA_DIR": str(work / "data"),
            "CASTFLOW_DATABASE__URL": castflow_url,
            **fakes_env(info),
            "CASTFLOW_FAL__POLL_FIRST_S": "0.01",
            "CASTFLOW_FAL__POLL_CAP_S": "0.16",
            "CASTFLOW_WAVESPEED__POLL_FIRST_S": "0.05",
            "CASTFLOW_WAVESPEED__POLL_CAP_S": "0.3",
            "CASTFLOW_WAVESPEED__EXPECTED_SECONDS_PER_AUDIO_SECOND": "0.1",
            "CASTFLOW_PIPELINE__RETRY_BACKOFF_S": "0.05",
            "CASTFLOW_CAMPAIGN__PUBLISH_REPORT": "false",
            "MALLOC_ARENA_MAX": "2",
            **(env or {}),
        }
        wait_for(lambda: httpx.get(f"{api}/health", timeout=5).status_code == 200, 240, "the Prefect server")
        made_team = Team(
            work, api, client_env, info, jobs_file, castflow_url,
            prefect_url.replace("postgresql+asyncpg://", "postgresql+psycopg://", 1), logs=logs,
        )  # fmt: skip
        for args in (["db", "upgrade"], ["actors", "samples"]):
            done = made_team.castflow(*args, timeout=300)
            assert done.returncode == 0, done.stderr[-2000:]
        prefect = [sys.executable, "-m", "prefect"]
        for cmd in (
            [*prefect, "work-pool", "create", POOL, "--type", "process"],
            [*prefect, "--no-prompt", "deploy", "--all"],
        ):
            done = subprocess.run(
                cmd, env=client_env, cwd=ROOT, capture_output=True, text=True, timeout=300, check=False
            )
            assert done.returncode == 0, (cmd, done.stdout[-2000:], done.stderr[-2000:])
        yield made_team
    finally:
        if made_team is not None:
            for proc in made_team.workers:
                kill_tree(proc, signal.SIGTERM) if proc.poll() is None else None
                stop(proc, timeout=20)
            logs += made_team.logs
        for proc in reversed(procs):
            stop(proc)
        for log in logs:
            log.close()
        _drop(admin_url, prefect_db)
        _drop(admin_url, castflow_db)


def chunk_owner_pids(engine: sa.Engine) -> dict[int, int]:
    """``pid -> chunk`` of the chunks running now (their owner's process)."""
    with engine.connect() as c:
        rows = c.execute(sa.text("SELECT seq, owner FROM campaign_chunk WHERE status = 'running'")).all()
    found = {}
    for seq, owner in rows:
        parts = (owner or "").rsplit(":", 3)
        if len(parts) == 4 and parts[1].isdigit():
            found[int(parts[1])] = int(seq)
    return found
