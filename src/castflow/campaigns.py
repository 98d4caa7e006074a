"""Campaigns: a validated sheet fanned out into videos, with estimates, a budget, resume and a manifest.

Plain functions (no Prefect); ``flows/run_campaign.py`` runs :func:`run_row` once per row as a task.
A campaign is identified by its name and the sheet's content hash: running the same sheet again resumes
it (finished rows and stages cost nothing), a changed sheet is a new campaign.
"""

from __future__ import annotations

import csv
import functools
import io
import math
import re
import threading
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from pydantic import BaseModel
from sqlalchemy.orm import Session

from castflow import pipeline
from castflow.db import queries
from castflow.db.tables import CampaignStatus, Video, VideoStatus, utcnow
from castflow.models import ActorRef, MediaRef, StageOutcome, VideoRequest
from castflow.providers.wavespeed import WaveSpeedLipSync
from castflow.runtime import Runtime
from castflow.sheets import KNOWN_COLUMNS, ActorInfo, Sheet, SheetRow, escape_cell, read_sheet
from castflow.stages import normalise_text

# Speech is estimated at this many characters per second; slower than typical TTS (~14-16), so the
# lip-sync estimate errs high. The budget check is repeated with the true length before lip-sync.
ESTIMATE_CHARS_PER_SECOND = 12.0


def slug(text: str, limit: int = 40) -> str:
    """Lowercase ASCII words joined by '-', for file names."""
    words = re.sub(r"[^a-z0-9]+", "-", normalise_text(text).lower()).strip("-")
    return words[:limit].rstrip("-") or "x"


def load_sheet(rt: Runtime, path: Path) -> Sheet:
    """Read and validate a sheet against the actor library and the image variants in the database."""
    actors = rt.db_session(
        lambda s: {a.key: ActorInfo(a.key, a.voice_model, a.voice_provider) for a in queries.list_actors(s)},
        what="reading the actors",
    )

    def variant_owner(variant_id: str) -> str | None:
        try:
            uuid.UUID(variant_id)
        except ValueError:
            return None

        def read(s: Session) -> str | None:
            row = queries.get_image_variant(s, variant_id=variant_id)
            if row is None:
                return None
            for actor in queries.list_actors(s):
                if actor.id == row.actor_id:
                    return actor.key
            return None

        return rt.db_session(read, what="reading an image variant")

    return read_sheet(path, settings=rt.settings, actors=actors, variant_owner=variant_owner)


def to_request(row: SheetRow) -> VideoRequest:
    return VideoRequest(
        actor=row.actor,
        script=row.script,
        audio=str(row.audio) if row.audio else None,
        scene=row.scene,
        image_variant_id=row.image_variant_id,
        resolution=row.resolution,
        seed=row.seed,
        captions=row.captions,
    )


def output_key(campaign: str, row: SheetRow) -> str:
    """``campaigns/{campaign}/{row_id}_{actor}_{scene-slug}_{resolution}.mp4``: stable across reruns."""
    scene = slug(row.scene) if row.scene else ("variant" if row.image_variant_id else "portrait")
    return f"campaigns/{slug(campaign, 60)}/{row.row_id}_{row.actor}_{scene}_{row.resolution}.mp4"


def request_key(campaign_id: uuid.UUID, row_id: str) -> str:
    return f"campaign:{campaign_id}:{row_id}"


# ---- estimates and budget -------------------------------------------------------------------------------


class RowEstimate(BaseModel):
    """What a row would cost if run now (stages already done cost nothing)."""

    row: int
    row_id: str
    actor: str
    image_usd: float
    speech_usd: float
    lipsync_usd: float
    speech_seconds: float
    reused_stages: int

    @property
    def total_usd(self) -> float:
        return round(self.image_usd + self.speech_usd + self.lipsync_usd, 6)


def _done(rt: Runtime, key: str) -> bool:
    return _succeeded(rt, key) is not None


