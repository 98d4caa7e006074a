"""The Prefect settings castflow gives its in-process runs: defaults only, never over the user's."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from castflow.prefect_env import SERVER_BATCHING, _TemporaryServer, prefect_environment


def test_defaults_batch_task_run_recording_and_leave_the_users_settings_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(os, "environ", os.environ.copy())  # whatever it sets is gone after the test
    for name in [*SERVER_BATCHING, "PREFECT_HOME", "PREFECT_SERVER_SERVICES_TRIGGERS_ENABLED"]:
        os.environ.pop(name, None)
    os.environ["PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_BATCH_SIZE"] = "7"  # the user's own

    prefect_environment(tmp_path, max_workers=8)

    assert os.environ["PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_BATCH_SIZE"] == "7"
    assert os.environ["PREFECT_SERVER_SERVICES_EVENT_PERSISTER_BATCH_SIZE"] == "200"
    assert os.environ["PREFECT_SERVER_SERVICES_TRIGGERS_ENABLED"] == "false"
    assert os.environ["PREFECT_HOME"] == str(tmp_path / "prefect")
    # Prefect itself accepts every value (names and types), so a typo cannot pass silently.
    from prefect.settings import Settings

    services = Settings().server.services
    assert services.task_run_recorder.batch_size == 7
    assert services.task_run_recorder.flush_interval == 1
    assert services.event_persister.batch_size == 200
    assert services.event_persister.flush_interval == 2
    assert services.triggers.enabled is False


def test_a_configured_api_is_used_as_is(monkeypatch: pytest.MonkeyPatch) -> None:
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from castflow.prefect_env import ensure_prefect_api

    with temporary_settings({PREFECT_API_URL: "http://prefect.example:4200/api"}):
        assert ensure_prefect_api() == "http://prefect.example:4200/api"


SCRIPT = """
import sys
from castflow.prefect_env import ensure_prefect_api, prefect_environment
prefect_environment(sys.argv[1], max_workers=2)
from prefect import flow, task

@task
def double(x: int) -> int:
    return 2 * x

@flow
def doubled(x: int) -> int:
    return double.submit(x).result()

url = ensure_prefect_api()
from prefect.settings import get_current_settings
assert get_current_settings().api.url == url, (get_current_settings().api.url, url)
assert ensure_prefect_api() == url  # once per process
print("url", url)
import os, pathlib
for stat in pathlib.Path("/proc").glob("[0-9]*/stat"):
    try:
        if int(stat.read_text().rsplit(")", 1)[1].split()[1]) != os.getpid():
            continue
        if b"prefect.server.api.server:create_app" in (stat.parent / "cmdline").read_bytes():
            server_env = (stat.parent / "environ").read_bytes()
            print("server has castflow settings", b"CASTFLOW_" in server_env, b"sk-secret" in server_env)
    except OSError:
        pass
print("result", doubled(21))
print("server code imported here", "prefect.server.api.server" in sys.modules)
"""


@pytest.mark.timeout(300)
def test_flows_run_against_a_temporary_server_in_a_child_process(tmp_path: Path) -> None:
    """No API configured: flows run against a server castflow starts (and stops), and this process never
    imports Prefect's server application (~50 MB of RSS)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env["CASTFLOW_FAL__KEY"] = "sk-secret"  # never handed to the server
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=280,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert "result 42" in lines
    assert "server code imported here False" in lines
    assert "server has castflow settings False False" in lines
    url = next(line.split()[1] for line in lines if line.startswith("url "))
    assert url.startswith("http://127.0.0.1:")
    port = int(url.split(":")[2].split("/")[0])
    with socket.socket() as sock:  # stopped when the process exited
        assert sock.connect_ex(("127.0.0.1", port)) != 0
    assert (tmp_path / "prefect" / "prefect.db").exists()  # its database is under castflow's data dir
    assert "port " in (tmp_path / "prefect" / "server.log").read_text()  # its output, off the terminal
    assert "Traceback" not in done.stderr


class _FailingServer(_TemporaryServer):
    @staticmethod
    def _launcher() -> list[str]:
        return [
            sys.executable,
            "-c",
            "import sys; print('boom: no such table', file=sys.stderr); sys.exit(1)",
        ]


