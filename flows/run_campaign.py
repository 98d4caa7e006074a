"""The ``run_campaign`` flow: a validated sheet fanned out into videos, one task per row.

Rows run with bounded concurrency; rows that share a stage (same actor and scene, same script and voice)
share one paid job; per-provider limits cap jobs in flight; a budget stops paid stages that could cross
it; every row ends succeeded, failed or skipped; running it again resumes without paying twice.
"""

from __future__ import annotations

import functools
import queue
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, cast

from prefect import flow
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.client.schemas.objects import State
from prefect.futures import PrefectFuture
from prefect.states import Cancelled, Failed
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner
from pydantic import BaseModel

from castflow import campaigns, interrupt, manifest, pipeline, redact
from castflow.budget import LedgerBudget
from castflow.campaigns import RowResult
from castflow.db import queries
from castflow.db.retry import DatabaseUnavailable
from castflow.estimates import RowEstimate, budget_total, real_total
from castflow.inputs import PathRefused, SheetSource, flow_path, sheet_source
from castflow.runtime import get_runtime
from castflow.sheets import SheetInvalid, SheetRow
from castflow.storage import put_bytes
from flows.form import label
from tasks.campaign import campaign_row, close_run, open_run
from tasks.policy import with_policy


class CampaignResult(BaseModel):
    campaign_id: str | None
    name: str
    sheet_hash: str
    dry_run: bool
    resumed: bool = False
    rows: int
    succeeded: int = 0
    failed: int = 0
    skipped: int = 0
    cost_usd: float = 0.0
    estimate_usd: float = 0.0  # on the configured providers (what --budget compares)
    estimate_real_usd: float = 0.0  # the same sheet on the real providers (the vendors' price lists)
    manifest_path: str | None = None
    manifest_url: str | None = None
    warnings: list[str] = []
    results: list[RowResult] = []
    estimates: list[RowEstimate] = []
    mode: str = "render"  # render | preview
    review_path: str | None = None  # the previews' review page (a preview run, or one that asked)
    review_url: str | None = None
    not_approved: int = 0  # rows left out of the render: not approved (skipped)


def _runner() -> TaskRunner[PrefectFuture[Any]]:
    # The flow keeps at most row_concurrency rows submitted; the pool only needs to be at least that big.
    return cast("TaskRunner[PrefectFuture[Any]]", ThreadPoolTaskRunner(max_workers=512))


