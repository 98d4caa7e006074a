"""Campaigns: a validated sheet fanned out into videos, with estimates, a budget, resume and a manifest.

Plain functions (no Prefect); ``flows/run_campaign.py`` runs :func:`run_row` once per row as a task.
A campaign is identified by its name and the sheet's content hash: running the same sheet again resumes
it (finished rows and stages cost nothing), a changed sheet is a new campaign.
"""

from __future__ import annotations

import functools
import re
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from pydantic import BaseModel
from sqlalchemy.orm import Session

from castflow import interrupt, pipeline
from castflow.budget import Budget, Spend
from castflow.db import queries
from castflow.db.tables import CampaignStatus, VideoStatus, utcnow
from castflow.estimates import RealPrices, RowEstimate, estimate_video, estimate_videos
from castflow.models import ActorRef, StageOutcome
from castflow.runtime import Runtime
from castflow.sheets import ActorInfo, Sheet, SheetRow, read_sheet
from castflow.stages import normalise_text
from castflow.storage import put_bytes

# Speech is estimated at this many characters per second; slower than typical TTS (~14-16), so the
# lip-sync estimate errs high. The budget check is repeated with the true length before lip-sync.
ESTIMATE_CHARS_PER_SECOND = 12.0


def slug(text: str, limit: int = 40) -> str:
    """Lowercase ASCII words joined by '-', for file names."""
    words = re.sub(r"[^a-z0-9]+", "-", normalise_text(text).lower()).strip("-")
    return words[:limit].rstrip("-") or "x"


def load_sheet(rt: Runtime, path: Path, brand: Path | None = None, speech: str | None = None) -> Sheet:
    """Read and validate a sheet against the actor library and the image variants in the database
    (``brand``: the campaign's brand kit, for rows that name none)."""
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

    return read_sheet(
        path, settings=rt.settings, actors=actors, variant_owner=variant_owner, brand=brand, speech=speech
    )


def videos_prefix(campaign: str) -> str:
    """Where a campaign's videos are published in storage."""
    return f"campaigns/{slug(campaign, 60)}/"


def output_key(campaign: str, row: SheetRow) -> str:
    """``campaigns/{campaign}/{name}.mp4`` for a row with a ``name`` (a matrix row's, or the sheet's own
    column), else ``campaigns/{campaign}/{row_id}_{actor}_{scene-slug}_{resolution}.mp4``: stable across
    reruns."""
    if named := (row.extra.get("name") or "").strip():
        return f"{videos_prefix(campaign)}{named}.mp4"
    req = row.request
    scene = slug(req.scene) if req.scene else ("variant" if req.image_variant_id else "portrait")
    return f"{videos_prefix(campaign)}{row.row_id}_{req.actor}_{scene}_{req.resolution}.mp4"


def request_key(campaign_id: uuid.UUID, row_id: str) -> str:
    return f"campaign:{campaign_id}:{row_id}"


# ---- rows -----------------------------------------------------------------------------------------------


class RowResult(BaseModel):
    row: int
    row_id: str
    status: str  # succeeded | failed | skipped
    cost_usd: float = 0.0
    video_url: str | None = None
    error: str | None = None
    warning: str | None = None  # what its checks noticed (succeeded rows)


PREVIEW_SUFFIX = "-preview"  # a campaign's previews run as the campaign of this name


def preview_name(campaign: str) -> str:
    return campaign + PREVIEW_SUFFIX


_PREVIEWS: dict[int, Runtime] = {}


def preview_runtime(rt: Runtime) -> Runtime:
    """``rt`` with castflow's free local lip-sync in place of the configured one: a preview pays for the
    scene and the voice (the real ones, kept for the render) and nothing for the lip-sync. Shares the
    runtime's database, storage, locks and provider slots."""
    found = _PREVIEWS.get(id(rt))
    if found is None or found.engine is not rt.engine:
        from castflow.providers.local import PreviewLipSync

        cfg = rt.settings.pipeline
        syncer = PreviewLipSync(fps=cfg.fps, max_audio_seconds=cfg.max_audio_seconds)
        found = _PREVIEWS[id(rt)] = replace(rt, lipsync=syncer)
    return found


