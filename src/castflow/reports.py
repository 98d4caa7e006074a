"""Campaign reports: polars over the database, written as CSV, Parquet, XLSX and one self-contained HTML
page (inline SVG charts, a gallery of thumbnails and players; no CDN, opens offline).

Tables: status counts, failure reasons by stage, spend by provider, stage and actor, p50/p95 stage
times, and the totals (cost per finished video). Every text cell that a spreadsheet would run as a
formula is escaped in the CSV and XLSX outputs.

The page plays its videos wherever it is opened (:class:`Links`): written on this machine it links them
relative to itself when the storage is a local folder (a URL of the storage otherwise); published to
storage (``campaigns/<name>/report.html``) it links them relative to itself beside them, or by their public
or signed URLs, and says which; with ``embed`` small videos are inlined for a single-file copy.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import json
import os
import posixpath
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import polars as pl

from castflow import media
from castflow.db import queries
from castflow.db.tables import Campaign
from castflow.models import VideoRequest
from castflow.pipeline.records import stored_request_fields
from castflow.redact import redact
from castflow.runtime import Runtime
from castflow.sheets import FORMULA_PREFIXES
from castflow.storage import put_bytes

TABLES = (
    "totals",
    "status",
    "failures",
    "spend_by_provider",
    "spend_by_stage",
    "spend_by_actor",
    "stage_times",
    "by_axis",
    "videos",
)
# A matrix campaign's axes (castflow.matrix): each by the column that holds its value's id.
AXIS_COLUMNS = {
    "hook": "hook_id",
    "body": "body_id",
    "actor": "actor",
    "scene": "scene_id",
    "product": "product_id",
}
MATRIX_COLUMNS = (
    "hook_id",
    "body_id",
    "scene_id",
    "product_id",
)  # a campaign with one of these came from a matrix


class ReportError(Exception):
    """No such campaign, or nothing to report."""


@dataclass
class Report:
    campaign_id: str
    name: str
    tables: dict[str, pl.DataFrame]
    files: dict[str, Path] = field(default_factory=dict)
    passthrough: list[str] = field(default_factory=list)  # the sheet's own columns, in the videos table
    first_run: dt.datetime | None = None
    last_run: dt.datetime | None = None
    budget_usd: float | None = None
    real_usd: float | None = None  # the same campaign on the real providers (a first run there)
    real_providers: str = ""  # who they are: "image fal, speech fal, lip-sync WaveSpeed"
    here: str = ""  # who played each role here
    published_url: str | None = None  # the page in storage, when published
    thumbnails: dict[str, bytes] = field(default_factory=dict)  # a JPEG per finished video's key
    group_by: str | None = None  # the axis the gallery is grouped by (a matrix campaign's)

    @property
    def totals(self) -> dict[str, Any]:
        return self.tables["totals"].row(0, named=True)


def _campaign(rt: Runtime, name_or_id: str) -> Campaign:
    with rt.session() as s:
        campaign = queries.find_campaign(s, name_or_id=name_or_id)
        if campaign is None:
            known = ", ".join(queries.campaign_names(s)) or "none yet"
            raise ReportError(f"no campaign {name_or_id!r} (known: {known})")
        s.expunge(campaign)
        return campaign


def _cell(value: object) -> object:
    return str(value) if isinstance(value, uuid.UUID) else value


def _text(value: object) -> str | None:
    return None if value is None else str(value)


def _dtype(field: str) -> pl.DataType:
    """The polars type of a request field: whole numbers stay numbers, the rest is text."""
    annotation = VideoRequest.model_fields[field].annotation
    return pl.Int64() if annotation is int else pl.String()


def load(rt: Runtime, campaign_id: uuid.UUID) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The campaign's videos (with the sheet's own columns after the request's) and the stages they
    used (joined to the stage records) as frames."""
    fields = stored_request_fields()  # the request's columns, named as the sheet names them
    with rt.session() as s:
        rows = list(queries.campaign_videos(s, campaign_id=campaign_id))
        passthrough = sorted({k for v in rows for k in (v.extra or {}) if k not in fields})
        videos = [
            {
                "row_id": v.row_id,
                **{name: _cell(getattr(v, column)) for name, column in fields.items()},
                "status": v.status.value,
                "failed_stage": v.failed_stage,
                "error": redact(v.error) if v.error else v.error,  # rows recorded before redaction too
                "audio_seconds": v.audio_seconds,
                "video_seconds": v.video_seconds,
                "cost_usd": v.cost_usd,
                "video_key": v.video_key,
                "video_url": v.video_url,
                # The export profiles' files (castflow.finish): JSON, one object per format.
                "outputs": json.dumps(v.outputs, ensure_ascii=False) if v.outputs else None,
                "warning": "; ".join(v.warnings) if v.warnings else None,
                **{k: _text((v.extra or {}).get(k)) for k in passthrough},
            }
            for v in rows
        ]
        stages = [
            {
                "row_id": row_id,
                "actor": actor,
                "stage": link.stage,
                "reused": link.reused,
                "cost_usd": link.cost_usd,
                "provider": run.provider if run else "local",
                "model": run.model if run else "-",
                "run_seconds": run.run_seconds if run else None,
            }
            for link, row_id, actor, run in queries.campaign_stage_links(s, campaign_id=campaign_id)
        ]
    video_schema: dict[str, pl.DataType | type[pl.DataType]] = {
        "row_id": pl.String,
        **{name: _dtype(name) for name in fields},
        "status": pl.String,
        "failed_stage": pl.String,
        "error": pl.String,
        "audio_seconds": pl.Float64,
        "video_seconds": pl.Float64,
        "cost_usd": pl.Float64,
        "video_key": pl.String,
        "video_url": pl.String,
        "outputs": pl.String,
        "warning": pl.String,
        **dict.fromkeys(passthrough, pl.String),
    }
    stage_schema = {
        "row_id": pl.String,
        "actor": pl.String,
        "stage": pl.String,
        "reused": pl.Boolean,
        "cost_usd": pl.Float64,
        "provider": pl.String,
        "model": pl.String,
        "run_seconds": pl.Float64,
    }
    return pl.DataFrame(videos, schema=video_schema), pl.DataFrame(stages, schema=stage_schema)


