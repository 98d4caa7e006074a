"""A campaign's manifest: one record per output of each sheet row (the render as it came, ``source``, and
each export profile's file) with the row's inputs, passthrough columns and outcome."""

from __future__ import annotations

import csv
import io
import uuid
from pathlib import Path
from typing import Any

from castflow.campaigns import slug
from castflow.db import queries
from castflow.db.tables import Video
from castflow.runtime import Runtime
from castflow.sheets import KNOWN_COLUMNS, OUTPUT_COLUMNS, Sheet, escape_cell, request_cells

BASE_COLUMNS = ["row", *KNOWN_COLUMNS]
RESULT_COLUMNS = [c for c in OUTPUT_COLUMNS if c != "row"]  # a sheet may not use these names


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
            **request_cells(row.request),
            **{c: row.extra.get(c, "") for c in extras},
        }
        record.update(_outcome(video))
        records.append(record)
        for output in (video.outputs or []) if video is not None else []:
            records.append({**record, **_output(output)})
    for line in sorted(sheet.invalid_rows):
        video = videos.get(f"row-{line}")
        records.append({"row": line, "row_id": f"row-{line}", **_outcome(video)})
    records.sort(key=lambda r: int(r["row"]))  # stable: a row's outputs stay after its source
    return BASE_COLUMNS + extras + RESULT_COLUMNS, records


def _outcome(video: Video | None) -> dict[str, Any]:
    if video is None:
        return {"format": "source", "status": "pending"}
    return {
        "format": "source",
        "status": video.status.value,
        "failed_stage": video.failed_stage or "",
        "error": video.error or "",
        "video_key": video.video_key or "",
        "video_url": video.video_url or "",
        "audio_seconds": "" if video.audio_seconds is None else round(video.audio_seconds, 3),
        "video_seconds": "" if video.video_seconds is None else round(video.video_seconds, 3),
        "cost_usd": round(video.cost_usd, 6),
        "warning": "; ".join(video.warnings or []),
    }


def _output(output: dict[str, Any]) -> dict[str, Any]:
    """An export profile's record: its file, or why it failed its check (the row's cost stays on the
    source record: finishing is free)."""
    seconds = output.get("seconds")
    return {
        "format": output.get("format", ""),
        "status": output.get("status", ""),
        "failed_stage": "finish" if output.get("status") == "failed" else "",
        "error": output.get("error") or "",
        "video_key": output.get("key") or "",
        "video_url": output.get("url") or "",
        "video_seconds": "" if seconds is None else round(float(seconds), 3),
        "cost_usd": 0.0,
        "music_licence": output.get("music_licence") or "",
    }


def manifest_csv(columns: list[str], records: list[dict[str, Any]]) -> str:
    """The manifest as CSV text; formula-like cells, header cells included (a sheet's own column names
    are written back), are escaped so a spreadsheet shows them as text."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([escape_cell(c) for c in columns])
    for record in records:
        writer.writerow(
            [escape_cell(v) if isinstance(v, str) else v for v in (record.get(c, "") for c in columns)]
        )
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