def test_a_server_that_fails_to_start_shows_its_log_in_the_error(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    log = tmp_path / "server.log"
    server = _FailingServer(env=dict(os.environ), timeout_s=60, log_path=str(log))
    with pytest.raises(RuntimeError) as failure:
        server.start()
    message = str(failure.value)
    assert "exited with status 1" in message
    assert str(log) in message
    assert "boom: no such table" in message
    out, err = capfd.readouterr()
    assert "boom" not in out + err  # the server's output went to its log, not the terminal


def test_the_server_log_is_rotated_when_large(tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    log.write_bytes(b"x" * (_TemporaryServer.LOG_KEEP_BYTES + 1))
    server = _FailingServer(env=dict(os.environ), timeout_s=60, log_path=str(log))
    with pytest.raises(RuntimeError):
        server.start()
    assert (tmp_path / "server.log.1").stat().st_size == _TemporaryServer.LOG_KEEP_BYTES + 1
    assert log.stat().st_size < 10_000


PARENT = """
import os, pathlib, sys, time
from castflow.prefect_env import ensure_prefect_api, prefect_environment
prefect_environment(sys.argv[1], max_workers=2)
url = ensure_prefect_api()
for stat in pathlib.Path("/proc").glob("[0-9]*/stat"):
    try:
        if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == os.getpid():
            print("server", stat.parent.name, url, flush=True)
    except OSError:
        pass
time.sleep(600)
"""


def _alive(pid: int) -> bool:
    """Whether the process runs: it is no child of ours (reparented), so a zombie that its new parent
    has not reaped yet counts as dead."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    state = next(line.split()[1] for line in status.splitlines() if line.startswith("State:"))
    return state not in {"Z", "X"}


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signal is Linux-only")
@pytest.mark.timeout(300)
def test_the_temporary_server_dies_with_a_killed_parent(tmp_path: Path) -> None:
    """A SIGKILLed CLI runs no exit handlers: the kernel's parent-death signal stops its server."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT, str(tmp_path)], env=env, stdout=subprocess.PIPE, text=True
    )
    pid = 0
    try:
        assert parent.stdout is not None
        line = parent.stdout.readline()  # once the server answers its health check
        assert line.startswith("server "), line
        _, pid_text, url = line.split()
        pid, port = int(pid_text), int(url.split(":")[2].split("/")[0])
        assert _alive(pid)
        parent.kill()
        parent.wait()
        killed = time.monotonic()
        while _alive(pid) and time.monotonic() - killed < 15:
            time.sleep(0.05)
        took = time.monotonic() - killed
        assert not _alive(pid), f"server {pid} still running {took:.1f} s after its parent was killed"
        print(f"server stopped {took:.2f} s after its parent was killed")
        with socket.socket() as sock:
            assert sock.connect_ex(("127.0.0.1", port)) != 0
    finally:
        parent.kill()
        parent.wait()
        if pid and _alive(pid):
            os.kill(pid, signal.SIGKILL)  # a failed test leaves no server behind


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signal is Linux-only")
def test_the_launcher_runs_uvicorn_only_while_its_parent_lives() -> None:
    """prctl(2)'s race: a parent that died before the signal was armed sends none, so the launcher
    compares its parent with the expected one and then quits instead of starting an orphan."""

    def launch(parent: int) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "castflow._server_launcher", str(parent), "--version"]
        return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)

    orphan = launch(2**31 - 1)  # no process has this pid
    assert (orphan.returncode, orphan.stdout, orphan.stderr) == (0, "", "")
    child = launch(os.getpid())
    assert child.returncode == 0, child.stderr
    assert "uvicorn" in child.stdout


def test_an_unwritable_prefect_home_is_one_line_not_the_servers_traceback() -> None:
    code = (
        "from castflow.datadir import DataDirError\n"
        "from castflow.prefect_env import ensure_prefect_api\n"
        "try:\n"
        "    ensure_prefect_api()\n"
        "except DataDirError as exc:\n"
        "    print(exc)\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env["PREFECT_HOME"] = "/sys/castflow-test"  # sysfs takes no new folders, even from root
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.stdout.startswith("data directory /sys/castflow-test cannot be created ("), done.stderr[
        -3000:
    ]
    assert done.stdout.endswith("): set PREFECT_HOME to a writable folder\n")
