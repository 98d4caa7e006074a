"""The ``sweep_inbox`` flow: run each new sheet dropped into the inbox exactly once.

The inbox is a local folder, or ``storage:<prefix>`` for a prefix of castflow's storage (Supabase
Storage: teams upload sheets there). A sheet is claimed by moving it into ``processing/`` (an atomic
rename or server-side move: two sweeps never take the same sheet), identified by its content hash (the
same sheet dropped again is not run again), validated, and then run as a campaign; it ends in
``processed/``. A sheet that fails validation goes to ``rejected/`` with a ``.errors.txt`` report
beside it and is never retried.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Annotated

from prefect import flow, get_run_logger
from pydantic import BaseModel

from castflow import campaigns, redact
from castflow.db import queries
from castflow.inputs import PathRefused, flow_path
from castflow.pipeline import UserError
from castflow.runtime import get_runtime
from castflow.sheets import content_hash
from castflow.storage import Storage
from flows.form import label
from flows.run_campaign import run_campaign


class SheetOutcome(BaseModel):
    sheet: str
    outcome: str  # ran | rejected | duplicate
    campaign_id: str | None = None
    detail: str = ""


class _Folder:
    """An inbox folder on this machine."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def new(self) -> list[str]:
        return sorted(p.name for p in self.root.iterdir() if p.is_file() and p.suffix.lower() == ".csv")

    def claim(self, name: str) -> Path | None:
        """The sheet moved into processing/ (None: another sweep took it)."""
        try:
            return _move(self.root / name, self.root / "processing")
        except FileNotFoundError:
            return None

    def finish(self, claimed: Path, folder: str, report: str | None = None) -> None:
        done = _move(claimed, self.root / folder)
        if report is not None:
            done.with_name(done.name + ".errors.txt").write_text(report, encoding="utf-8")


class _Prefix:
    """An inbox prefix in castflow's storage (local folder or Supabase bucket)."""

    def __init__(self, storage: Storage, prefix: str, work: Path) -> None:
        self.storage, self.prefix, self.work = storage, prefix.strip("/"), work
        self.keys: dict[Path, str] = {}
        work.mkdir(parents=True, exist_ok=True)

    def new(self) -> list[str]:
        keys = self.storage.list_keys(self.prefix)
        return [k.rsplit("/", 1)[-1] for k in keys if k.lower().endswith(".csv")]

    def claim(self, name: str) -> Path | None:
        """The sheet moved (server-side) to processing/ and fetched (None: another sweep took it)."""
        key = f"{self.prefix}/processing/{uuid.uuid4().hex[:8]}-{name}"
        if not self.storage.move(f"{self.prefix}/{name}", key):
            return None
        local = self.storage.fetch(key, self.work / key.rsplit("/", 1)[-1])
        self.keys[local] = key
        return local

    def finish(self, claimed: Path, folder: str, report: str | None = None) -> None:
        key = self.keys.pop(claimed)
        name = key.rsplit("/", 1)[-1]
        self.storage.move(key, f"{self.prefix}/{folder}/{name}")
        if report is not None:
            notes = claimed.with_name(claimed.name + ".errors.txt")
            notes.write_text(report, encoding="utf-8")
            self.storage.put_file(f"{self.prefix}/{folder}/{name}.errors.txt", notes, "text/plain")


def _move(path: Path, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    dest = folder / path.name
    stem, n = dest.stem, 1
    while dest.exists():  # never overwrite an earlier sheet of the same name
        dest = folder / f"{stem}-{n}{dest.suffix}"
        n += 1
    os.rename(path, dest)  # atomic; FileNotFoundError when another sweep moved it first
    return dest


@flow(name="sweep-inbox", validate_parameters=True)
def sweep_inbox(
    inbox: Annotated[str, label("Inbox")] = "",
    budget_usd: Annotated[float, label("Budget per sheet (USD)", ge=0)] = 0.0,
    skip_invalid: Annotated[bool, label("Run the valid rows")] = False,
) -> list[SheetOutcome]:
    """Run every new sheet of the inbox once; refuse invalid ones with their error report.

    Args:
        inbox: Folder teams drop sheets into (on the worker, inside its parameter roots), or
            storage:PREFIX in castflow's storage. Empty: CASTFLOW_DATA_DIR/inbox.
        budget_usd: Each sheet's campaign budget. 0: no budget.
        skip_invalid: Run the valid rows of sheets with problems; off, such a sheet goes to rejected/.
    """
    rt = get_runtime()
    redact.install(rt.settings)
    log = get_run_logger()
    spec = inbox or str(rt.settings.data_dir / "inbox")
    box: _Folder | _Prefix
    if spec.startswith("storage:"):
        box = _Prefix(rt.storage, spec.removeprefix("storage:"), rt.settings.data_dir / "inbox-work")
    else:
        try:  # from a deployment, only a folder inside the parameter roots
            box = _Folder(flow_path(rt.settings, "sweep-inbox", spec, what="inbox", folder=True))
        except PathRefused as exc:
            raise UserError(str(exc)) from None
    outcomes: list[SheetOutcome] = []
    for name in box.new():
        claimed = box.claim(name)
        if claimed is None:
            continue  # another sweep took it
        digest = content_hash(claimed.read_bytes())
        with rt.session() as s:
            earlier = queries.campaign_by_hash(s, sheet_hash=digest)
            earlier_id = str(earlier.id) if earlier else None
        if earlier_id:
            box.finish(claimed, "processed")
            outcomes.append(SheetOutcome(sheet=name, outcome="duplicate", campaign_id=earlier_id))
            log.info("%s was run before (campaign %s): not run again", name, earlier_id)
            continue
        sheet = campaigns.load_sheet(rt, claimed)
        if sheet.sheet_errors or (sheet.errors and not skip_invalid):
            box.finish(claimed, "rejected", redact.redact("\n".join(str(p) for p in sheet.problems)) + "\n")
            outcomes.append(
                SheetOutcome(sheet=name, outcome="rejected", detail=f"{len(sheet.errors)} error(s)")
            )
            log.warning("%s refused: %d error(s), see rejected/%s.errors.txt", name, len(sheet.errors), name)
            continue
        result = run_campaign(
            sheet=str(claimed),
            name=Path(name).stem,
            budget_usd=budget_usd,
            skip_invalid=skip_invalid,
        )
        box.finish(claimed, "processed")
        outcomes.append(
            SheetOutcome(
                sheet=name,
                outcome="ran",
                campaign_id=result.campaign_id,
                detail=f"{result.succeeded} succeeded, {result.failed} failed, {result.skipped} skipped",
            )
        )
    return outcomes
