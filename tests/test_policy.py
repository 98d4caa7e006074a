"""One retry policy per layer, read off what is really built: every Prefect task castflow runs, and every
HTTP client (providers, storage, callbacks). Task bodies are called through ``.fn()``, as Prefect's own
collections test them, with no Prefect server."""

from __future__ import annotations

import ast
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from prefect.states import Completed, Failed

from castflow import pipeline
from castflow.actors import ensure_sample_actors
from castflow.callbacks import callback_policy
from castflow.models import VideoRequest
from castflow.pipeline import GRAPH
from castflow.providers.base import PermanentError, TransientError
from castflow.providers.http import RetryPolicy
from castflow.runtime import Runtime
from castflow.settings import CallbackSettings, Settings
from castflow.stages import CACHE_VERSION
from tasks.campaign import campaign_row
from tasks.policy import cache_key_for, is_transient, namespace, stage_cache, with_policy
from tasks.video import record, scene_variant, unit_task

ROOT = Path(__file__).resolve().parents[1]


def every_task() -> list[Any]:
    """Every task castflow submits: one per unit of the graph that runs as a task, and the others."""
    return [unit_task(u) for u in GRAPH if u.task is not None] + [record, scene_variant, campaign_row]


def test_every_task_runs_with_the_settings_retry_policy() -> None:
    settings = Settings(pipeline={"task_retries": 4, "retry_backoff_s": 1.5, "retry_jitter": 0.25})  # type: ignore[arg-type]
    names = set()
    for base in every_task():
        task = with_policy(base, settings)
        names.add(task.name)
        assert task.retries == 4, task.name
        assert task.retry_delay_seconds == [1.5, 3.0, 6.0, 12.0], task.name  # exponential, every one
        assert task.retry_jitter_factor == 0.25, task.name
        assert task.retry_condition_fn is is_transient, task.name
    assert {"scene-variant", "speech", "audio-ingest", "lipsync", "quality-check", "captions"} <= names
    assert {"publish", "record", "campaign-row"} <= names


def test_the_retry_condition_retries_transient_provider_errors_only() -> None:
    task = unit_task(GRAPH[0])
    run = SimpleNamespace()
    assert is_transient(task, run, Failed(data=TransientError("HTTP 503", provider="fal")))  # type: ignore[arg-type]
    assert not is_transient(task, run, Failed(data=PermanentError("content policy", provider="fal")))  # type: ignore[arg-type]
    assert not is_transient(task, run, Failed(data=ValueError("a bug")))  # type: ignore[arg-type]
    assert not is_transient(task, run, Completed(data=1))  # type: ignore[arg-type]


def test_cache_keys_carry_task_version_namespace_and_stage_key(rt: Runtime, tmp_path: Path) -> None:
    ctx = SimpleNamespace(task=SimpleNamespace(name="lipsync"))
    key = stage_cache(lambda p: p["k"])(ctx, {"k": "abc"})  # type: ignore[arg-type]
    assert key == f"castflow-lipsync-v{CACHE_VERSION}-{namespace()}-abc"
    assert key == cache_key_for("lipsync", "abc")
    here = namespace()
    # Another installation (another database and storage) gets another namespace: a cached output
    # always exists where it points.
    import os

    from castflow.runtime import reset_runtime
    from castflow.settings import reset_settings

    os.environ["CASTFLOW_DATA_DIR"] = str(tmp_path / "elsewhere")
    try:
        reset_settings()
        reset_runtime()
        assert namespace() != here
    finally:
        del os.environ["CASTFLOW_DATA_DIR"]
        reset_settings()
        reset_runtime()


def test_unit_task_bodies_run_through_fn_without_a_server(rt: Runtime) -> None:
    ensure_sample_actors(rt)
    video = pipeline.prepare_video(rt, VideoRequest(actor="maya", script="Called through fn."))
    done: dict[str, Any] = {}
    for unit in pipeline.plan(video):
        if unit.task is None:
            done[unit.makes] = unit.run(rt, video, done)
            continue
        outcome = unit_task(unit).fn(video, dict(done))
        done[unit.makes] = outcome
    assert done["published"].url == rt.storage.url(video.output_key)
    assert rt.storage.exists(video.output_key)
    # The same unit called again reuses its stage: nothing runs twice.
    again = unit_task(pipeline.steps.SPEECH).fn(video, {})
    assert again.reused
    assert again.stage_key == done["audio"].stage_key


def test_every_http_client_uses_the_settings_policy(tmp_path: Path) -> None:
    from castflow.runtime import build_runtime

    settings = Settings(
        data_dir=tmp_path,
        providers={"fakes": True, "image": "fal", "lipsync": "wavespeed"},  # type: ignore[arg-type]
        storage={"backend": "supabase"},  # type: ignore[arg-type]
        http={"attempts": 7, "base_delay_s": 0.2, "max_delay_s": 9.0, "total_s": 44.0},  # type: ignore[arg-type]
    )
    rt = build_runtime(settings)
    try:
        expected = RetryPolicy(attempts=7, base_delay=0.2, max_delay=9.0, total_seconds=44.0)
        clients = {
            "image": rt.image.client.policy,  # type: ignore[union-attr]
            "speech": rt.speech["fal"].client.policy,  # type: ignore[union-attr]
            "lipsync": rt.lipsync.client.policy,  # type: ignore[union-attr]
            "storage": rt.storage.policy,  # type: ignore[attr-defined]
        }
        assert clients == dict.fromkeys(clients, expected)
    finally:
        rt.close()
    callbacks = callback_policy(CallbackSettings(attempts=3, backoff_s=0.5))
    assert (callbacks.attempts, callbacks.base_delay) == (3, 0.5)


def test_backoff_is_exponential_with_jitter_and_honours_retry_after() -> None:
    policy = RetryPolicy(attempts=6, base_delay=1.0, max_delay=10.0, total_seconds=60.0)
    for attempt, full in ((1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (5, 10.0)):
        delays = {policy.delay(attempt) for _ in range(50)}
        assert all(full / 2 <= d <= full for d in delays)
        assert len(delays) > 1  # jittered
    assert policy.delay(1, hinted=3.0) == 3.0
    assert policy.delay(1, hinted=99.0) == 10.0  # capped


@pytest.mark.parametrize("folder", ["src/castflow", "flows", "tasks"])
def test_no_module_keeps_a_retry_loop_of_its_own(folder: str) -> None:
    """tenacity is used in one place, the HTTP layer's RetryPolicy; Prefect tasks get theirs from
    tasks.policy (no retries= spelled on a decorator, no with_options(retries=...) elsewhere)."""
    for path in sorted((ROOT / folder).rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module == "tenacity":
                assert rel == "src/castflow/providers/http.py", f"{rel} imports tenacity"
            if isinstance(node, ast.keyword) and node.arg in ("retries", "retry_delay_seconds"):
                assert rel == "tasks/policy.py", f"{rel} sets task retries itself"
