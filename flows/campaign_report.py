"""The ``campaign_report`` flow: a campaign's report files, and its summary as Prefect artifacts."""

from __future__ import annotations

from pathlib import Path

from prefect import flow
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from pydantic import BaseModel, Field

from castflow import redact, reports
from castflow.campaigns import slug
from castflow.runtime import get_runtime


class ReportParams(BaseModel):
    """Which campaign to report on: the form the Prefect UI shows for the campaign-report deployment."""

    campaign: str = Field(description="Campaign name (its newest run) or campaign id.")
    out_dir: str | None = Field(
        default=None, description="Folder for the files. Default: <data dir>/reports/<name>."
    )
    thumbnails: bool = Field(default=True, description="Put a thumbnail of each video in the HTML gallery.")


class ReportResult(BaseModel):
    campaign_id: str
    name: str
    totals: dict[str, float | int | None]
    files: dict[str, str]


@flow(name="campaign-report", validate_parameters=True)
def campaign_report(params: ReportParams) -> ReportResult:
    """Write a campaign's report (CSV, Parquet, XLSX, HTML) and publish its summary as artifacts."""
    rt = get_runtime()
    redact.install(rt.settings)
    report = reports.build(
        rt, params.campaign, Path(params.out_dir) if params.out_dir else None, thumbnails=params.thumbnails
    )
    key = f"campaign-{slug(report.name, 40)}"
    create_table_artifact(
        list(report.tables["spend_by_stage"].iter_rows(named=True)),
        key=f"{key}-spend",
        description=f"Spend by stage, campaign {report.name}",
    )
    create_markdown_artifact(redact.redact(reports.markdown(report)), key=f"{key}-report")
    return ReportResult(
        campaign_id=report.campaign_id,
        name=report.name,
        totals=report.totals,
        files={k: str(v) for k, v in report.files.items()},
    )