def summarise(videos: pl.DataFrame, stages: pl.DataFrame) -> dict[str, pl.DataFrame]:
    """The report's tables."""
    paid = stages.filter(~pl.col("reused"))
    succeeded = videos.filter(pl.col("status") == "succeeded").height
    spend = float(paid["cost_usd"].sum() or 0.0)
    totals = pl.DataFrame(
        {
            "rows": [videos.height],
            "succeeded": [succeeded],
            "failed": [videos.filter(pl.col("status") == "failed").height],
            "skipped": [videos.filter(pl.col("status") == "skipped").height],
            "spend_usd": [round(spend, 6)],
            "cost_per_finished_video_usd": [round(spend / succeeded, 6) if succeeded else None],
            "stages_paid": [paid.height],
            "stages_reused": [stages.height - paid.height],
        }
    )

    def spend_by(column: str) -> pl.DataFrame:
        return (
            paid.group_by(column)
            .agg(pl.col("cost_usd").sum().round(6).alias("spend_usd"), pl.len().alias("jobs"))
            .sort("spend_usd", descending=True)
        )

    return {
        "totals": totals,
        "status": videos.group_by("status").agg(pl.len().alias("videos")).sort("videos", descending=True),
        "failures": videos.filter(pl.col("status") == "failed")
        .with_columns(pl.col("error").fill_null("").str.slice(0, 160).alias("reason"))
        .group_by("failed_stage", "reason")
        .agg(pl.len().alias("videos"))
        .sort("videos", descending=True),
        "spend_by_provider": spend_by("provider"),
        "spend_by_stage": spend_by("stage"),
        "spend_by_actor": spend_by("actor"),
        "by_axis": by_axis(videos),
        "stage_times": paid.filter(pl.col("run_seconds").is_not_null())
        .group_by("stage")
        .agg(
            pl.len().alias("runs"),
            pl.col("run_seconds").quantile(0.5, "linear").round(3).alias("p50_s"),
            pl.col("run_seconds").quantile(0.95, "linear").round(3).alias("p95_s"),
        )
        .sort("stage"),
        "videos": videos,
    }


def axes_of(videos: pl.DataFrame) -> list[str]:
    """The matrix axes of a campaign's videos, in matrix order (none: not a matrix campaign)."""
    if not any(c in videos.columns for c in MATRIX_COLUMNS):
        return []
    return [axis for axis, column in AXIS_COLUMNS.items() if column in videos.columns]