def lipsync_cost(rt: Runtime, seconds: float, resolution: str) -> float:
    """The lip-sync price of ``seconds`` of audio, by the provider's own billing rule (what its stage
    will record); the embedded renderer is free."""
    if isinstance(rt.lipsync, WaveSpeedLipSync):
        return rt.lipsync.cost(seconds, resolution)[1]
    return 0.0


def _succeeded(rt: Runtime, key: str) -> MediaRef | None:
    """The output of a finished stage, or None."""
    return rt.db(lambda c: pipeline.finished_output(queries.stage_run_state(c, stage_key=key)))


def estimate_row(
    rt: Runtime, prepared: pipeline.PreparedVideo, row: SheetRow, seen: set[str] | None = None
) -> RowEstimate:
    """Cost estimate of one row without calling any paid API. Stages already done cost nothing; with
    ``seen`` (shared by the rows of a sheet) a stage an earlier row will pay for costs nothing either."""
    seen = set() if seen is None else seen
    prices = rt.settings.prices
    req = prepared.request
    reused = 0
    image_usd = 0.0
    image: MediaRef | None = pipeline.given_image(prepared).output
    image_id = image.sha256 if image else ""
    if req.scene:
        key = pipeline.scene_variant_key(rt, prepared.actor.image, req.scene, req.seed)
        image, image_id = _succeeded(rt, key), key
        if image is not None or key in seen:
            reused += 1
        elif rt.image.name != "local":
            image_usd = prices.image_edit(rt.image.model)
        seen.add(key)
    speech_usd = 0.0
    audio: MediaRef | None = None
    if prepared.script is not None:
        key = pipeline.speech_key(prepared.actor.voice, prepared.script)
        audio, audio_id = _succeeded(rt, key), key
        seconds = (
            audio.seconds if audio and audio.seconds else len(prepared.script) / ESTIMATE_CHARS_PER_SECOND
        )
        if audio is not None or key in seen:
            reused += 1
        elif prepared.actor.voice.provider != "local":
            speech_usd = prices.tts(prepared.actor.voice.model, len(prepared.script))
        seen.add(key)
    else:
        seconds = row.audio_seconds or 0.0
        audio_id = prepared.audio_sha256 or ""
    lip_id = f"lipsync:{image_id}:{audio_id}:{req.resolution}:{req.seed}"
    done = (
        image is not None
        and audio is not None
        and _done(rt, pipeline.lipsync_key(rt, image, audio, req.resolution, req.seed))
    )
    if done or lip_id in seen:
        reused += 1
        lipsync_usd = 0.0
    else:
        lipsync_usd = lipsync_cost(rt, seconds, req.resolution)
    seen.add(lip_id)
    return RowEstimate(
        row=row.row,
        row_id=row.row_id,
        actor=row.actor,
        image_usd=image_usd,
        speech_usd=speech_usd,
        lipsync_usd=lipsync_usd,
        speech_seconds=round(seconds, 2),
        reused_stages=reused,
    )


def estimate_sheet(rt: Runtime, rows: Iterable[SheetRow]) -> list[RowEstimate]:
    """Every row's estimate, counting each stage shared between rows once."""
    seen: set[str] = set()
    return [estimate_row(rt, pipeline.prepare_video(rt, to_request(row)), row, seen) for row in rows]


class Budget:
    """A spending cap shared by the rows of a run: a paid stage starts only if its cost fits."""

    def __init__(self, limit_usd: float | None, spent_usd: float = 0.0) -> None:
        self.limit = limit_usd
        self.spent = spent_usd
        self.reserved = 0.0
        self._lock = threading.Lock()

    def reserve(self, amount: float) -> bool:
        """Hold ``amount`` for a row about to spend it; False when it would cross the cap."""
        if self.limit is None or amount <= 0:
            return True
        with self._lock:
            if self.spent + self.reserved + amount > self.limit + 1e-9:
                return False
            self.reserved += amount
            return True

    def settle(self, reserved: float, actual: float) -> None:
        """Release a reservation and count what was really spent."""
        with self._lock:
            if self.limit is not None and reserved > 0:
                self.reserved = max(0.0, self.reserved - reserved)
            self.spent += actual


