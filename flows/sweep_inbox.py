"""The ``sweep_inbox`` flow: run each new sheet dropped into the inbox folder exactly once.

A sheet is claimed by moving it into ``processing/`` (an atomic rename: two sweeps never take the same
file), identified by its content hash (the same sheet dropped again is not run again), validated, and
then run as a campaign; it ends in ``processed/``. A sheet that fails validation goes to ``rejected/``
with a ``.errors.txt`` report beside it and is never retried.
"""

from __future__ import annotations

import os
from pathlib import Path

from prefect import flow, get_run_logger
from pydantic import BaseModel, Field

from castflow import campaigns
from castflow.db import queries
from castflow.runtime import get_runtime
from castflow.sheets import content_hash
from flows.run_campaign import CampaignParams, run_campaign


class InboxParams(BaseModel):
    """The form the Prefect UI shows for the sweep-inbox deployment."""

    inbox: str | None = Field(
        default=None, description="Folder teams drop sheets into. Default: <data dir>/inbox."
    )
    budget_usd: float | None = Field(default=None, gt=0, description="Budget of each sheet's campaign (USD).")
    skip_invalid: bool = Field(default=False, description="Run the valid rows of sheets with errors.")


class SheetOutcome(BaseModel):
    sheet: str
    outcome: str  # ran | rejected | duplicate
    campaign_id: str | None = None
    detail: str = ""


def _move(path: Path, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    dest = folder / path.name
    stem, n = dest.stem, 1
    while dest.exists():  # never overwrite an earlier sheet of the same name
        dest = folder / f"{stem}-{n}{dest.suffix}"
        n += 1
    os.replace(path, dest)
    return dest


@flow(name="sweep-inbox", validate_parameters=True)
def sweep_inbox(params: InboxParams | None = None) -> list[SheetOutcome]:
    """Run every new sheet of the inbox once; refuse invalid ones with their error report."""
    params = params or InboxParams()
    rt = get_runtime()
    log = get_run_logger()
    inbox = Path(params.inbox).expanduser() if params.inbox else rt.settings.data_dir / "inbox"
    inbox.mkdir(parents=True, exist_ok=True)
    outcomes: list[SheetOutcome] = []
    for dropped in sorted(p for p in inbox.iterdir() if p.is_file() and p.suffix.lower() == ".csv"):
        try:
            claimed = _move(dropped, inbox / "processing")
        except FileNotFoundError:
            continue  # another sweep took it
        digest = content_hash(claimed.read_bytes())
        with rt.session() as s:
            earlier = queries.campaign_by_hash(s, sheet_hash=digest)
            earlier_id = str(earlier.id) if earlier else None
        if earlier_id:
            _move(claimed, inbox / "processed")
            outcomes.append(SheetOutcome(sheet=dropped.name, outcome="duplicate", campaign_id=earlier_id))
            log.info("%s was run before (campaign %s): not run again", dropped.name, earlier_id)
            continue
        sheet = campaigns.load_sheet(rt, claimed)
        if sheet.sheet_errors or (sheet.errors and not params.skip_invalid):
            rejected = _move(claimed, inbox / "rejected")
            report = "\n".join(str(p) for p in sheet.problems)
            rejected.with_name(rejected.name + ".errors.txt").write_text(report + "\n", encoding="utf-8")
            outcomes.append(
                SheetOutcome(sheet=dropped.name, outcome="rejected", detail=f"{len(sheet.errors)} error(s)")
            )
            log.warning(
                "%s refused: %d error(s), see rejected/%s.errors.txt",
                dropped.name,
                len(sheet.errors),
                rejected.name,
            )
            continue
        result = run_campaign(
            CampaignParams(
                sheet=str(claimed),
                name=dropped.stem,
                budget_usd=params.budget_usd,
                skip_invalid=params.skip_invalid,
            )
        )
        _move(claimed, inbox / "processed")
        outcomes.append(
            SheetOutcome(
                sheet=dropped.name,
                outcome="ran",
                campaign_id=result.campaign_id,
                detail=f"{result.succeeded} succeeded, {result.failed} failed, {result.skipped} skipped",
            )
        )
    return outcomes
