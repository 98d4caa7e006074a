"""Prefect settings castflow applies unless the user set them: set before Prefect is imported.

Kept free of Prefect imports so scripts (the benchmark) can apply them first.
"""

from __future__ import annotations

import os

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