def by_axis(videos: pl.DataFrame) -> pl.DataFrame:
    """Per value of each matrix axis: its videos, how they ended and what they cost (empty for a
    campaign not made from a matrix)."""
    schema: dict[str, pl.DataType | type[pl.DataType]] = {"axis": pl.String, "value": pl.String, "videos": pl.UInt32, "succeeded": pl.UInt32,
              "failed": pl.UInt32, "skipped": pl.UInt32, "spend_usd": pl.Float64}  # fmt: skip
    parts = [
        videos.group_by(pl.col(AXIS_COLUMNS[axis]).fill_null("").cast(pl.String).alias("value"))
        .agg(
            pl.len().alias("videos"),
            *((pl.col("status") == s).sum().alias(s) for s in ("succeeded", "failed", "skipped")),
            pl.col("cost_usd").sum().round(6).alias("spend_usd"),
        )
        .sort("value")
        .select(pl.lit(axis).alias("axis"), pl.all())
        for axis in axes_of(videos)
    ]
    return pl.concat([p.cast(pl.Schema(schema)) for p in parts]) if parts else pl.DataFrame(schema=schema)


def escaped(frame: pl.DataFrame) -> pl.DataFrame:
    """Text cells that start like a formula get a leading quote (CSV/XLSX injection)."""
    pattern = "^[" + "".join("\\" + c if c in "-+" else c for c in FORMULA_PREFIXES) + "]"
    return frame.with_columns(
        pl.when(pl.col(c).str.contains(pattern)).then(pl.lit("'") + pl.col(c)).otherwise(pl.col(c)).alias(c)
        for c in frame.columns
        if frame.schema[c] == pl.String
    )


EMBED_MAX_BYTES = 8 * 2**20  # a video --embed inlines (a larger one stays a link, and the page says so)
EMBED_TOTAL_BYTES = 64 * 2**20  # all inlined videos of one page together


def build(
    rt: Runtime,
    name_or_id: str,
    out_dir: Path | None = None,
    *,
    thumbnails: bool = True,
    embed: bool = False,
    publish: bool = False,
    group_by: str | None = None,
) -> Report:
    """Compute a campaign's report and write it to ``out_dir`` (default ``<data dir>/reports/<name>``);
    ``embed``: inline the small videos in the page (a single file to send); ``publish``: also put the
    page in storage beside the videos (``campaigns/<name>/report.html``, its URL in ``published_url``)."""
    from castflow.campaigns import slug, videos_prefix

    campaign = _campaign(rt, name_or_id)
    videos, stages = load(rt, campaign.id)
    known = {"row_id", *stored_request_fields(), "status", "failed_stage", "error", "audio_seconds"}
    known |= {"video_seconds", "cost_usd", "video_key", "video_url", "outputs", "warning"}
    report = Report(
        str(campaign.id),
        campaign.name,
        summarise(videos, stages),
        passthrough=[c for c in videos.columns if c not in known],
        first_run=campaign.created_at,
        last_run=campaign.finished_at or campaign.updated_at,
        budget_usd=campaign.budget_usd,
    )
    axes = axes_of(videos)
    if group_by is not None and group_by not in axes:
        told = ", ".join(axes) or "none: the campaign was not made from a matrix"
        raise ReportError(f"cannot group by {group_by!r}: the campaign's axes are {told}")
    report.group_by = group_by or (axes[0] if axes else None)
    _price_on_real_providers(rt, report)
    dest = out_dir or rt.settings.data_dir / "reports" / slug(campaign.name, 60)
    dest.mkdir(parents=True, exist_ok=True)
    for name in TABLES:
        table = escaped(report.tables[name])
        table.write_csv(dest / f"{name}.csv")
        report.tables[name].write_parquet(dest / f"{name}.parquet")
    report.files["csv"] = dest
    workbook = dest / "report.xlsx"
    import xlsxwriter

    with xlsxwriter.Workbook(workbook) as wb:
        for name in TABLES:
            escaped(report.tables[name]).write_excel(workbook=wb, worksheet=name[:31], autofit=True)
    report.files["xlsx"] = workbook
    if thumbnails:
        report.thumbnails = _thumbnails(rt, report)
    thumbs = {key: data_url(jpeg) for key, jpeg in report.thumbnails.items()}
    page = dest / "report.html"
    links = embedded_links(rt, dest) if embed else local_links(rt, dest)
    page.write_text(render_html(report, links, thumbs), encoding="utf-8")
    report.files["html"] = page
    if publish:
        key = videos_prefix(campaign.name) + "report.html"
        published = render_html(report, published_links(rt, key), thumbs)
        report.published_url = put_bytes(
            rt.storage, key, published.encode("utf-8"), "text/html; charset=utf-8"
        )
    return report