@flow(name="run-campaign", task_runner=_runner(), validate_parameters=True)
def run_campaign(
    sheet: Annotated[str, label("Sheet", min_length=1)],
    name: Annotated[str, label("Campaign name", max_length=200)] = "",
    dry_run: Annotated[bool, label("Estimate only")] = False,
    budget_usd: Annotated[float, label("Budget (USD)", ge=0)] = 0.0,
    skip_invalid: Annotated[bool, label("Run the valid rows")] = False,
    row_concurrency: Annotated[int, label("Rows at once", ge=0, le=512)] = 0,
    brand: Annotated[str, label("Brand kit")] = "",
    mode: Annotated[Literal["render", "preview"], label("Mode")] = "render",
    approval: Annotated[bool, label("Ask for approval before the render")] = False,
    approved_only: Annotated[bool, label("Render only approved rows")] = False,
    work_pool: Annotated[str, label("Work pool", max_length=200)] = "",
) -> CampaignResult:
    """Run a campaign sheet: validate every row first, then make the videos (or only estimate them).

    Args:
        sheet: Paste the sheet here (copy the cells from your spreadsheet, header row included: tabs,
            commas or semicolons), or name a file: spring.csv for the file in the worker's sheets folder
            (CASTFLOW_DATA_DIR/sheets), or storage:campaigns/spring.csv for a sheet in castflow's storage.
        name: Running the same sheet under the same name again resumes it, paying for nothing twice.
            Empty: the sheet's file name (pasted-HASH for a pasted sheet).
        dry_run: Price every row, here and on the real providers; run nothing.
        budget_usd: Start no paid stage that could take the campaign's spend over this. 0: no budget.
        skip_invalid: Run the valid rows and report the others; off, a sheet with any problem runs nothing.
        row_concurrency: Rows in flight at once. 0: the worker's setting
            (CASTFLOW_CAMPAIGN__ROW_CONCURRENCY, default 16).
        brand: A brand kit (YAML) for the rows whose brand column is empty: brand.yaml for the file in
            the worker's sheets folder, or a path inside CASTFLOW_CAMPAIGN__INPUT_ROOTS. Empty: none.
        mode: preview pays only for the scenes and voices, renders the free local lip-sync of every row
            and writes a review page (approve or reject each take there); render makes the videos.
        approval: Preview first, then pause on a form listing the rows; on resume render only the rows
            approved there (every paid preview stage is reused).
        approved_only: Render only the rows approved before (castflow campaign approve, or a form).
        work_pool: Run the rows on this Prefect work pool, in chunks that any of its workers picks up
            (the campaign-chunk deployment). Empty: the worker's setting (CASTFLOW_CAMPAIGN__WORK_POOL);
            unset too, every row runs in this run's process.
    """
    rt = get_runtime()
    redact.install(rt.settings)
    try:  # from a deployment, only a sheet inside the parameter roots (an API caller's choice otherwise)
        source = sheet_source(rt.settings, rt.storage, sheet)
        kit = (
            flow_path(rt.settings, "run-campaign", brand.strip(), what="brand kit") if brand.strip() else None
        )
    except PathRefused as exc:
        raise pipeline.UserError(str(exc)) from None
    params = _Options(
        name,
        dry_run,
        budget_usd or None,
        skip_invalid,
        row_concurrency or None,
        kit,
        mode,
        approval,
        approved_only,
        work_pool.strip() or None,
        sheet,
        source.path,
        brand.strip(),
    )
    return _run(rt, source, params)


@dataclass(frozen=True)
class _Options:
    """The form's options as the run reads them (0 and empty meaning 'none' in the form)."""

    name: str
    dry_run: bool
    budget_usd: float | None
    skip_invalid: bool
    row_concurrency: int | None
    brand: Path | None = None
    mode: str = "render"
    approval: bool = False
    approved_only: bool = False
    work_pool: str | None = None  # run the rows on this work pool (None: the setting)
    sheet_ref: str = ""  # the sheet as the run was given it (a chunk on the pool reads it so)
    sheet_path: Path | None = None  # where this process read it
    brand_ref: str = ""


def _run(rt: Any, source: SheetSource, params: _Options) -> CampaignResult:
    sheet = campaigns.load_sheet(rt, source.path, brand=params.brand)
    name = params.name or sheet.default_name or source.default_name
    if sheet.sheet_errors or (sheet.errors and not params.skip_invalid):
        # Refused before anything ran: one readable message and a table of every problem, no traceback.
        return cast("CampaignResult", _refused(sheet.name, name, sheet.problems))
    warnings = [str(p) for p in sheet.warnings]
    estimates: list[RowEstimate] = []
    if params.dry_run or params.budget_usd is not None:
        estimates = campaigns.estimate_sheet(rt, sheet.rows)
    estimate_total = budget_total(estimates)
    if params.dry_run:
        return CampaignResult(
            campaign_id=None,
            name=name,
            sheet_hash=sheet.content_hash,
            dry_run=True,
            rows=sheet.total_rows,
            estimate_usd=estimate_total,
            estimate_real_usd=real_total(estimates),
            warnings=warnings,
            estimates=estimates,
        )

    only: set[str] | None = None  # the rows to render (approved), None: every row
    review: tuple[str, str | None] | None = None
    if params.mode == "preview" or params.approval:
        previewed = _rows(
            rt, sheet, campaigns.preview_name(name), params, warnings, estimate_total, preview=True
        )
        if not isinstance(previewed, CampaignResult):
            return previewed  # interrupted or stopped by an outage: as a render would end
        review = campaigns.write_review(rt, name, sheet)
        _review_artifact(name, review)
        if params.mode == "preview":
            return previewed.model_copy(
                update={"mode": "preview", "review_path": review[0], "review_url": review[1]}
            )
        only = _ask_approval(rt, name, sheet, previewed)
    elif params.approved_only:
        decided = campaigns.approvals(rt, campaigns.campaign_of(rt, name, sheet))
        only = {row_id for row_id, decision in decided.items() if decision == "approved"}
    result = _rows(rt, sheet, name, params, warnings, estimate_total, only=only)
    if isinstance(result, CampaignResult) and review is not None:
        result = result.model_copy(update={"review_path": review[0], "review_url": review[1]})
    return result


