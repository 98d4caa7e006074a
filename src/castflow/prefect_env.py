"""Prefect settings castflow applies unless the user set them: set before Prefect is imported.

Kept free of Prefect imports at import time, so scripts (the benchmark) can apply them first.
"""

from __future__ import annotations

import atexit
import os
import socket
import subprocess
import sys
import threading
import time
from typing import BinaryIO

from castflow.datadir import check_data_dir

# Prefect's server records each task-run state event in its own database transaction by default
# (batch size 1). A campaign reports thousands of them: batched, the server needs about a third of the
# CPU (bench/campaign_bench.py) and the UI shows a state at most a second late. The same values suit
# a self-hosted server that runs campaigns (deployments/README.md).
SERVER_BATCHING = {
    "PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_BATCH_SIZE": "200",
    "PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_FLUSH_INTERVAL": "1",
    "PREFECT_SERVER_SERVICES_EVENT_PERSISTER_BATCH_SIZE": "200",
    "PREFECT_SERVER_SERVICES_EVENT_PERSISTER_FLUSH_INTERVAL": "2",
}


def prefect_environment(data_dir: os.PathLike[str] | str, max_workers: int) -> None:
    """Make in-process flow runs quiet and reliable unless the user configured Prefect themselves.

    Without ``PREFECT_API_URL`` Prefect starts a temporary server per process; it keeps its database
    and result cache under our data dir, logs only warnings, sends no telemetry, gets enough time to
    run its migrations on a slow first start and records task runs in batches. It does not evaluate
    automations: nobody can set one up on a server that lives as long as one command (with
    ``PREFECT_API_URL`` set, your server's automations work as usual).
    """
    defaults = {
        "PREFECT_HOME": os.path.join(data_dir, "prefect"),
        "PREFECT_LOGGING_LEVEL": "WARNING",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
        "PREFECT_SERVER_LOGGING_LEVEL": "WARNING",
        "PREFECT_TASKS_RUNNER_THREAD_POOL_MAX_WORKERS": str(max_workers),
        "PREFECT_SERVER_SERVICES_TRIGGERS_ENABLED": "false",
        **SERVER_BATCHING,
    }
    for name, value in defaults.items():
        os.environ.setdefault(name, value)


def ensure_prefect_api() -> str | None:
    """Prefect's API for the flow runs of this process: the configured one, or a temporary server.

    With no API URL configured (environment, profile, ``prefect.toml``: whatever Prefect reads) Prefect
    would start its ephemeral server on the first client call, and to do so import its whole server
    application into this process (FastAPI app, server database layer, docket and redis clients: about
    50 MB of RSS that a flow runner never uses; measured with bench/campaign_bench.py). Here the same
    server, started the same way (uvicorn with Prefect's app factory, UI off, in a child process), is
    launched without that import; this process and its children then talk to it as to any server
    (``PREFECT_API_URL``). Like Prefect's ephemeral server it lives until this process exits: it stops
    after Prefect's own exit handlers have sent the last events and logs. Returns the API URL (None when
    ephemeral mode is off and nothing is configured: Prefect then reports that itself). Raises
    castflow.datadir.DataDirError when Prefect's home cannot be written (one line, not the server's
    traceback).
    """
    from prefect.settings import get_current_settings

    settings = get_current_settings()
    if settings.api.url or not settings.server.ephemeral.enabled:
        return settings.api.url
    check_data_dir(settings.home, setting="PREFECT_HOME")  # its database lives there
    # The server gets Prefect's settings, not castflow's (provider keys stay out of its environment).
    env = {name: value for name, value in os.environ.items() if not name.startswith("CASTFLOW_")}
    server = _TemporaryServer(
        env={**env, **settings.to_environment_variables(exclude_unset=True)},
        timeout_s=float(settings.server.ephemeral.startup_timeout_seconds),
        log_path=os.path.join(settings.home, "server.log"),
    )
    url = server.start()
    os.environ["PREFECT_API_URL"] = url
    _refresh_prefect_settings()
    return url


def _refresh_prefect_settings() -> None:
    """Prefect reads its settings once at import; this makes it see the changed environment (the same
    call Prefect makes after its plugins set variables)."""
    from prefect.context import refresh_global_settings_context

    refresh_global_settings_context()


