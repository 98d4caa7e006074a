"""The one retry policy of castflow's Prefect tasks, built from settings, and their cache-key namespace.

Task retries are for failed *jobs* (a provider's transient failure, a job that ended badly); transport
blips are retried below, in the HTTP layer (castflow.providers.http.RetryPolicy), and never both.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

from prefect import Task
from prefect.client.schemas.objects import State, TaskRun
from prefect.context import TaskRunContext
from prefect.tasks import exponential_backoff

from castflow.providers.base import ProviderError
from castflow.runtime import get_runtime
from castflow.settings import Settings
from castflow.stages import CACHE_VERSION

P = ParamSpec("P")
R = TypeVar("R")


def is_transient(_task: Task[..., Any], _run: TaskRun, state: State[Any]) -> bool:
    """Retry only what may succeed on another try: provider errors marked transient."""
    try:
        state.result()
    except ProviderError as exc:
        return exc.transient
    except Exception:
        return False
    return False


def retry_options(settings: Settings) -> dict[str, Any]:
    """Retries of every castflow task: transient errors only, exponential backoff with jitter."""
    cfg = settings.pipeline
    return {
        "retries": cfg.task_retries,
        "retry_delay_seconds": exponential_backoff(backoff_factor=cfg.retry_backoff_s),
        "retry_jitter_factor": cfg.retry_jitter,
        "retry_condition_fn": is_transient,
    }


def with_policy(task: Task[P, R], settings: Settings) -> Task[P, R]:
    """``task`` with the retry policy of ``settings``: how every task of castflow is run."""
    return task.with_options(**retry_options(settings))


def namespace() -> str:
    """Prefect's cache is shared by every castflow installation using the same result storage; the key
    carries which database and storage it belongs to, so a cached output always exists where it points."""
    rt = get_runtime()
    return hashlib.sha256(f"{rt.settings.database_url}\x00{rt.storage.location}".encode()).hexdigest()[:12]


def stage_cache(key_of: Callable[[dict[str, Any]], str]) -> Callable[[TaskRunContext, dict[str, Any]], str]:
    """A cache-key function: task name, cache version, namespace and the stage key of the parameters."""

    def cache_key(ctx: TaskRunContext, params: dict[str, Any]) -> str:
        return cache_key_for(ctx.task.name, key_of(params))

    return cache_key


def cache_key_for(task_name: str, stage_key: str) -> str:
    return f"castflow-{task_name}-v{CACHE_VERSION}-{namespace()}-{stage_key}"