def start_row(
    rt: Runtime,
    campaign_name: str,
    campaign_id: uuid.UUID,
    row: SheetRow,
    actor: ActorRef | None = None,
    *,
    preview: bool = False,
) -> pipeline.PreparedVideo:
    """Validate the row's request again (the library may have changed) and mark it running. A
    ``preview`` makes no export profile (the render will)."""
    prepared = pipeline.prepare_video(rt, row.request, actor=actor)
    prepared = replace(
        prepared,
        request_key=request_key(campaign_id, row.row_id),
        output_key=output_key(campaign_name, row),
        formats=() if preview else prepared.formats,
    )
    pipeline.record_start(rt, prepared, campaign_id=campaign_id, row_id=row.row_id, extra=dict(row.extra))
    return prepared


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
    preview: bool = False,
    takes: dict[str, int] | None = None,
) -> RowResult:
    """Make one row's video, within the budget. Failures are recorded on the row and re-raised (so the
    task layer can retry transient ones); a row the budget cannot afford ends ``skipped``. Rows that
    were finished before are left out by the caller (:func:`finished_rows`). A ``preview`` renders the
    lip-sync locally, for free (:func:`preview_runtime`)."""
    if preview:
        rt = preview_runtime(rt)
    prepared = start_row(rt, campaign_name, campaign_id, row, actor, preview=preview)
    if takes:  # stages re-rolled: their newest takes' seeds (castflow campaign reroll)
        prepared = replace(prepared, takes=dict(takes))
    estimate = (
        estimate_video(rt, prepared, row=row.row, row_id=row.row_id) if budget.limit is not None else None
    )
    spend = Spend(budget, estimate, holder=row.row_id)
    if not spend.start():
        assert estimate is not None
        return skip_row(rt, prepared, row, f"budget: this row needs up to ${estimate.total_usd:.2f}")
    payer = pipeline.PAYER.set(campaign_id)  # the jobs this row submits are this campaign's spend
    watch = _Seen(spend)
    try:
        result = pipeline.run_video(rt, prepared, watch=watch)
    except (pipeline.Skipped, interrupt.Interrupted) as exc:  # the budget, or Ctrl-C: a rerun resumes it
        spend.settle()
        return skip_row(rt, prepared, row, str(exc), exc.used)
    except Exception:
        spend.settle()
        raise
    finally:
        pipeline.PAYER.reset(payer)
    spend.settle(result.cost_usd)
    if takes and not preview:
        settle_takes(rt, campaign_id, row.row_id, watch.made)
    return RowResult(
        row=row.row,
        row_id=row.row_id,
        status="succeeded",
        cost_usd=result.cost_usd,
        video_url=result.video_url,
        warning="; ".join(result.warnings) or None,
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
        # Opened before without running (its previews' approvals): this is its first run, not a resume.
        existed = existed and campaign.status is not CampaignStatus.pending
        queries.update_campaign(
            s, campaign_id=campaign.id, status=CampaignStatus.running, budget_usd=budget_usd
        )
        return campaign.id, existed

    opened = rt.db_session(open_it, what="opening the campaign")
    release_dead_holds(rt, opened[0])
    return opened


def release_dead_holds(rt: Runtime, campaign_id: uuid.UUID) -> int:
    """Drop the budget holds of processes known to be gone (on this host: at once); a dead worker's
    hold elsewhere is replaced when its row starts again, and every hold goes when the campaign ends."""
    from castflow import claims

    def drop(c: sa.Connection) -> int:
        dead = [holder for holder, owner in queries.budget_holders(c, campaign_id=campaign_id)
                if claims.is_dead(owner)]  # fmt: skip
        for holder in dead:
            queries.release_budget(c, campaign_id=campaign_id, holder=holder)
        return len(dead)

    return rt.db(drop, what="releasing dead holds")


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
        queries.release_budget(s, campaign_id=campaign_id)  # every row has ended: nothing holds

    rt.db_session(write, what="finishing the campaign")
    return totals


def spent_so_far(rt: Runtime, campaign_id: uuid.UUID) -> float:
    """What the campaign has paid over all its runs (and workers): the stage jobs recorded as its own."""
    return rt.db(functools.partial(queries.campaign_spend, campaign_id=campaign_id), what="reading spend")


def estimate_sheet(rt: Runtime, rows: Iterable[SheetRow], *, chunk: int = 1_000) -> list[RowEstimate]:
    """Every row's estimate, counting each stage shared between rows once (see :func:`iter_estimates`)."""
    return [e for part in iter_estimates(rt, rows, chunk=chunk) for e in part]


def iter_estimates(
    rt: Runtime, rows: Iterable[SheetRow], *, chunk: int = 1_000
) -> Iterator[list[RowEstimate]]:
    """The rows' estimates a chunk at a time, counting each stage shared between rows once. Each actor
    is looked up once, and each unit's finished stages in one query per chunk; what a chunk's videos
    hold is dropped before the next (a caller that prints or sums them keeps nothing). Each row is also
    priced as on the real providers (``RowEstimate.real_usd``)."""
    real = RealPrices(rt)
    actors: dict[str, ActorRef] = {}
    seen: set[str] = set()
    batch: list[tuple[pipeline.PreparedVideo, int, str]] = []
    for r in rows:
        request = r.request  # rebuilt from the row's values on each access
        if request.actor not in actors:
            actors[request.actor] = pipeline.actor_ref(rt, request.actor)
        batch.append((pipeline.prepare_video(rt, request, actor=actors[request.actor]), r.row, r.row_id))
        if len(batch) >= chunk:
            yield estimate_videos(rt, batch, seen=seen, real=real)
            batch = []
    if batch:
        yield estimate_videos(rt, batch, seen=seen, real=real)


ProgressListener = Callable[[int, int, RowResult], None]
_LISTENERS: list[ProgressListener] = []


def add_progress_listener(listener: ProgressListener) -> Callable[[], None]:
    """Be told of each finished row (done, total, result); returns the function that removes it."""
    _LISTENERS.append(listener)
    return lambda: _LISTENERS.remove(listener)


def notify(done: int, total: int, result: RowResult) -> None:
    for listener in list(_LISTENERS):
        listener(done, total, result)


# ---- approval -----------------------------------------------------------------------------------------


def approvals(rt: Runtime, campaign_id: uuid.UUID) -> dict[str, str]:
    """``row_id -> approved|rejected`` of the campaign's decided rows."""
    return rt.db_session(
        lambda s: queries.approvals(s, campaign_id=campaign_id), what="reading the approvals"
    )


def record_approvals(
    rt: Runtime, campaign_id: uuid.UUID, decisions: dict[str, tuple[str, str]], source: str
) -> None:
    def write(s: Session) -> None:
        queries.record_approvals(s, campaign_id=campaign_id, decisions=decisions, source=source)

    rt.db_session(write, what="recording the approvals")


def campaign_of(rt: Runtime, name: str, sheet: Sheet) -> uuid.UUID:
    """The campaign of (name, sheet), created (pending) if new, without starting it: the one approvals
    belong to, before its render runs."""

    def open_it(s: Session) -> uuid.UUID:
        campaign, _ = queries.open_campaign(
            s, name=name, sheet_name=sheet.name, sheet_hash=sheet.content_hash, budget_usd=None
        )
        return campaign.id

    return rt.db_session(open_it, what="opening the campaign")


def write_review(rt: Runtime, name: str, sheet: Sheet) -> tuple[str, str | None]:
    """The review page of campaign ``name``'s previews (castflow.review): written under
    ``<data dir>/reviews/<name>/review.html`` with the videos inside (up to a size) and put in storage
    beside the previews. Returns the file's path and the stored page's URL. Each row shows what its full
    render would cost now (its scene and voice are paid: mostly the lip-sync)."""
    from castflow import reports, review

    preview_id = rt.db_session(
        lambda s: (
            queries.open_campaign(
                s,
                name=preview_name(name),
                sheet_name=sheet.name,
                sheet_hash=sheet.content_hash,
                budget_usd=None,
            )[0].id
        ),
        what="reading the previews",
    )
    videos = rt.db_session(
        lambda s: {
            v.row_id: (v.status, v.video_key, v.error)
            for v in queries.campaign_videos(s, campaign_id=preview_id)
        },
        what="reading the previews",
    )
    decided = approvals(rt, campaign_of(rt, name, sheet))
    costs = {e.row_id: e.total_usd for part in iter_estimates(rt, sheet.rows) for e in part}
    takes = []
    for row in sheet.rows:
        status, key, error = videos.get(row.row_id, (None, None, "not previewed"))
        made = status is VideoStatus.succeeded and key is not None and rt.storage.exists(key)
        takes.append(
            review.Take(
                row=row.row,
                row_id=row.row_id,
                video_key=key if made else None,
                script=row.request.script or "",
                full_render_usd=costs.get(row.row_id, 0.0),
                axes={
                    c: row.extra.get(c) or (row.request.actor if c == "actor" else "")
                    for c in review.AXIS_COLUMNS
                },
                decision=decided.get(row.row_id),
                error=None if made else (error or str(status)),
            )
        )
    dest = rt.settings.data_dir / "reviews" / slug(name, 60)
    dest.mkdir(parents=True, exist_ok=True)
    page = dest / "review.html"
    page.write_text(review.render(name, takes, reports.embedded_links(rt, dest)), encoding="utf-8")
    key = videos_prefix(preview_name(name)) + "review.html"
    stored = review.render(name, takes, reports.published_links(rt, key))
    url = put_bytes(rt.storage, key, stored.encode("utf-8"), "text/html; charset=utf-8")
    return str(page), url


# ---- takes --------------------------------------------------------------------------------------------

TAKE_STAGES = {"scene": ("scene_variant",), "speech": ("speech",), "lipsync": ("lipsync",)}


class _Seen:
    """A row's watch (the budget's) that also keeps what each stage cost: a re-rolled take's spend."""

    def __init__(self, inner: Spend) -> None:
        self.inner = inner
        self.made: dict[str, tuple[str, float]] = {}

    def before(self, unit: Any, rt: Runtime, video: pipeline.PreparedVideo, done: Any) -> None:
        self.inner.before(unit, rt, video, done)

    def after(self, outcome: StageOutcome) -> None:
        self.inner.after(outcome)
        for take, stages in TAKE_STAGES.items():
            if outcome.stage in stages:
                key, cost = self.made.get(take, (outcome.stage_key, 0.0))
                self.made[take] = (key, cost + (0.0 if outcome.reused else outcome.cost_usd))


def takes(rt: Runtime, campaign_id: uuid.UUID) -> dict[str, dict[str, int]]:
    """``row_id -> {stage: seed}`` of the campaign's re-rolled stages."""
    return rt.db_session(lambda s: queries.takes(s, campaign_id=campaign_id), what="reading the takes")


def settle_takes(
    rt: Runtime, campaign_id: uuid.UUID, row_id: str, made: dict[str, tuple[str, float]]
) -> None:
    def write(s: Session) -> None:
        queries.settle_takes(s, campaign_id=campaign_id, row_id=row_id, made=made)

    rt.db_session(write, what="recording the takes")


def reroll(
    rt: Runtime, campaign: str, row_id: str, stage: str, seed: int | None, reason: str
) -> dict[str, Any]:
    """A new take of ``stage`` for the row: recorded with its seed and reason, the row's video kept as
    ``<name>.take<N>.mp4`` beside it and the row set to render again; the next run of the campaign makes
    the new take and what depends on it (nothing else: every other stage is reused)."""
    if stage not in TAKE_STAGES:
        raise pipeline.UserError(f"stage {stage!r}: give scene, speech or lipsync")
    if not reason.strip():
        raise pipeline.UserError("give the reason for the new take (--reason)")

    def work(s: Session) -> dict[str, Any]:
        found = queries.find_campaign(s, name_or_id=campaign)
        if found is None:
            raise pipeline.UserError(f"no campaign {campaign!r}")
        videos = {v.row_id: v for v in queries.campaign_videos(s, campaign_id=found.id)}
        video = videos.get(row_id)
        if video is None:
            raise pipeline.UserError(f"campaign {found.name} has no row {row_id!r} yet (run it first)")
        every = queries.row_takes(s, campaign_id=found.id, row_id=row_id)
        earlier = [t for t in every if t.stage == stage]
        if stage == "speech":
            chosen = seed if seed is not None else len(earlier) + 1  # the take number of the speech
        else:
            chosen = seed if seed is not None else (earlier[-1].seed if earlier else video.seed) + 1
        kept = None
        if video.video_key and rt.storage.exists(video.video_key):
            kept = (
                video.video_key.removesuffix(".mp4") + f".take{len(every) + 1}.mp4"
            )  # the row's takes so far
            rt.storage.put_file(kept, rt.storage.local_path(video.video_key), "video/mp4")
        queries.record_take(
            s,
            campaign_id=found.id,
            row_id=row_id,
            stage=stage,
            seed=chosen,
            reason=reason.strip(),
            kept_key=kept,
        )
        queries.reset_video(s, campaign_id=found.id, row_id=row_id)
        return {"campaign": found.name, "sheet": found.sheet_name, "seed": chosen, "kept": kept}

    return rt.db_session(work, what="recording the take")