def _price_on_real_providers(rt: Runtime, report: Report) -> None:
    """What the campaign's rows would cost on the real providers (a first run there), when a role here
    is played for free; rows whose request cannot be prepared again (an actor or audio file gone) are
    left out."""
    from castflow import pipeline
    from castflow.estimates import RealPrices, configured, estimate_videos, plays_free, real_total
    from castflow.models import ActorRef

    report.here = configured(rt)
    if not plays_free(rt):
        return
    fields = stored_request_fields()
    actors: dict[str, ActorRef] = {}
    batch: list[tuple[pipeline.PreparedVideo, int, str]] = []
    for i, row in enumerate(report.tables["videos"].iter_rows(named=True)):
        values = {name: row[name] for name in fields if row[name] is not None}
        try:
            request = VideoRequest(**values)
            if request.actor not in actors:
                actors[request.actor] = pipeline.actor_ref(rt, request.actor)
            batch.append((pipeline.prepare_video(rt, request, actor=actors[request.actor]), i, ""))
        except Exception:  # noqa: S112 - a row that cannot be priced is left out of the figure
            continue
    real = RealPrices(rt)
    report.real_usd = real_total(estimate_videos(rt, batch, real=real))
    report.real_providers = real.describe()


def _thumbnails(rt: Runtime, report: Report) -> dict[str, bytes]:
    """A JPEG of each finished video's middle frame, by storage key."""
    found: dict[str, bytes] = {}
    for key in report.tables["videos"].filter(pl.col("status") == "succeeded")["video_key"].to_list():
        if key and (thumb := _thumbnail(rt, key)) is not None:
            found[key] = thumb
    return found


def data_url(jpeg: bytes) -> str:
    return "data:image/jpeg;base64," + base64.b64encode(jpeg).decode()


# ---- where the page links its videos -----------------------------------------------------------------


@dataclass(frozen=True)
class Links:
    """How a page links each video (``href`` of its storage key) and the sentence that says so (asked
    after every video was linked: an embedding page knows then which stayed links)."""

    href: Callable[[str], str]
    note: Callable[[], str]


def _storage_links(rt: Runtime) -> Links:
    kind, ttl = rt.storage.url_kind, rt.storage.url_ttl_s
    if kind == "signed" and ttl:
        until = (dt.datetime.now(dt.UTC) + dt.timedelta(seconds=ttl)).strftime("%Y-%m-%d %H:%M UTC")
        note = f"Videos are linked by signed URLs that stop working on {until}: publish the report again for new ones."
    elif kind == "public":
        note = "Videos are linked by their public URLs in castflow's storage."
    else:
        note = f"Videos are linked in castflow's storage ({rt.storage.location})."
    return Links(rt.storage.url, lambda: note)


def local_links(rt: Runtime, dest: Path) -> Links:
    """A page written in ``dest`` on this machine: relative links into a local storage folder (they work
    from wherever the page is opened here), else the storage's URLs."""
    if rt.storage.url_kind != "file":
        return _storage_links(rt)

    def href(key: str) -> str:
        return quote(Path(os.path.relpath(rt.storage.local_path(key), dest)).as_posix())

    note = (
        f"Videos are linked relative to this page, in castflow's storage folder ({rt.storage.location}): "
        "to send the report, use `castflow report --embed` (one file) or publish it to storage."
    )
    return Links(href, lambda: note)


def published_links(rt: Runtime, key: str) -> Links:
    """A page stored at ``key``: videos of a local storage folder linked relative to it (the folder can
    be served or copied whole), else by their public or signed URLs."""
    if rt.storage.url_kind != "file":
        return _storage_links(rt)
    folder = posixpath.dirname(key)
    return Links(
        lambda video: quote(posixpath.relpath(video, folder)),
        lambda: "Videos are linked relative to this page, beside it in castflow's storage.",
    )