def _rows(
    rt: Any,
    sheet: Any,
    name: str,
    params: _Options,
    warnings: list[str],
    estimate_total: float,
    *,
    preview: bool = False,
    only: set[str] | None = None,
) -> CampaignResult:
    """Every row of the sheet as campaign ``name``: its videos, or with ``preview`` its previews (the
    lip-sync rendered locally); ``only``: the row ids to make (the others end skipped, not approved)."""
    campaign_id, resumed = campaigns.open_campaign(rt, name, sheet, params.budget_usd)
    key = str(campaign_id)
    results: list[RowResult] = campaigns.record_invalid_rows(rt, campaign_id, sheet) if sheet.errors else []
    total = len(sheet.rows) + len(results)
    progress = _Progress(total, len(results), name)
    cfg = rt.settings
    limit = params.row_concurrency or cfg.campaign.row_concurrency
    finished = campaigns.finished_rows(rt, campaign_id) if resumed else {}
    left_out = 0
    for row in sheet.rows:
        if row.row_id in finished:  # resumed: the video is there already, nothing to run or pay
            earlier = finished[row.row_id].model_copy(update={"row": row.row})
            results.append(earlier)
            progress.step(earlier)
        elif only is not None and row.row_id not in only:  # not approved: not rendered
            left_out += 1
            skipped = RowResult(
                row=row.row, row_id=row.row_id, status="skipped",
                error="not approved (castflow campaign approve, or the run's approval form)",
            )  # fmt: skip
            results.append(skipped)
            progress.step(skipped)
    rows = [r for r in sheet.rows if r.row_id not in finished and (only is None or r.row_id in only)]
    pool = params.work_pool or cfg.campaign.work_pool
    outage: DatabaseUnavailable | None = None
    try:
        if pool and rows:
            from flows import pool as on_pool

            made, not_started = on_pool.run_rows(
                rt, campaign_id, name, rows, progress, pool=pool, sheet=params.sheet_ref,
                sheet_path=params.sheet_path or Path(sheet.name), brand=params.brand_ref,
                preview=preview, row_concurrency=params.row_concurrency,
            )  # fmt: skip
        else:
            run = open_run(
                key,
                LedgerBudget(rt, campaign_id, params.budget_usd),
                preview=preview,
                takes=campaigns.takes(rt, campaign_id) if resumed else None,
            )
            try:
                made, not_started, outage = drive(rt, key, name, rows, limit, run, progress)
            finally:
                close_run(key)
        results += made
    finally:
        progress.close()
    if outage is not None:
        raise DatabaseUnavailable(f"{outage}; run the campaign again to resume") from None
    if interrupt.stopping():  # Ctrl-C: the run ends Cancelled with one line (a rerun resumes it)
        message = _interrupted(rt, campaign_id, name, results, not_started)
        return cast("CampaignResult", Cancelled(message=message))
    totals = campaigns.finish_campaign(rt, campaign_id, results)
    manifest_path, manifest_url = manifest.write_manifest(
        rt, campaign_id, name, sheet, rt.settings.data_dir / "manifests"
    )
    result = CampaignResult(
        campaign_id=key,
        name=name,
        sheet_hash=sheet.content_hash,
        dry_run=False,
        resumed=resumed,
        rows=total,
        succeeded=totals["succeeded"],
        failed=totals["failed"],
        skipped=totals["skipped"],
        cost_usd=totals["cost_usd"],
        estimate_usd=estimate_total,
        manifest_path=str(manifest_path),
        manifest_url=manifest_url,
        warnings=warnings,
        results=sorted(results, key=lambda r: r.row),
        not_approved=left_out,
    )
    if preview:  # the review page stands for the report
        return result
    report_url = _report_artifacts(rt, result) if rt.settings.campaign.publish_report else None
    _summary_artifact(result, report_url)
    _videos_artifact(rt, campaign_id, result, sheet.rows)
    return result