# ---- rows -----------------------------------------------------------------------------------------------


class RowResult(BaseModel):
    row: int
    row_id: str
    status: str  # succeeded | failed | skipped
    cost_usd: float = 0.0
    video_url: str | None = None
    error: str | None = None


def start_row(
    rt: Runtime, campaign_id: uuid.UUID, row: SheetRow, actor: ActorRef | None = None
) -> pipeline.PreparedVideo:
    """Validate the row's request again (the library may have changed) and mark it running."""
    prepared = pipeline.prepare_video(rt, to_request(row), actor=actor)
    prepared = _with_key(prepared, request_key(campaign_id, row.row_id))
    pipeline.record_start(rt, prepared, campaign_id=campaign_id, row_id=row.row_id, extra=dict(row.extra))
    return prepared


def _with_key(prepared: pipeline.PreparedVideo, key: str) -> pipeline.PreparedVideo:
    from dataclasses import replace

    return replace(prepared, request_key=key)


def finished_rows(rt: Runtime, campaign_id: uuid.UUID) -> dict[str, RowResult]:
    """The rows of a campaign that already have their video (one query): a resumed run skips them."""

    def read(s: Session) -> list[tuple[str | None, str | None, str | None]]:
        return [
            (v.row_id, v.video_key, v.video_url)
            for v in queries.campaign_videos(s, campaign_id=campaign_id)
            if v.status is VideoStatus.succeeded and v.video_key and v.row_id
        ]

    done = rt.db_session(read, what="reading finished rows")
    return {
        row_id: RowResult(row=0, row_id=row_id, status="succeeded", video_url=url)
        for row_id, key, url in done
        if row_id and key and rt.storage.exists(key)
    }


def run_row(
    rt: Runtime,
    *,
    campaign_id: uuid.UUID,
    campaign_name: str,
    row: SheetRow,
    budget: Budget,
    actor: ActorRef | None = None,
) -> RowResult:
    """Make one row's video, within the budget. Failures are recorded on the row and re-raised (so the
    task layer can retry transient ones); a row the budget cannot afford ends ``skipped``. Rows that
    were finished before are left out by the caller (:func:`finished_rows`)."""
    prepared = start_row(rt, campaign_id, row, actor)
    estimate = estimate_row(rt, prepared, row) if budget.limit is not None else None
    held = estimate.total_usd if estimate else 0.0
    if not budget.reserve(held):
        return skip_row(rt, prepared, row, f"budget: this row needs up to ${held:.2f}")

    spent = 0.0

    def on_stage(outcome: StageOutcome) -> None:
        nonlocal spent
        if not outcome.reused:
            spent += outcome.cost_usd

    def before_lipsync(image: StageOutcome, audio: StageOutcome) -> None:
        """Re-check the budget with the true audio length before the most expensive stage."""
        nonlocal held
        if estimate is None:  # no budget
            return
        req = prepared.request
        seconds = audio.output.seconds or 0.0
        key = pipeline.lipsync_key(rt, image.output, audio.output, req.resolution, req.seed)
        exact = 0.0 if _done(rt, key) else lipsync_cost(rt, seconds, req.resolution)
        delta = exact - estimate.lipsync_usd
        if delta > 0:
            if not budget.reserve(delta):
                raise pipeline.Skipped(f"budget: the lip-sync of {seconds:.1f} s would cost ${exact:.2f}")
            held += delta

    payer = pipeline.PAYER.set(campaign_id)  # the jobs this row submits are this campaign's spend
    try:
        result = pipeline.make_video(
            rt,
            prepared,
            key=output_key(campaign_name, row),
            before_lipsync=before_lipsync,
            on_stage=on_stage,
        )
    except pipeline.Skipped as exc:
        budget.settle(held, spent)
        return skip_row(rt, prepared, row, str(exc), exc.used)
    except Exception:
        budget.settle(held, spent)
        raise
    finally:
        pipeline.PAYER.reset(payer)
    budget.settle(held, result.cost_usd)
    return RowResult(
        row=row.row,
        row_id=row.row_id,
        status="succeeded",
        cost_usd=result.cost_usd,
        video_url=result.video_url,
    )