class _TemporaryServer:
    """Prefect's server in a child process on a free loopback port, as Prefect's ephemeral mode runs it
    (``prefect.server.api.server.SubprocessASGIServer``: same command, environment and health check).

    Its output goes to ``log_path`` (under Prefect's home), not to the user's terminal: the server's
    shutdown can print tracebacks of its own (a batch flush cancelled at exit) that say nothing about
    the user's run. When it fails to start, the end of that log is in the error."""

    STARTUP_FAILED = 3  # uvicorn's exit status when the app could not start (e.g. the port was taken)
    LAUNCHES = 3

    LOG_TAIL_CHARS = 4000
    LOG_KEEP_BYTES = 1_000_000  # beyond this the log moves to server.log.1 (one older log kept)

    def __init__(self, env: dict[str, str], timeout_s: float, log_path: str) -> None:
        self.env = {
            **env,
            "PREFECT_UI_ENABLED": "0",
            "PREFECT__SERVER_EPHEMERAL": "1",
            "PREFECT__SERVER_FINAL": "1",
        }
        self.timeout_s = timeout_s
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    def _launch(self) -> str:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        self._rotate_log()
        with open(self.log_path, "ab") as log:  # the child keeps its own copy of the descriptor
            log.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} port {port}\n".encode())
            log.flush()
            self.process = self._popen(port, log)
        return f"http://127.0.0.1:{port}/api"

    def _rotate_log(self) -> None:
        try:
            if os.path.getsize(self.log_path) > self.LOG_KEEP_BYTES:
                os.replace(self.log_path, self.log_path + ".1")
        except OSError:
            pass  # no log yet (or another process just moved it)

    def _popen(self, port: int, log: BinaryIO) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [
                *self._launcher(),
                "--factory",
                "prefect.server.api.server:create_app",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--log-level",
                "error",
                "--lifespan",
                "on",
            ],
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            # Its own session: the terminal's Ctrl-C goes to castflow only, and the server outlives the
            # flow's last events and logs (it stops at exit, and with this process: castflow._server_launcher).
            start_new_session=True,
        )

    @staticmethod
    def _launcher() -> list[str]:
        """How uvicorn is started: on Linux through castflow._server_launcher, so the server gets SIGTERM
        when this process dies, even by SIGKILL (it would otherwise live on under PID 1). Only from the
        main thread: the kernel signals the child when the thread that started it exits, and a worker
        thread may end long before this process. Elsewhere the server outlives a killed parent."""
        if sys.platform == "linux" and threading.current_thread() is threading.main_thread():
            return [sys.executable, "-m", "castflow._server_launcher", str(os.getpid())]
        return [sys.executable, "-m", "uvicorn"]

    def start(self) -> str:
        import httpx

        url, launches = self._launch(), 1
        # At exit, after Prefect's own handlers (registered later, so run earlier) have drained its
        # events and logs to this server.
        atexit.register(self.stop)
        deadline = time.monotonic() + self.timeout_s
        with httpx.Client(timeout=10) as client:
            while time.monotonic() < deadline:
                assert self.process is not None
                status = self.process.poll()
                if status == self.STARTUP_FAILED and launches < self.LAUNCHES:
                    url, launches = self._launch(), launches + 1  # another free port
                    continue
                if status is not None:
                    self.stop()
                    raise RuntimeError(
                        f"Prefect's temporary server exited with status {status}; "
                        f"the end of its log ({self.log_path}):\n{self._log_tail()}"
                    )
                try:
                    if client.get(f"{url}/health").status_code == 200:
                        return url
                except httpx.TransportError:
                    pass
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(
            f"Prefect's temporary server did not answer within {self.timeout_s:.0f} s "
            f"(PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS); the end of its log "
            f"({self.log_path}):\n{self._log_tail()}"
        )

    def _log_tail(self) -> str:
        try:
            with open(self.log_path, "rb") as log:
                log.seek(0, os.SEEK_END)
                log.seek(max(0, log.tell() - self.LOG_TAIL_CHARS))
                return log.read().decode("utf-8", "replace").strip() or "(empty)"
        except OSError as exc:
            return f"(unreadable: {exc.strerror})"

    def stop(self) -> None:
        atexit.unregister(self.stop)
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