def drive(
    rt: Any,
    campaign_id: str,
    name: str,
    rows: list[SheetRow],
    limit: int,
    run: Any,
    progress: _Progress,
    *,
    run_key: str = "",
    keep_going: Any = None,
) -> tuple[list[RowResult], int, DatabaseUnavailable | None]:
    """Run ``rows`` as row tasks, at most ``limit`` at once, each finished row counted on ``progress``.
    Returns the rows' results, how many were never started (Ctrl-C, an outage, or ``keep_going()``
    turning false) and the database outage that stopped it, if one did."""
    row_task = with_policy(campaign_row, rt.settings)
    results: list[RowResult] = []
    pending = list(reversed(rows))
    # Finished rows arrive on a queue (a callback per task), in the order they finish.
    finished_q: queue.SimpleQueue[tuple[PrefectFuture[RowResult], SheetRow]] = queue.SimpleQueue()
    in_flight = 0
    outage: DatabaseUnavailable | None = None

    def may_start() -> bool:
        return not interrupt.stopping() and (keep_going is None or keep_going())

    while (pending and may_start()) or in_flight:
        while pending and in_flight < limit and may_start():  # Ctrl-C: no new row
            row = pending.pop()
            future = row_task.submit(campaign_id, name, row, run_key)
            future.add_done_callback(functools.partial(_on_done, finished_q, row))
            in_flight += 1
        if not in_flight:
            break
        future, row = _next_done(finished_q)
        in_flight -= 1
        outcome = run.results.pop(row.row_id, None) or _row_result(future, row)
        results.append(outcome)
        progress.step(outcome)
        if outcome.status == "failed" and outage is None and (outage := _outage(future)) is not None:
            # The database stayed down through a row's whole retry window: start nothing more
            # (nothing could be recorded); the rows in flight end, and a rerun resumes.
            pending.clear()
    return results, len(pending), outage


FORM_ROWS = 200  # rows listed one by one on the approval form (more: approve all, or by id)


def _approval_form(sheet: Any) -> type[Any]:
    """The approval form: a box per row (up to FORM_ROWS, titled by its name and script), or the ids to
    approve, or all of them."""
    from prefect.input import RunInput
    from pydantic import Field, create_model

    fields: dict[str, Any] = {
        "approve_all": (bool, Field(default=False, title="Approve every row")),
        "approve_rows": (
            str,
            Field(default="", title="Or approve these rows", description="Row ids, separated by commas"),
        ),
    }
    for i, row in enumerate(sheet.rows[:FORM_ROWS]):
        title = f"{row.row_id} · {row.extra.get('name') or row.request.actor}"
        script = (row.request.script or "")[:120]
        fields[f"row_{i}"] = (bool, Field(default=False, title=title[:120], description=script))
    return create_model("ApproveRows", __base__=RunInput, **fields)


