"""The Prefect settings castflow gives its in-process runs: defaults only, never over the user's."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from castflow.prefect_env import SERVER_BATCHING, prefect_environment


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
