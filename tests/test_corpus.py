"""The corpus of awkward and hostile sheets (tests/corpus, verdicts in verdicts.toml), each run through
`campaign validate`, `campaign run --dry-run` and `campaign run` as a user would: the exit code, the row
and column named, no traceback, nothing recorded for a refused sheet, no file written outside the data
directory. Sheets too big to keep in the repository, and files that git cannot hold (FIFOs, symlinks),
are made at test time."""

from __future__ import annotations

import io
import math
import os
import struct
import tomllib
import wave
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from castflow.actors import ensure_sample_actors
from castflow.cli import app
from castflow.db.tables import Campaign, Video, VideoStatus
from castflow.runtime import Runtime

CORPUS = Path(__file__).parent / "corpus"
VERDICTS: dict[str, dict[str, Any]] = tomllib.loads((CORPUS / "verdicts.toml").read_text(encoding="utf-8"))
AUDIO_ROW = b"row_id,actor,audio\na,leo,voice.wav\n"

pytestmark = [pytest.mark.flow, pytest.mark.usefixtures("prefect_server")]


def _wav(path: Path, seconds: float = 1.0, rate: int = 16_000) -> None:
    frames = b"".join(
        struct.pack("<h", int(8000 * math.sin(2 * math.pi * 220 * n / rate)))
        for n in range(int(seconds * rate))
    )
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(frames)


def _xlsx(folder: Path) -> Path:
    """A workbook as spreadsheet programs write it (a zip of XML parts), sent in place of a CSV."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("[Content_Types].xml", '<?xml version="1.0"?><Types/>')
        z.writestr("xl/worksheets/sheet1.xml", "<worksheet><sheetData/></worksheet>")
    path = folder / "workbook.xlsx"
    path.write_bytes(buf.getvalue())
    return path


def _huge_sheet(folder: Path) -> Path:
    path = folder / "huge-sheet.csv"
    row = b"x,leo,Hello there from a sheet far too big.\n"
    path.write_bytes(b"row_id,actor,script\n" + row * (33 * 1024 * 1024 // len(row) + 1))
    return path


def _huge_cell(folder: Path) -> Path:
    path = folder / "huge-cell.csv"
    path.write_bytes(b"row_id,actor,script\na,leo," + b"a" * 60_000 + b"\n")
    return path


def _many_columns(folder: Path) -> Path:
    path = folder / "too-many-columns.csv"
    extra = ",".join(f"c{n}" for n in range(247))
    path.write_text(f"row_id,actor,script,{extra}\na,leo,Hi.{',' * 247}\n", encoding="utf-8")
    return path


def _many_rows(folder: Path) -> Path:
    path = folder / "too-many-rows.csv"
    path.write_text(
        "row_id,actor,script\n" + "".join(f"r{n},leo,Row {n}.\n" for n in range(10_001)), encoding="utf-8"
    )
    return path


def _audio_row(folder: Path, make: Callable[[Path], None]) -> Path:
    make(folder / "voice.wav")
    path = folder / "audio.csv"
    path.write_bytes(AUDIO_ROW)
    return path


MADE: dict[str, Callable[[Path], Path]] = {
    "xlsx": _xlsx,
    "huge_sheet": _huge_sheet,
    "huge_cell": _huge_cell,
    "many_columns": _many_columns,
    "many_rows": _many_rows,
    "symlink": lambda f: _audio_row(f, lambda p: p.symlink_to(f.parent / "outside.wav")),
    "fifo": lambda f: _audio_row(f, os.mkfifo),
    "folder": lambda f: _audio_row(f, Path.mkdir),
    "device": lambda f: _write(f / "device.csv", b"row_id,actor,audio\na,leo,/dev/zero\n"),
}


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _tree(root: Path, skip: Path) -> dict[str, tuple[int, int]]:
    """Every entry under ``root`` but ``skip`` (the data dir), with size and modification time."""
    found = {}
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        dirnames[:] = [d for d in dirnames if here / d != skip]
        for name in [*dirnames, *filenames]:
            st = (here / name).lstat()
            found[str((here / name).relative_to(root))] = (st.st_size, st.st_mtime_ns)
    return found


@pytest.mark.parametrize("case", sorted(VERDICTS))
def test_each_sheet_of_the_corpus_gets_its_verdict(case: str, rt: Runtime, tmp_path: Path) -> None:
    verdict = VERDICTS[case]
    ensure_sample_actors(rt)
    folder = tmp_path / "sheets"
    folder.mkdir()
    _wav(tmp_path / "outside.wav")  # a real, decodable file: only confinement can refuse it
    if "made" in verdict:
        sheet = MADE[verdict["made"]](folder)
    else:
        sheet = folder / f"{case}.csv"
        sheet.write_bytes((CORPUS / f"{case}.csv").read_bytes())
    before = _tree(tmp_path, rt.settings.data_dir)
    accepted = verdict["verdict"] == "accepted"

    runner = CliRunner()
    saved = dict(os.environ)  # an in-process run sets Prefect's defaults in the environment
    try:
        for command in (["validate"], ["run", "--dry-run"], ["run"]):
            result = runner.invoke(app, ["campaign", *command, str(sheet)])
            said = f"castflow campaign {' '.join(command)} ({case}):\n{result.output}"
            assert result.exit_code == (0 if accepted else 2), said
            assert result.exception is None or isinstance(result.exception, SystemExit), said
            assert "Traceback" not in result.output, said
            for fragment in verdict.get("says", []):
                assert fragment in result.output, f"{fragment!r} missing from {said}"
    finally:
        os.environ.clear()
        os.environ.update(saved)

    with rt.session() as s:
        videos = list(s.scalars(sa.select(Video)))
        campaigns = list(s.scalars(sa.select(Campaign)))
    if accepted:
        assert [v.status for v in videos] == [VideoStatus.succeeded] * verdict["rows"]
        assert len(campaigns) == 1
    else:
        assert videos == []  # refused before anything was recorded
        assert campaigns == []
    if "manifest_has" in verdict:
        (manifest,) = (rt.settings.data_dir / "manifests").glob("*-manifest.csv")
        text = manifest.read_text(encoding="utf-8")
        for fragment in verdict["manifest_has"]:
            assert fragment in text, f"{fragment!r} missing from the manifest:\n{text}"
    after = _tree(tmp_path, rt.settings.data_dir)
    assert after == before  # nothing written (or moved) outside the data dir
