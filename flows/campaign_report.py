"""The ``campaign_report`` flow: a campaign's report files, and its summary as Prefect artifacts."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from prefect import flow
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from pydantic import BaseModel

from castflow import redact, reports
from castflow.campaigns import slug
from castflow.inputs import PathRefused, flow_path
from castflow.pipeline import UserError
from castflow.runtime import get_runtime
from flows.form import label


class ReportResult(BaseModel):
    campaign_id: str
    name: str
    totals: dict[str, float | int | None]
    files: dict[str, str]


@flow(name="campaign-report", validate_parameters=True)
def campaign_report(
    campaign: Annotated[str, label("Campaign", min_length=1)],
    out_dir: Annotated[str, label("Folder")] = "",
    thumbnails: Annotated[bool, label("Thumbnails")] = True,
) -> ReportResult:
    """Write a campaign's report (CSV, Parquet, XLSX, HTML) and publish its summary as artifacts.

    Args:
        campaign: Campaign name (its newest run) or campaign id.
        out_dir: Folder for the files on the worker (from a deployment: inside its parameter roots).
            Empty: CASTFLOW_DATA_DIR/reports/NAME.
        thumbnails: Put a thumbnail of each video in the HTML gallery.
    """
    rt = get_runtime()
    redact.install(rt.settings)
    folder: Path | None = None
    if out_dir:
        try:  # from a deployment, only a folder inside the parameter roots (an API caller's choice else)
            folder = flow_path(rt.settings, "campaign-report", out_dir, what="folder", folder=True)
        except PathRefused as exc:
            raise UserError(str(exc)) from None
    report = reports.build(rt, campaign, folder, thumbnails=thumbnails)
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
