"""run-campaign's ``sheet`` parameter: a sheet pasted into the form (copied from a spreadsheet), a storage
key, or a file name in the sheets folder; refused with a reason before anything is spent."""

from __future__ import annotations

from pathlib import Path

import pytest

from castflow import campaigns
from castflow.actors import ensure_sample_actors
from castflow.inputs import PathRefused, sheet_source
from castflow.runtime import Runtime

COPIED = "row_id\tactor\tscript\tscene\nr1\tmaya\tHello, from a spreadsheet.\ta park, at noon\n"


def test_a_pasted_sheet_is_kept_in_the_sheets_folder_under_its_hash(rt: Runtime) -> None:
    ensure_sample_actors(rt)
    source = sheet_source(rt.settings, rt.storage, COPIED)
    roots = rt.settings.parameter_roots("run-campaign")
    assert source.path.parent == roots[0]  # relative audio paths start at the sheets folder
    assert source.default_name.startswith("pasted-")
    assert source.path.stem == source.default_name
    assert source.path.read_text(encoding="utf-8") == COPIED
    again = sheet_source(rt.settings, rt.storage, COPIED.rstrip("\n"))  # the same text: the same sheet
    assert again.path == source.path
    sheet = campaigns.load_sheet(rt, source.path)
    assert not sheet.errors
    (row,) = sheet.rows
    # Tab-separated (cells copied from a spreadsheet): the comma inside the script is text.
    assert (row.row_id, row.request.script, row.request.scene) == (
        "r1",
        "Hello, from a spreadsheet.",
        "a park, at noon",
    )


def test_a_pasted_sheet_over_the_size_limit_is_refused_before_it_is_written(
    rt: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(rt.settings.campaign, "max_sheet_bytes", 1024)
    with pytest.raises(PathRefused, match=r"the pasted sheet is .* MiB; the limit is"):
        sheet_source(rt.settings, rt.storage, "actor,script\n" + "maya,Hi there.\n" * 200)
    assert not list(rt.settings.parameter_roots("run-campaign")[0].glob("pasted-*"))


def test_a_sheet_in_storage_is_fetched(rt: Runtime, tmp_path: Path) -> None:
    local = tmp_path / "spring.csv"
    local.write_text("actor,script\nleo,From storage.\n", encoding="utf-8")
    rt.storage.put_file("campaigns/spring.csv", local, "text/csv")
    source = sheet_source(rt.settings, rt.storage, "storage:campaigns/spring.csv")
    assert source.default_name == "spring"
    assert source.path.read_bytes() == local.read_bytes()


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("storage:", "give a storage key"),
        ("storage:../etc/passwd", "give a storage key"),
        ("storage:campaigns//x.csv", "give a storage key"),
        ("storage:campaigns/missing.csv", "no such object in castflow's storage"),
    ],
)
def test_bad_storage_keys_are_refused_with_the_reason(rt: Runtime, value: str, reason: str) -> None:
    with pytest.raises(PathRefused, match=reason):
        sheet_source(rt.settings, rt.storage, value)


def test_a_file_name_is_a_path_as_before(rt: Runtime, tmp_path: Path) -> None:
    sheet = tmp_path / "autumn.csv"
    sheet.write_text("actor,script\nava,Hi.\n", encoding="utf-8")
    source = sheet_source(rt.settings, rt.storage, str(sheet))  # the CLI's process: any path
    assert (source.path, source.default_name) == (sheet, "autumn")
    with pytest.raises(PathRefused, match="does not exist"):
        sheet_source(rt.settings, rt.storage, str(tmp_path / "nope.csv"))