def skip_row(
    rt: Runtime,
    prepared: pipeline.PreparedVideo,
    row: SheetRow,
    reason: str,
    used: list[StageOutcome] | None = None,
) -> RowResult:
    def write(s: sa.Connection) -> None:
        video_id = queries.finish_video(
            s,
            request_key=prepared.request_key,
            status=VideoStatus.skipped,
            finished_at=utcnow(),
            failed_stage=None,
            error=reason,
        )
        if video_id is not None and used:
            queries.link_video_stages(s, video_id=video_id, links=pipeline.stage_links(used))

    rt.db(write, what="recording a skipped row")
    return RowResult(row=row.row, row_id=row.row_id, status="skipped", error=reason)


def record_invalid_rows(rt: Runtime, campaign_id: uuid.UUID, sheet: Sheet) -> list[RowResult]:
    """Rows refused by validation (``--skip-invalid``): recorded as skipped with their problems."""
    results = []
    by_row: dict[int, list[str]] = {}
    for problem in sheet.errors:
        if problem.row is not None and problem.row > 1:
            by_row.setdefault(problem.row, []).append(str(problem))
    for line, reasons in sorted(by_row.items()):
        row_id = f"row-{line}"
        error = "invalid: " + "; ".join(reasons)
        values = {
            "campaign_id": campaign_id,
            "row_id": row_id,
            "actor_key": "-",
            "resolution": "-",
            "status": VideoStatus.skipped,
            "error": error[:4000],
            "extra": {"row": line},
        }
        invalid_key = request_key(campaign_id, f"invalid-{line}")
        rt.db(
            functools.partial(queries.upsert_video, request_key=invalid_key, values=values),
            what="recording an invalid row",
        )
        results.append(RowResult(row=line, row_id=row_id, status="skipped", error=error))
    return results


# ---- campaign -----------------------------------------------------------------------------------------


def open_campaign(rt: Runtime, name: str, sheet: Sheet, budget_usd: float | None) -> tuple[uuid.UUID, bool]:
    def open_it(s: Session) -> tuple[uuid.UUID, bool]:
        campaign, existed = queries.open_campaign(
            s, name=name, sheet_name=sheet.name, sheet_hash=sheet.content_hash, budget_usd=budget_usd
        )
        queries.update_campaign(
            s, campaign_id=campaign.id, status=CampaignStatus.running, budget_usd=budget_usd
        )
        return campaign.id, existed

    return rt.db_session(open_it, what="opening the campaign")


def finish_campaign(rt: Runtime, campaign_id: uuid.UUID, results: Iterable[RowResult]) -> dict[str, Any]:
    results = list(results)
    totals: dict[str, Any] = {
        "rows": len(results),
        "succeeded": sum(r.status == "succeeded" for r in results),
        "failed": sum(r.status == "failed" for r in results),
        "skipped": sum(r.status == "skipped" for r in results),
        # Over every run of the campaign, from the ledger: each job it paid for, counted once.
        "cost_usd": round(spent_so_far(rt, campaign_id), 6),
        "run_cost_usd": round(sum(r.cost_usd for r in results), 6),  # what this run added
    }
    status = CampaignStatus.finished if totals["failed"] == 0 else CampaignStatus.failed

    def write(s: Session) -> None:
        queries.update_campaign(
            s, campaign_id=campaign_id, status=status, totals=totals, finished_at=utcnow()
        )

    rt.db_session(write, what="finishing the campaign")
    return totals


def spent_so_far(rt: Runtime, campaign_id: uuid.UUID) -> float:
    """What the campaign has paid over all its runs (and workers): the stage jobs recorded as its own."""
    return rt.db(functools.partial(queries.campaign_spend, campaign_id=campaign_id), what="reading spend")


