"""The ``generate_video`` flow: scene variant and speech concurrently, then lip-sync, QC, publish, record."""

from __future__ import annotations

from typing import Annotated, Any, cast

from prefect import flow, get_run_logger
from prefect.futures import PrefectFuture, wait
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner
from pydantic import Field

from castflow import callbacks, pipeline, redact
from castflow.models import StageOutcome, VideoRequest, VideoResult
from castflow.runtime import get_runtime
from tasks import video as t


def _runner() -> TaskRunner[PrefectFuture[Any]]:
    # Bounded: scene variant, speech, then lip-sync; the default pool is unbounded.
    return cast("TaskRunner[PrefectFuture[Any]]", ThreadPoolTaskRunner(max_workers=4))


def _outcome(future: PrefectFuture[StageOutcome]) -> StageOutcome:
    """The stage's outcome; a Prefect cache hit counts as reused (it cost nothing this time)."""
    outcome = future.result()
    if future.state.name == "Cached" and not outcome.reused:
        return outcome.model_copy(update={"reused": True})
    return outcome


@flow(
    name="generate-video",
    task_runner=_runner(),
    validate_parameters=True,
)
def generate_video(
    request: VideoRequest,
    callback_url: Annotated[
        str | None,
        Field(description="POST the result here when the run ends (signed; see the deployments README)."),
    ] = None,
) -> VideoResult:
    """Make one lip-synced video of an actor saying a script (or playing an audio file) in a scene."""
    rt = get_runtime()
    redact.install(rt.settings)
    if callback_url:
        try:  # refused before any spend, like bad input
            callbacks.check_url(callback_url, rt.settings.callbacks)
        except callbacks.CallbackRefused as exc:
            raise pipeline.UserError(str(exc)) from exc
    try:
        result = _generate(rt, request)
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


def _generate(rt: Any, request: VideoRequest) -> VideoResult:
    prepared = pipeline.prepare_video(rt, request)  # bad input fails here, before any spend
    pipeline.record_start(rt, prepared)
    stage = "prepare"
    try:
        futures: dict[str, PrefectFuture[StageOutcome]] = {}
        if request.scene:
            futures["scene_variant"] = t.retrying(t.scene_variant, rt.settings).submit(
                prepared.actor, request.scene, request.seed
            )
        if prepared.script is not None:
            futures["speech"] = t.retrying(t.speech, rt.settings).submit(prepared.actor, prepared.script)
        else:
            assert prepared.audio_path is not None
            assert prepared.audio_sha256 is not None
            futures["audio_ingest"] = t.retrying(t.ingest_audio, rt.settings).submit(
                str(prepared.audio_path), prepared.audio_sha256
            )
        wait(list(futures.values()))  # both finish (and are recorded) even when one fails
        results: dict[str, Any] = {}
        for stage, fut in futures.items():
            results[stage] = _outcome(fut)
        image = results.get("scene_variant") or pipeline.given_image(prepared)
        audio = results.get("speech") or results["audio_ingest"]
        assert audio.output.seconds is not None
        stage = "lipsync"
        video = _outcome(
            t.lipsync.submit(
                image.output, audio.output, request.resolution, request.seed, prepared.actor.mouth
            )
        )
        stage = "qc"
        t.quality_check(video, audio.output.seconds, request.resolution)
        key = pipeline.video_key(prepared.actor.key, prepared.request_key, request.resolution)
        final, srt_key = video, None
        if request.captions and prepared.script:
            stage = "captions"
            final, srt_key = pipeline.add_captions(rt, video, audio, prepared.script, key)
        stage = "publish"
        url = t.retrying(t.publish, rt.settings)(final, key)
        stage = "record"
        return t.retrying(t.record, rt.settings)(prepared, image, audio, video, key, url, srt_key)
    except Exception as exc:
        failed = exc.stage if isinstance(exc, pipeline.StageFailed) else stage
        message = exc.message if isinstance(exc, pipeline.StageFailed) else str(exc)
        pipeline.record_failure(rt, prepared, stage=failed, error=redact.redact(message))
        raise