def _ask_approval(rt: Any, name: str, sheet: Any, previewed: CampaignResult) -> set[str]:
    """Pause the run on the approval form; record and return the approved rows when it is resumed. A
    decision made before (castflow campaign approve) is kept for a row the form leaves unticked."""
    from prefect import get_run_logger
    from prefect.flow_runs import pause_flow_run

    logger = get_run_logger()
    ready = [r.row_id for r in previewed.results if r.status == "succeeded"]
    logger.info(
        "%s: %d preview(s) ready; waiting for approval (the review page is in the artifacts)",
        name,
        len(ready),
    )
    answer = pause_flow_run(
        wait_for_input=_approval_form(sheet),
        timeout=rt.settings.campaign.approval_timeout_s,
        poll_interval=rt.settings.campaign.approval_poll_s,
        key="approval",
    )
    given = {part.strip() for part in str(answer.approve_rows or "").split(",") if part.strip()}
    known = {row.row_id for row in sheet.rows}
    if unknown := sorted(given - known):
        logger.warning("not rows of this campaign, ignored: %s", ", ".join(unknown[:10]))
    ticked = {
        row.row_id for i, row in enumerate(sheet.rows[:FORM_ROWS]) if getattr(answer, f"row_{i}", False)
    }
    approved = known if answer.approve_all else (given & known) | ticked
    campaign_id = campaigns.campaign_of(rt, name, sheet)
    earlier = campaigns.approvals(rt, campaign_id)
    decisions = dict.fromkeys(approved, ("approved", ""))
    decisions |= {
        row_id: ("rejected", "")
        for row_id in known - approved
        if earlier.get(row_id) != "approved"  # approved before: the form did not take it back
    }
    campaigns.record_approvals(rt, campaign_id, decisions, "prefect")
    chosen = {row_id for row_id, (decision, _) in decisions.items() if decision == "approved"}
    chosen |= {row_id for row_id, decision in earlier.items() if decision == "approved"}
    logger.info("%s: %d row(s) approved; rendering them", name, len(chosen))
    return chosen


def _review_artifact(name: str, review: tuple[str, str | None]) -> None:
    from prefect.artifacts import create_link_artifact

    path, url = review
    create_link_artifact(
        link=url or Path(path).as_uri(),
        link_text=f"Review the previews of {name}",
        key=_artifact_key(name, "review"),
        description=f"{name}: a player per row, its axes and the cost of its full render; approve or reject each",
    )


def _refused(sheet_name: str, name: str, problems: list[Any]) -> State[Any]:
    """The run's end for a sheet that cannot run: Failed with the first problems in its message, every
    one in a table artifact (row, column, problem), the SheetInvalid as its result for callers."""
    refused = SheetInvalid(sheet_name, problems)
    errors = [p for p in problems if p.severity == "error"]
    table = [
        {
            "row": p.row if p.row is not None else "sheet",
            "column": p.column or "",
            "problem": redact.redact(p.reason),
        }
        for p in errors
    ]
    create_table_artifact(
        key=_artifact_key(name, "problems"),
        table=table,
        description=f"{sheet_name}: {len(errors)} problem(s); nothing was run",
    )
    shown = "; ".join(str(p) for p in errors[:3]) + (
        f"; and {len(errors) - 3} more" if len(errors) > 3 else ""
    )
    message = (
        f"{sheet_name}: {len(errors)} error(s), nothing was run: {shown} (all in the 'problems' artifact)"
    )
    return Failed(message=redact.redact(message), data=refused)


def _next_done(
    finished_q: queue.SimpleQueue[tuple[PrefectFuture[RowResult], SheetRow]],
) -> tuple[PrefectFuture[RowResult], SheetRow]:
    """The next finished row, waiting in short steps (a signal handler runs between them)."""
    while True:
        try:
            return finished_q.get(timeout=0.5)
        except queue.Empty:
            continue


def _interrupted(
    rt: Any, campaign_id: uuid.UUID, name: str, results: list[RowResult], not_started: int
) -> str:
    """One line for a run stopped by Ctrl-C: what finished, what waits at the providers, what is left."""
    done = sum(r.status == "succeeded" for r in results)
    cut = sum(r.status == "skipped" and (r.error or "").startswith("interrupted") for r in results)
    jobs = rt.db(lambda c: queries.jobs_in_flight(c, campaign_id=campaign_id), what="counting jobs")
    at_providers = (
        f"{jobs} job(s) still at the providers (recorded: the rerun fetches them, paying nothing twice)"
    )
    return f"{name}: interrupted: {done} row(s) finished, {cut + not_started} left to run, {at_providers}"


def _on_done(
    finished_q: queue.SimpleQueue[tuple[PrefectFuture[RowResult], SheetRow]],
    row: SheetRow,
    future: PrefectFuture[RowResult],
) -> None:
    finished_q.put((future, row))


