"""Campaign reports: polars over the database, written as CSV, Parquet, XLSX and one self-contained HTML
page (inline SVG charts, a gallery of thumbnails and players; no CDN, opens offline).

Tables: status counts, failure reasons by stage, spend by provider, stage and actor, p50/p95 stage
times, and the totals (cost per finished video). Every text cell that a spreadsheet would run as a
formula is escaped in the CSV and XLSX outputs.
"""

from __future__ import annotations

import base64
import html
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from castflow import media
from castflow.db import queries
from castflow.db.tables import Campaign
from castflow.models import VideoRequest
from castflow.pipeline.records import stored_request_fields
from castflow.redact import redact
from castflow.runtime import Runtime
from castflow.sheets import FORMULA_PREFIXES

TABLES = (
    "totals",
    "status",
    "failures",
    "spend_by_provider",
    "spend_by_stage",
    "spend_by_actor",
    "stage_times",
    "videos",
)


class ReportError(Exception):
    """No such campaign, or nothing to report."""


@dataclass
class Report:
    campaign_id: str
    name: str
    tables: dict[str, pl.DataFrame]
    files: dict[str, Path] = field(default_factory=dict)

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


def _dtype(field: str) -> pl.DataType:
    """The polars type of a request field: whole numbers stay numbers, the rest is text."""
    annotation = VideoRequest.model_fields[field].annotation
    return pl.Int64() if annotation is int else pl.String()


def load(rt: Runtime, campaign_id: uuid.UUID) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The campaign's videos and the stages they used (joined to the stage records) as frames."""
    fields = stored_request_fields()  # the request's columns, named as the sheet names them
    with rt.session() as s:
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
            }
            for v in queries.campaign_videos(s, campaign_id=campaign_id)
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


def escaped(frame: pl.DataFrame) -> pl.DataFrame:
    """Text cells that start like a formula get a leading quote (CSV/XLSX injection)."""
    pattern = "^[" + "".join("\\" + c if c in "-+" else c for c in FORMULA_PREFIXES) + "]"
    return frame.with_columns(
        pl.when(pl.col(c).str.contains(pattern)).then(pl.lit("'") + pl.col(c)).otherwise(pl.col(c)).alias(c)
        for c in frame.columns
        if frame.schema[c] == pl.String
    )


def build(rt: Runtime, name_or_id: str, out_dir: Path | None = None, *, thumbnails: bool = True) -> Report:
    """Compute a campaign's report and write it to ``out_dir`` (default ``<data dir>/reports/<name>``)."""
    from castflow.campaigns import slug

    campaign = _campaign(rt, name_or_id)
    videos, stages = load(rt, campaign.id)
    report = Report(str(campaign.id), campaign.name, summarise(videos, stages))
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
    page = dest / "report.html"
    page.write_text(render_html(rt, report, thumbnails=thumbnails), encoding="utf-8")
    report.files["html"] = page
    return report


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


def _thumbnail(rt: Runtime, key: str) -> str | None:
    try:
        jpeg = media.thumbnail(rt.storage.local_path(key), width=160)
    except Exception:  # a missing or unreadable video just has no thumbnail
        return None
    return "data:image/jpeg;base64," + base64.b64encode(jpeg).decode()


def render_html(rt: Runtime, report: Report, *, thumbnails: bool = True) -> str:
    t = report.tables
    totals = report.totals
    charts = [
        bar_chart(
            "Videos by status", t["status"]["status"].to_list(), [float(v) for v in t["status"]["videos"]]
        ),
        bar_chart(
            "Spend by provider",
            t["spend_by_provider"]["provider"].to_list(),
            t["spend_by_provider"]["spend_usd"].to_list(),
            "$",
        ),
        bar_chart(
            "Spend by stage",
            t["spend_by_stage"]["stage"].to_list(),
            t["spend_by_stage"]["spend_usd"].to_list(),
            "$",
        ),
        bar_chart(
            "Spend by actor",
            t["spend_by_actor"]["actor"].to_list(),
            t["spend_by_actor"]["spend_usd"].to_list(),
            "$",
        ),
        bar_chart(
            "Stage time p95 (s)", t["stage_times"]["stage"].to_list(), t["stage_times"]["p95_s"].to_list()
        ),
    ]
    cards = []
    for v in t["videos"].filter(pl.col("status") == "succeeded").iter_rows(named=True):
        thumb = _thumbnail(rt, v["video_key"]) if thumbnails and v["video_key"] else None
        poster = f' poster="{thumb}"' if thumb else ""
        url = html.escape(v["video_url"] or "")
        cards.append(
            f'<figure class=card><video controls preload="none" src="{url}"{poster}></video>'
            f"<figcaption><b>{html.escape(v['row_id'] or '')}</b> {html.escape(v['actor'])} · "
            f"{v['resolution']} · ${v['cost_usd']:.3f}</figcaption></figure>"
        )
    per_video = totals["cost_per_finished_video_usd"]
    summary = (
        f"{totals['succeeded']} of {totals['rows']} videos finished, {totals['failed']} failed, "
        f"{totals['skipped']} skipped · spent ${totals['spend_usd']:.2f}"
        + (f" · ${per_video:.3f} per finished video" if per_video is not None else "")
        + f" · {totals['stages_reused']} stage(s) reused"
    )
    sections = "".join(
        f"<h2>{html.escape(title)}</h2>{_table(t[name])}"
        for title, name in (
            ("Failures by stage", "failures"),
            ("Spend by provider", "spend_by_provider"),
            ("Spend by stage", "spend_by_stage"),
            ("Spend by actor", "spend_by_actor"),
            ("Stage times", "stage_times"),
        )
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>castflow · {html.escape(report.name)}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body{{font:15px/1.45 system-ui,sans-serif;margin:2rem auto;max-width:1100px;padding:0 1rem;color:#1d2330}}
h1{{margin-bottom:.2rem}} .muted{{color:#6b7280}} figure{{margin:1rem 0}}
figcaption{{font-weight:600;margin-bottom:.3rem}} svg text{{font-size:12px;fill:#1d2330}} svg rect{{fill:#4f7cff}}
.charts{{display:grid;grid-template-columns:repeat(auto-fit,minmax(520px,1fr));gap:1rem}}
table{{border-collapse:collapse;width:100%;font-size:13px}} th,td{{border-bottom:1px solid #e5e7eb;padding:.3rem .5rem;text-align:left}}
.gallery{{display:grid;grid-template-columns:repeat(auto-fill,minmax(180px,1fr));gap:1rem}}
.card video{{width:100%;aspect-ratio:9/16;background:#111;border-radius:6px}} .card figcaption{{font-weight:400;font-size:13px}}
</style></head><body>
<h1>Campaign {html.escape(report.name)}</h1>
<p class=muted>{html.escape(summary)}</p>
<div class=charts>{"".join(charts)}</div>
{sections}
<h2>Gallery</h2><div class=gallery>{"".join(cards) or "<p class=muted>no finished videos</p>"}</div>
</body></html>
"""


def markdown(report: Report) -> str:
    """The summary for a Prefect markdown artifact."""
    totals = report.totals
    lines = [
        f"# Campaign report: {report.name}",
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