# ---- manifest -------------------------------------------------------------------------------------------

BASE_COLUMNS = ["row", *KNOWN_COLUMNS]
RESULT_COLUMNS = [
    "status",
    "failed_stage",
    "error",
    "video_key",
    "video_url",
    "audio_seconds",
    "video_seconds",
    "cost_usd",
]


def manifest_rows(
    rt: Runtime, campaign_id: uuid.UUID, sheet: Sheet
) -> tuple[list[str], list[dict[str, Any]]]:
    """One record per sheet row: its inputs, passthrough columns and outcome."""
    videos = rt.db_session(
        lambda s: {v.row_id: v for v in queries.campaign_videos(s, campaign_id=campaign_id)},
        what="reading the campaign's videos",
    )
    extras = [c for c in sheet.columns if c not in BASE_COLUMNS]
    records = []
    for row in sheet.rows:
        video: Video | None = videos.get(row.row_id)
        record: dict[str, Any] = {
            "row": row.row,
            "row_id": row.row_id,
            "actor": row.actor,
            "script": row.script or "",
            "audio": str(row.audio) if row.audio else "",
            "scene": row.scene or "",
            "image_variant_id": row.image_variant_id or "",
            "resolution": row.resolution,
            "seed": row.seed,
            "captions": "yes" if row.captions else "no",
            **{c: row.extra.get(c, "") for c in extras},
        }
        record.update(_outcome(video))
        records.append(record)
    for line in sorted(sheet.invalid_rows):
        video = videos.get(f"row-{line}")
        records.append({"row": line, "row_id": f"row-{line}", **_outcome(video)})
    records.sort(key=lambda r: int(r["row"]))
    return BASE_COLUMNS + extras + RESULT_COLUMNS, records


def _outcome(video: Video | None) -> dict[str, Any]:
    if video is None:
        return {"status": "pending"}
    return {
        "status": video.status.value,
        "failed_stage": video.failed_stage or "",
        "error": video.error or "",
        "video_key": video.video_key or "",
        "video_url": video.video_url or "",
        "audio_seconds": "" if video.audio_seconds is None else round(video.audio_seconds, 3),
        "video_seconds": "" if video.video_seconds is None else round(video.video_seconds, 3),
        "cost_usd": round(video.cost_usd, 6),
    }


def manifest_csv(columns: list[str], records: list[dict[str, Any]]) -> str:
    """The manifest as CSV text; formula-like cells are escaped so a spreadsheet shows them as text."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for record in records:
        writer.writerow({k: escape_cell(v) if isinstance(v, str) else v for k, v in record.items()})
    return out.getvalue()


def write_manifest(
    rt: Runtime, campaign_id: uuid.UUID, campaign_name: str, sheet: Sheet, dest_dir: Path
) -> tuple[Path, str]:
    """Write the manifest next to the outputs (storage) and to ``dest_dir``; returns the local path and URL."""
    columns, records = manifest_rows(rt, campaign_id, sheet)
    dest_dir.mkdir(parents=True, exist_ok=True)
    path = dest_dir / f"{slug(campaign_name, 60)}-manifest.csv"
    path.write_text(manifest_csv(columns, records), encoding="utf-8")
    url = rt.storage.put_file(f"campaigns/{slug(campaign_name, 60)}/manifest.csv", path, "text/csv")
    return path, url


ProgressListener = Callable[[int, int, RowResult], None]
_LISTENERS: list[ProgressListener] = []


def add_progress_listener(listener: ProgressListener) -> Callable[[], None]:
    """Be told of each finished row (done, total, result); returns the function that removes it."""
    _LISTENERS.append(listener)
    return lambda: _LISTENERS.remove(listener)


def notify(done: int, total: int, result: RowResult) -> None:
    for listener in list(_LISTENERS):
        listener(done, total, result)


def budget_total(estimates: Iterable[RowEstimate]) -> float:
    return round(math.fsum(e.total_usd for e in estimates), 6)