def _outage(future: PrefectFuture[RowResult]) -> DatabaseUnavailable | None:
    """The database outage a row task ended with, if that is how it ended."""
    try:
        future.result()
    except DatabaseUnavailable as exc:
        return exc
    except Exception:
        return None
    return None


def _row_result(future: PrefectFuture[RowResult], row: SheetRow) -> RowResult:
    """A finished row task's result; a task that failed (after its retries) is a failed row."""
    try:
        return future.result()
    except Exception as exc:
        return RowResult(row=row.row, row_id=row.row_id, status="failed", error=redact.redact_exc(exc)[:2000])


class _Progress:
    """The run's progress: a Prefect progress artifact (throttled) and the in-process listeners."""

    def __init__(self, total: int, done: int, name: str) -> None:
        self.total = max(total, 1)
        self.done = done
        self.name = name
        self._lock = threading.Lock()
        self._last = 0.0
        self._artifact: uuid.UUID = create_progress_artifact(  # type: ignore[assignment]  # sync context
            progress=100.0 * done / self.total,
            key=_artifact_key(name, "progress"),
            description=f"Campaign {name}",
        )

    def step(self, result: RowResult) -> None:
        with self._lock:
            self.done += 1
            campaigns.notify(self.done, self.total, result)
            now = time.monotonic()
            if now - self._last >= 1.0 or self.done == self.total:
                self._last = now
                update_progress_artifact(self._artifact, progress=100.0 * self.done / self.total)

    def close(self) -> None:
        update_progress_artifact(self._artifact, progress=100.0 * self.done / self.total)


def _artifact_key(name: str, what: str) -> str:
    return f"campaign-{campaigns.slug(name, 40)}-{what}"


def _report_artifacts(rt: Any, result: CampaignResult) -> str | None:
    """The campaign's report, published in storage beside its videos: a link artifact to it and a
    markdown artifact with a thumbnail gallery (each picture links its video). Returns the report's URL.
    The videos are made: a report that cannot be written is a warning, not a failed run."""
    from prefect import get_run_logger
    from prefect.artifacts import create_link_artifact

    from castflow import reports

    assert result.campaign_id is not None
    try:
        report = reports.build(rt, result.campaign_id, publish=True)
    except Exception as exc:
        get_run_logger().warning("the report was not written: %s", redact.redact_exc(exc)[:500])
        return None
    url = report.published_url or report.files["html"].as_uri()
    create_link_artifact(
        link=url,
        link_text=f"Report: {result.name}",
        key=_artifact_key(result.name, "report"),
        description=f"{result.name}: charts, spend, and a gallery of every finished video",
    )
    create_markdown_artifact(_gallery(rt, result.name, report), key=_artifact_key(result.name, "gallery"))
    return url


GALLERY_LIMIT = 60  # pictures in the gallery artifact (the report shows every video)


def _gallery(rt: Any, name: str, report: Any) -> str:
    """A picture of each finished video beside its row and a link to open it. Pictures are raw <img>
    tags (the Prefect UI's markdown keeps those, and drops a markdown image inside a link); they come
    from storage by public or signed URL (put beside the videos under thumbs/), or are inlined for a
    local storage folder, whose file:// URLs a browser will not load into a web page."""
    import html

    from castflow.reports import data_url, outputs_of

    videos = report.tables["videos"]
    done = [v for v in videos.iter_rows(named=True) if v["status"] == "succeeded" and v["video_key"]]
    lines = [f"# Videos of {_cell(name, 200)}", ""]
    if not done:
        return "\n".join([*lines, "No finished videos."])
    lines += ["| video | row |", "|---|---|"]
    for v in done[:GALLERY_LIMIT]:
        key = v["video_key"]
        jpeg = report.thumbnails.get(key)
        if jpeg is None:
            picture = "(no picture)"
        else:
            if rt.storage.url_kind == "file":
                src = data_url(jpeg)
            else:
                thumb = campaigns.videos_prefix(name) + "thumbs/" + key.rsplit("/", 1)[-1] + ".jpg"
                src = put_bytes(rt.storage, thumb, jpeg, "image/jpeg")
            picture = f'<img src="{html.escape(src)}" alt="{html.escape(v["row_id"] or "")}" width="120">'
        scene = _cell(v.get("scene") or "portrait", 60)
        script = _cell(v.get("script") or "", 90)
        formats = "".join(
            f" · [{_cell(o['format'], 20)}]({rt.storage.url(o['key'])})"
            if o.get("status") == "succeeded" and o.get("key")
            else f" · {_cell(o.get('format', ''), 20)} (failed)"
            for o in outputs_of(v)
        )
        lines.append(
            f"| {picture} | **{_cell(v['row_id'] or '', 40)}** {_cell(v['actor'], 40)} · {scene}"
            f"<br>{script}<br>[open the video]({rt.storage.url(key)}){formats} |"
        )
    if len(done) > GALLERY_LIMIT:
        lines += ["", f"{len(done) - GALLERY_LIMIT} more in the report and the videos table."]
    return "\n".join(lines)