def embedded_links(rt: Runtime, dest: Path) -> Links:
    """Videos of up to EMBED_MAX_BYTES inlined (EMBED_TOTAL_BYTES in all), the rest linked as
    :func:`local_links` does; the note says how many were left as links."""
    fallback = local_links(rt, dest)
    budget = [EMBED_TOTAL_BYTES]
    linked: list[str] = []

    def href(key: str) -> str:
        path = rt.storage.local_path(key)
        size = path.stat().st_size
        if size <= EMBED_MAX_BYTES and size <= budget[0]:
            budget[0] -= size
            return "data:video/mp4;base64," + base64.b64encode(path.read_bytes()).decode()
        linked.append(key)
        return fallback.href(key)

    def note() -> str:
        if not linked:
            return "Videos are inside this page: it plays them wherever it is opened."
        return (
            f"Videos up to {EMBED_MAX_BYTES // 2**20} MiB are inside this page; {len(linked)} larger one(s) "
            f"are linked. {fallback.note()}"
        )

    return Links(href, note)


# ---- HTML ---------------------------------------------------------------------------------------------


def bar_chart(title: str, labels: list[str], values: list[float], unit: str = "") -> str:
    """A horizontal bar chart as inline SVG (no script, no external resources)."""
    if not labels:
        return f"<figure><figcaption>{html.escape(title)}</figcaption><p class=muted>nothing yet</p></figure>"
    width, bar, gap, left = 560, 22, 8, 150
    top = max(values) or 1.0
    height = len(labels) * (bar + gap) + gap
    rows = []
    for i, (label, value) in enumerate(zip(labels, values, strict=True)):
        y = gap + i * (bar + gap)
        w = (width - left - 90) * (value / top)
        text = f"{value:,.4f}".rstrip("0").rstrip(".") if unit == "$" else f"{value:,.3g}"
        rows.append(
            f'<text x="{left - 6}" y="{y + bar * 0.7:.1f}" text-anchor="end">{html.escape(label[:24])}</text>'
            f'<rect x="{left}" y="{y}" width="{w:.1f}" height="{bar}" rx="3"></rect>'
            f'<text x="{left + w + 6:.1f}" y="{y + bar * 0.7:.1f}">{unit}{text}</text>'
        )
    return (
        f"<figure><figcaption>{html.escape(title)}</figcaption>"
        f'<svg viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img" '
        f'aria-label="{html.escape(title)}">{"".join(rows)}</svg></figure>'
    )


def _table(frame: pl.DataFrame, limit: int = 200) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in frame.columns)
    body = []
    for row in frame.head(limit).iter_rows():
        cells = "".join(f"<td>{html.escape('' if v is None else str(v))}</td>" for v in row)
        body.append(f"<tr>{cells}</tr>")
    more = f"<p class=muted>{frame.height - limit} more rows in the CSV</p>" if frame.height > limit else ""
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>{more}"


def _thumbnail(rt: Runtime, key: str) -> bytes | None:
    try:
        return media.thumbnail(rt.storage.local_path(key), width=160)
    except Exception:  # a missing or unreadable video just has no thumbnail
        return None


# What the page calls the tables' columns and the stages (the CSV, Parquet and XLSX keep the names).
COLUMN_NAMES = {
    "status": "Status",
    "videos": "Videos",
    "failed_stage": "Stage",
    "reason": "Reason",
    "provider": "Provider",
    "stage": "Stage",
    "actor": "Actor",
    "spend_usd": "Spend (USD)",
    "jobs": "Jobs run",
    "runs": "Runs",
    "p50_s": "Median (s)",
    "p95_s": "95th percentile (s)",
}
STAGE_NAMES = {
    "scene_variant": "scene variant",
    "audio_ingest": "audio upload",
    "lipsync": "lip-sync",
    "quality_check": "quality check",
}


def _human(frame: pl.DataFrame) -> pl.DataFrame:
    """The table as the page shows it: stage names in words, people's column names."""
    stages = [c for c in ("stage", "failed_stage") if c in frame.columns]
    shown = frame.with_columns(pl.col(c).replace(STAGE_NAMES) for c in stages)
    return shown.rename({c: COLUMN_NAMES.get(c, c) for c in frame.columns})


def _when(moment: dt.datetime | None) -> str:
    if moment is None:
        return "unknown"
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


