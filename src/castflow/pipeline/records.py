"""A video's row: started, finished with its outputs and the stages it used, or failed with why."""

from __future__ import annotations

import functools
import uuid

import sqlalchemy as sa

from castflow import media
from castflow.db import queries
from castflow.db.tables import Video, VideoStatus, utcnow
from castflow.models import (
    StageOutcome,
    VideoRequest,
    VideoResult,
)
from castflow.pipeline.errors import StageFailed
from castflow.pipeline.prepare import PreparedVideo
from castflow.pipeline.unit import Done
from castflow.redact import redact
from castflow.runtime import Runtime


def stage_links(outcomes: list[StageOutcome] | None) -> list[tuple[str, str, bool, float]]:
    """(stage, stage key, reused, cost paid) of each outcome, as the video_stage rows record them."""
    return [(o.stage, o.stage_key, o.reused, 0.0 if o.reused else o.cost_usd) for o in outcomes or []]


def _finish(
    rt: Runtime,
    prepared: PreparedVideo,
    used: list[StageOutcome] | None,
    status: VideoStatus,
    **values: object,
) -> str:
    """Write the video's final state and the stages it used, in one transaction; returns its id."""

    def write(s: sa.Connection) -> str:
        video_id = queries.finish_video(
            s, request_key=prepared.request_key, status=status, finished_at=utcnow(), **values
        )
        assert video_id is not None, f"no video row for {prepared.request_key}"
        if used:
            queries.link_video_stages(s, video_id=video_id, links=stage_links(used))
        return str(video_id)

    return rt.db(write, what="recording a video")


# The video row's column of a request field, where the names differ; a field with no column of its name
# (captions) is not stored on the row.
_VIDEO_COLUMN = {"actor": "actor_key", "audio": "audio_source"}


@functools.cache  # the model and the table are fixed: computed once, not per row
def stored_request_fields() -> dict[str, str]:
    """The request's fields that the video row stores, with their column: what reports read back."""
    columns = Video.__table__.c
    fields = {name: _VIDEO_COLUMN.get(name, name) for name in VideoRequest.model_fields}
    return {name: column for name, column in fields.items() if column in columns}


def request_columns(prepared: PreparedVideo) -> dict[str, object]:
    """The request's fields as the video row stores them: the prepared values (the normalised script,
    the resolved audio path, the variant's UUID), the request's own for the rest."""
    req = prepared.request
    resolved: dict[str, object] = {
        "actor": prepared.actor.key,
        "script": prepared.script,
        "audio": str(prepared.audio_path) if prepared.audio_path else None,
        "image_variant_id": uuid.UUID(req.image_variant_id) if req.image_variant_id else None,
    }
    return {
        column: resolved[name] if name in resolved else getattr(req, name)
        for name, column in stored_request_fields().items()
    }


def record_start(rt: Runtime, prepared: PreparedVideo, **extra_values: object) -> str:
    """Create (or reset) the video row as running; returns its id. ``extra_values`` are more columns
    (a campaign row's campaign_id, row_id, extra)."""
    values = {
        **extra_values,
        **request_columns(prepared),
        "status": VideoStatus.running,
        "failed_stage": None,
        "error": None,
        "outputs": None,
    }
    video_id = rt.db(
        functools.partial(queries.upsert_video, request_key=prepared.request_key, values=values),
        what="recording a video",
    )
    return str(video_id)


def record_success(
    rt: Runtime, prepared: PreparedVideo, done: Done, used: list[StageOutcome] | None = None
) -> VideoResult:
    """Mark the video finished from the outcomes of its graph (by role); ``used`` are the ledger stages
    it used, linked to it for the spend reports, and what it cost."""
    image, audio, published = done["image"], done["audio"], done["published"]
    key, url = published.output.key, published.url
    assert url is not None, "the publish unit names the video's URL"
    video_seconds = published.output.seconds
    if video_seconds is None:
        video_seconds = media.probe(rt.storage.local_path(key)).duration
    ledger = list(used or [])
    cost = sum(o.cost_usd for o in ledger if not o.reused)
    # The given image (portrait or chosen variant) counts as reused: nothing was made for it.
    given = image.stage_key not in {o.stage_key for o in ledger}
    reused = sum(1 for o in ledger if o.reused) + (1 if given else 0)
    captions = done["video"].files.get("srt")
    outputs = done["outputs"].outputs if "outputs" in done else ()
    warnings = tuple(w for outcome in done.values() for w in outcome.warnings)
    video_id = _finish(
        rt,
        prepared,
        ledger,
        VideoStatus.succeeded,
        image_key=image.output.key,
        audio_key=audio.output.key,
        video_key=key,
        video_url=url,
        audio_seconds=audio.output.seconds,
        video_seconds=video_seconds,
        cost_usd=cost,
        captions_key=captions,
        outputs=[o.model_dump() for o in outputs] or None,
        warnings=list(warnings) or None,
        failed_stage=None,
        error=None,
    )
    return VideoResult(
        video_id=video_id,
        actor=prepared.actor.key,
        status="succeeded",
        video_key=key,
        video_url=url,
        audio_seconds=audio.output.seconds,
        video_seconds=video_seconds,
        cost_usd=cost,
        reused_stages=reused,
        outputs=outputs,
        warnings=warnings,
    )


def record_error(
    rt: Runtime, prepared: PreparedVideo, exc: BaseException, *, stage: str, used: list[StageOutcome]
) -> VideoResult:
    """The failure bookkeeping of both paths: the failing stage (a StageFailed names its own) and the
    reason, redacted, with the stages used so far."""
    failed = exc.stage if isinstance(exc, StageFailed) else stage
    message = exc.message if isinstance(exc, StageFailed) else str(exc)
    return record_failure(rt, prepared, stage=failed, error=message, used=used)


def record_failure(
    rt: Runtime, prepared: PreparedVideo, *, stage: str, error: str, used: list[StageOutcome] | None = None
) -> VideoResult:
    error = redact(error)
    video_id = _finish(rt, prepared, used, VideoStatus.failed, failed_stage=stage, error=error[:4000])
    return VideoResult(
        video_id=video_id, actor=prepared.actor.key, status="failed", failed_stage=stage, error=error
    )