# What a sheet's cell could use for a tag, a link or an image in the UI's markdown, as entities (one
# pass: an '&' of the text is escaped once).
_MARKDOWN = str.maketrans({c: f"&#{ord(c)};" for c in "&<>[]()!*_`\\#~|"})


def _cell(text: str, limit: int) -> str:
    """A sheet's text in a markdown artifact: one line, at most ``limit`` characters, with no tags, no
    markdown (a script ``[Claim](javascript:…)`` stays text) and no pipes to break a table."""
    from castflow.reports import short

    return short(str(text), limit).translate(_MARKDOWN)


def _summary_artifact(result: CampaignResult, report_url: str | None = None) -> None:
    lines = [
        f"# Campaign {_cell(result.name, 200)}",
        "",
        f"{result.succeeded} succeeded, {result.failed} failed, {result.skipped} skipped of {result.rows} rows; "
        f"spent ${result.cost_usd:.2f} (estimate ${result.estimate_usd:.2f}).",
        "",
        f"Manifest: {result.manifest_url}",
    ]
    if report_url:
        lines += ["", f"[Report]({report_url}): charts, spend and every video."]
    problems = [r for r in result.results if r.status != "succeeded"][:50]
    if problems:
        lines += ["", "| row | row id | status | reason |", "|---|---|---|---|"]
        lines += [
            f"| {r.row} | {_cell(r.row_id, 200)} | {r.status} | {_cell(redact.redact(r.error or ''), 200)} |"
            for r in problems
        ]
    made = [r for r in result.results if r.video_url][:200]
    if made:  # markdown links open from the run's Artifacts tab (the videos table has every row)
        lines += ["", "## Videos", ""]
        lines += [f"- row {r.row} `{r.row_id}`: [{r.video_url.rsplit('/', 1)[-1].split('?')[0]}]({r.video_url})"
                  for r in made if r.video_url]  # fmt: skip
    create_markdown_artifact("\n".join(lines), key=_artifact_key(result.name, "summary"))


def _videos_artifact(rt: Any, campaign_id: uuid.UUID, result: CampaignResult, rows: list[SheetRow]) -> None:
    """One line per row for the Prefect UI: who says it where, how it ended, how long, what it cost, a
    link to the video (opened from the run's Artifacts tab) and the error in plain words."""
    seconds = rt.db_session(
        lambda s: {v.row_id: v.video_seconds for v in queries.campaign_videos(s, campaign_id=campaign_id)},
        what="reading video lengths",
    )
    by_row = {r.row: r for r in rows}
    table = []
    for r in sorted(result.results, key=lambda r: r.row):
        request = by_row[r.row].request if r.row in by_row else None
        length = seconds.get(r.row_id)
        table.append(
            {
                "row": r.row,
                "row id": r.row_id,
                "actor": request.actor if request else "",
                "scene": (request.scene or "portrait") if request else "",
                "status": r.status,
                "seconds": round(length, 1) if length else "",
                "cost (USD)": round(r.cost_usd, 4),
                "video": r.video_url or "",
                "error": redact.redact(r.error or "")[:300],
            }
        )
    create_table_artifact(
        table, key=_artifact_key(result.name, "videos"), description=f"{result.name}: every row's video"
    )