def short(text: str | None, limit: int = 140) -> str:
    """``text`` on one line, cut to ``limit`` characters with an ellipsis."""
    text = " ".join((text or "").split())
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def render_html(report: Report, links: Links, thumbnails: dict[str, str] | None = None) -> str:
    """The page: a summary (run date, spend over all runs, the budget, the real providers' price), the
    charts, the tables in words, and a gallery of players with each row's script, scene and the sheet's
    own columns. ``thumbnails``: a poster per video key."""
    thumbs = thumbnails or {}
    t = report.tables
    totals = report.totals
    spent = float(totals["spend_usd"] or 0.0)
    charts = [
        bar_chart(
            "Videos by status", t["status"]["status"].to_list(), [float(v) for v in t["status"]["videos"]]
        )
    ]
    if spent > 0:
        for title, name, column in (
            ("Spend by provider", "spend_by_provider", "provider"),
            ("Spend by stage", "spend_by_stage", "stage"),
            ("Spend by actor", "spend_by_actor", "actor"),
        ):
            labels = [STAGE_NAMES.get(v, v) for v in t[name][column].to_list()]
            charts.append(bar_chart(title, labels, t[name]["spend_usd"].to_list(), "$"))
    charts.append(
        bar_chart(
            "Stage time p95 (s)",
            [STAGE_NAMES.get(v, v) for v in t["stage_times"]["stage"].to_list()],
            t["stage_times"]["p95_s"].to_list(),
        )
    )
    finished = t["videos"].filter(pl.col("status") == "succeeded")
    gallery = ""
    if report.group_by is not None:  # a matrix campaign: one group of cards per value of an axis
        column = AXIS_COLUMNS[report.group_by]
        for value in sorted({str(v or "") for v in finished[column].to_list()}):
            group = finished.filter(pl.col(column).cast(pl.String).fill_null("") == value)
            gallery += (
                f"<h3>{html.escape(report.group_by)} {html.escape(value)} · {group.height} video(s)</h3>"
            )
            gallery += (
                "<div class=gallery>"
                + "".join(_card(report, v, links, thumbs) for v in group.iter_rows(named=True))
                + "</div>"
            )
    else:
        cards = "".join(_card(report, v, links, thumbs) for v in finished.iter_rows(named=True))
        gallery = f"<div class=gallery>{cards}</div>" if cards else ""
    per_video = totals["cost_per_finished_video_usd"]
    lines = [
        f"Run on {_when(report.last_run)}"
        + (
            f" (first run {_when(report.first_run)})"
            if report.first_run and report.last_run and report.first_run.date() != report.last_run.date()
            else ""
        )
        + f" · {totals['succeeded']} of {totals['rows']} videos finished, {totals['failed']} failed, "
        f"{totals['skipped']} skipped",
        f"Spent ${spent:.2f} over all its runs"
        + (f" (budget ${report.budget_usd:.2f})" if report.budget_usd else "")
        + (f" · ${per_video:.3f} per finished video" if per_video else "")
        + (
            f" · {totals['stages_reused']} stage(s) shared or reused, paid once"
            if totals["stages_reused"]
            else ""
        ),
    ]
    if report.real_usd is not None:
        free = "The embedded providers cost nothing. " if spent == 0 else ""
        lines.append(
            f"{free}On the real providers ({report.real_providers}) the same campaign would cost "
            f"${report.real_usd:.2f} (a first run there; played here by {report.here})."
        )
    summary = "".join(f"<p class=muted>{html.escape(line)}</p>" for line in lines)
    unpaid = "Nothing was paid for" + (": the embedded providers cost nothing." if spent == 0 else ".")
    sections = "".join(
        f"<h2>{html.escape(title)}</h2>"
        + (
            _table(_human(t[name]))
            if t[name].height and (spent > 0 or not name.startswith("spend"))
            else f"<p class=muted>{html.escape(empty)}</p>"
        )
        for title, name, empty in (
            ("Failures by stage", "failures", "No failures."),
            ("Spend by provider", "spend_by_provider", unpaid),
            ("Spend by stage", "spend_by_stage", unpaid),
            ("Spend by actor", "spend_by_actor", unpaid),
            ("Stage times", "stage_times", "No stage ran in this campaign's runs (all were reused)."),
        )
    ) + ("<h2>By variant axis</h2>" + _table(_human(t["by_axis"]), limit=1000) if t["by_axis"].height else "")
    note = links.note()  # after the cards: an embedding page knows now which videos stayed links
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>castflow · {html.escape(report.name)}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body{{font:15px/1.45 system-ui,sans-serif;margin:2rem auto;max-width:1100px;padding:0 1rem;color:#1d2330}}
h1{{margin-bottom:.2rem}} .muted{{color:#6b7280;margin:.2rem 0}} figure{{margin:1rem 0}}
figcaption{{font-weight:600;margin-bottom:.3rem}} svg text{{font-size:12px;fill:#1d2330}} svg rect{{fill:#4f7cff}}
.charts{{display:grid;grid-template-columns:repeat(auto-fit,minmax(520px,1fr));gap:1rem}}
table{{border-collapse:collapse;width:100%;font-size:13px}} th,td{{border-bottom:1px solid #e5e7eb;padding:.3rem .5rem;text-align:left}}
.gallery{{display:grid;grid-template-columns:repeat(auto-fill,minmax(200px,1fr));gap:1rem}}
.card video{{width:100%;aspect-ratio:9/16;background:#111;border-radius:6px}}
.card figcaption{{font-weight:400;font-size:13px}} .card q{{display:block;margin:.3rem 0;color:#374151}}
.card dl{{margin:.2rem 0;display:grid;grid-template-columns:auto 1fr;gap:0 .5rem;color:#6b7280}} .card dd{{margin:0}}
</style></head><body>
<h1>Campaign {html.escape(report.name)}</h1>
{summary}
<div class=charts>{"".join(charts)}</div>
{sections}
<h2>Gallery</h2><p class=muted>{html.escape(note)}</p>
{gallery or "<p class=muted>No finished videos.</p>"}
</body></html>
"""


def _card(report: Report, v: dict[str, Any], links: Links, thumbs: dict[str, str]) -> str:
    """One finished video: its player, who says what where, what it cost, the sheet's own columns, and
    links to open and download it."""
    key = v["video_key"] or ""
    target = links.href(key) if key else v["video_url"] or ""
    href = html.escape(target)
    poster = f' poster="{thumbs[key]}"' if key in thumbs else ""
    name = html.escape(posixpath.basename(key) or "video.mp4")
    seconds = f" · {v['video_seconds']:.1f} s" if v.get("video_seconds") else ""
    extra = "".join(
        f"<dt>{html.escape(k)}</dt><dd>{html.escape(str(v[k]))}</dd>" for k in report.passthrough if v.get(k)
    )
    return (
        f'<figure class=card><video controls preload="none" src="{href}"{poster}></video>'
        f"<figcaption><b>{html.escape(v['row_id'] or '')}</b> {html.escape(v['actor'])} · "
        f"{html.escape(v.get('scene') or 'portrait')} · {v['resolution']}{seconds} · ${v['cost_usd']:.3f}"
        + (f"<q>{html.escape(short(v.get('script')))}</q>" if v.get("script") else "")
        + (f"<dl>{extra}</dl>" if extra else "")
        + _formats(v, links)
        + (
            ""  # an inlined video is in the page once: its player offers the download
            if target.startswith("data:")
            else f'<a href="{href}" target="_blank">open</a> · <a href="{href}" download="{name}">download</a>'
        )
        + "</figcaption></figure>"
    )


def outputs_of(v: dict[str, Any]) -> list[dict[str, Any]]:
    """A video row's export profiles (the report's ``outputs`` column, JSON)."""
    found = json.loads(v["outputs"]) if v.get("outputs") else []
    return [o for o in found if isinstance(o, dict)]


def _formats(v: dict[str, Any], links: Links) -> str:
    """A link to each export profile's file, and the reason of each that failed its check."""
    parts = []
    for output in outputs_of(v):
        name = html.escape(str(output.get("format", "")))
        if output.get("status") == "succeeded" and output.get("key"):
            parts.append(f'<a href="{html.escape(links.href(output["key"]))}" target="_blank">{name}</a>')
        else:
            why = html.escape(short(str(output.get("error") or "failed")))
            parts.append(f'<span title="{why}">{name} (failed)</span>')
    return f"<p>formats: {' · '.join(parts)}</p>" if parts else ""


def markdown(report: Report) -> str:
    """The summary for a Prefect markdown artifact."""
    totals = report.totals
    lines = [
        f"# Campaign report: {html.escape(report.name)}",
        "",
        f"{totals['succeeded']} of {totals['rows']} finished, {totals['failed']} failed, {totals['skipped']} skipped; "
        f"spent ${totals['spend_usd']:.2f}.",
        "",
        "| provider | spend (USD) | jobs |",
        "|---|---|---|",
    ]
    for row in report.tables["spend_by_provider"].iter_rows(named=True):
        lines.append(f"| {row['provider']} | {row['spend_usd']:.4f} | {row['jobs']} |")
    return "\n".join(lines)
