"""Thin Prefect tasks around the core pipeline steps: retries, cache keys and task names."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from prefect import Task, task
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import State, TaskRun
from prefect.context import TaskRunContext
from prefect.tasks import exponential_backoff

from castflow import pipeline
from castflow.models import ActorRef, MediaRef, Mouth, StageOutcome, VideoResult
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


def _namespace() -> str:
    # Prefect's cache is shared by every castflow installation using the same result storage; the key
    # carries which database and storage it belongs to, so a cached output always exists where it points.
    rt = get_runtime()
    return hashlib.sha256(f"{rt.settings.database_url}\x00{rt.storage.location}".encode()).hexdigest()[:12]


def _stage_cache(key_of: Callable[[dict[str, Any]], str]) -> Callable[[TaskRunContext, dict[str, Any]], str]:
    def cache_key(ctx: TaskRunContext, params: dict[str, Any]) -> str:
        return f"castflow-{ctx.task.name}-v{CACHE_VERSION}-{_namespace()}-{key_of(params)}"

    return cache_key


RETRIES: dict[str, Any] = {
    "retries": 3,
    "retry_delay_seconds": exponential_backoff(backoff_factor=2),
    "retry_jitter_factor": 0.5,
    "retry_condition_fn": is_transient,
}


def retrying(task: Task[P, R], settings: Settings) -> Task[P, R]:
    """The task with the retry policy of the settings (transient errors only, exponential backoff)."""
    cfg = settings.pipeline
    return task.with_options(
        retries=cfg.task_retries,
        retry_delay_seconds=exponential_backoff(backoff_factor=cfg.retry_backoff_s),
        retry_jitter_factor=cfg.retry_jitter,
    )


@task(
    name="scene-variant",
    task_run_name="scene-variant-{actor.key}",
    cache_key_fn=_stage_cache(
        lambda p: pipeline.scene_variant_key(get_runtime(), p["actor"].image, p["prompt"], p["seed"])
    ),
    **RETRIES,
)
def scene_variant(actor: ActorRef, prompt: str, seed: int) -> StageOutcome:
    """Edit the actor's portrait into the scene."""
    return pipeline.scene_variant(get_runtime(), actor, prompt, seed)


@task(
    name="speech",
    task_run_name="speech-{actor.key}",
    cache_key_fn=_stage_cache(lambda p: pipeline.speech_key(p["actor"].voice, p["script"])),
    **RETRIES,
)
def speech(actor: ActorRef, script: str) -> StageOutcome:
    """Speak the script in the actor's voice."""
    return pipeline.speech(get_runtime(), actor, script)


@task(
    name="audio-ingest",
    cache_key_fn=_stage_cache(lambda p: pipeline.audio_ingest_key(p["sha256"])),
    **RETRIES,
)
def ingest_audio(path: str, sha256: str) -> StageOutcome:
    """Copy a given audio file into storage."""
    return pipeline.ingest_audio(get_runtime(), Path(path), sha256)


@task(
    name="lipsync",
    cache_key_fn=_stage_cache(
        lambda p: pipeline.lipsync_key(get_runtime(), p["image"], p["audio"], p["resolution"], p["seed"])
    ),
    **RETRIES,
)
def lipsync(
    image: MediaRef, audio: MediaRef, resolution: str, seed: int, mouth: Mouth | None
) -> StageOutcome:
    """Make the talking video from one image and one audio."""
    return pipeline.lipsync(get_runtime(), image, audio, resolution=resolution, seed=seed, mouth=mouth)


@task(name="quality-check", cache_policy=NO_CACHE)
def quality_check(video: StageOutcome, audio_seconds: float, resolution: str) -> None:
    """Probe the video: streams, duration, frame rate and size."""
    pipeline.quality_check(get_runtime(), video, audio_seconds=audio_seconds, resolution=resolution)


@task(name="publish", cache_policy=NO_CACHE, **RETRIES)
def publish(video: StageOutcome, key: str) -> str:
    """Copy the checked video to its deterministic key in storage."""
    return pipeline.publish(get_runtime(), video, key)


@task(name="record", cache_policy=NO_CACHE, **RETRIES)
def record(
    prepared: pipeline.PreparedVideo,
    image: StageOutcome,
    audio: StageOutcome,
    video: StageOutcome,
    key: str,
    url: str,
    captions_key: str | None = None,
) -> VideoResult:
    """Write the finished video's row (idempotent per request)."""
    return pipeline.record_success(
        get_runtime(),
        prepared,
        image=image,
        audio=audio,
        video=video,
        key=key,
        url=url,
        captions_key=captions_key,
    )
