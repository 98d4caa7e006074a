"""The ``generate_video`` flow: one video's stage graph on Prefect tasks (scene variant and speech
concurrently, then lip-sync, QC, captions, publish, record), with an optional callback."""

from __future__ import annotations

from typing import Annotated, Any, cast

from prefect import flow, get_run_logger
from prefect.futures import PrefectFuture
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from castflow import callbacks, pipeline, redact
from castflow.budget import Budget, Spend
from castflow.inputs import PathRefused, flow_path
from castflow.models import VideoRequest, VideoResult
from castflow.runtime import get_runtime
from flows.form import label
from tasks import video as t


def _runner() -> TaskRunner[PrefectFuture[Any]]:
    # Bounded: scene variant, speech, then lip-sync; the default pool is unbounded.
    return cast("TaskRunner[PrefectFuture[Any]]", ThreadPoolTaskRunner(max_workers=4))


@flow(
    name="generate-video",
    task_runner=_runner(),
    validate_parameters=True,
)
def generate_video(
    request: Annotated[VideoRequest, label("Video")],
    callback_url: Annotated[str, label("Callback URL")] = "",
    budget_usd: Annotated[float, label("Budget (USD)", ge=0)] = 0.0,
) -> VideoResult:
    """Make one lip-synced video of an actor saying a script (or playing an audio file) in a scene.

    Args:
        request: Who says what where: the actor's key, the script (or an audio file inside the worker's
            parameter roots), the scene, the resolution, captions.
        callback_url: POST the result here when the run ends (signed; see the deployments README).
            Empty: no callback.
        budget_usd: Start no paid stage that would take this video's cost past this. 0: no budget.
    """
    rt = get_runtime()
    redact.install(rt.settings)
    if callback_url:
        try:  # refused before any spend, like bad input
            callbacks.check_url(callback_url, rt.settings.callbacks)
        except callbacks.CallbackRefused as exc:
            raise pipeline.UserError(str(exc)) from exc
    try:
        result = _generate(rt, request, budget_usd or None)
    except Exception as exc:
        if callback_url:
            _call_back(rt, callback_url, {"status": "failed", "actor": request.actor, "error": str(exc)})
        raise
    if callback_url:
        _call_back(rt, callback_url, result.model_dump())
    return result


def _call_back(rt: Any, url: str, payload: dict[str, Any]) -> None:
    """Deliver the result; a receiver that stays down is logged, it does not fail the finished video."""
    try:
        callbacks.deliver(url, payload, rt.settings.callbacks)
    except Exception as exc:
        get_run_logger().warning(
            "callback to %s failed: %s", url.split("?", maxsplit=1)[0], type(exc).__name__
        )


def _generate(rt: Any, request: VideoRequest, budget_usd: float | None) -> VideoResult:
    if request.audio:  # from a deployment, only a file inside the parameter roots
        try:
            audio = flow_path(rt.settings, "generate-video", request.audio, what="audio")
        except PathRefused as exc:
            raise pipeline.UserError(str(exc)) from None
        request = request.model_copy(update={"audio": str(audio)})
    if request.brand:  # likewise the brand kit (whose own files must lie in its folder)
        try:
            kit = flow_path(rt.settings, "generate-video", request.brand, what="brand kit")
        except PathRefused as exc:
            raise pipeline.UserError(str(exc)) from None
        request = request.model_copy(update={"brand": str(kit)})
    video = pipeline.prepare_video(rt, request)  # bad input fails here, before any spend
    for option, why in request.ignored():
        get_run_logger().warning("%s: %s", option, why)
    pipeline.record_start(rt, video)
    spend = Spend(Budget(budget_usd))
    try:
        return t.run_on_tasks(rt, video, watch=spend)
    except pipeline.Skipped as exc:  # the budget stopped it: a failure of this one video, with why
        pipeline.record_failure(rt, video, stage="budget", error=str(exc), used=exc.used)
        raise pipeline.UserError(str(exc)) from None
