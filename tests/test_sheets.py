"""Campaign sheets: reading (BOM, separators, quoted newlines) and validation that lists every problem
with the row as a spreadsheet shows it, the column and the reason."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from castflow import media
from castflow.settings import Settings
from castflow.sheets import ActorInfo, Sheet, escape_cell, is_formula_like, read_sheet

ACTORS = {
    "maya": ActorInfo("maya", "espeak-ng", "local"),
    "nia": ActorInfo("nia", "fal-ai/elevenlabs/tts/multilingual-v2", "fal"),
}


def sheet(tmp_path: Path, text: str | bytes, **settings: object) -> Sheet:
    path = tmp_path / "sheet.csv"
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    owners = {"v-maya": "maya"}
    return read_sheet(
        path,
        settings=Settings(data_dir=tmp_path / "data", **settings),  # type: ignore[arg-type]
        actors=ACTORS,
        variant_owner=owners.get,
    )


def wav(path: Path, seconds: float) -> Path:
    rate = 16_000
    t = np.arange(int(rate * seconds)) / rate
    media.write_wav(path, (np.sin(2 * np.pi * 220 * t) * 8000).astype("int16"), rate)
    return path


def test_a_valid_sheet_with_bom_quoted_newlines_and_passthrough_columns(tmp_path: Path) -> None:
    wav(tmp_path / "vo.wav", 1.5)
    text = (
        "\ufeffRow_ID,Actor,Script,Audio,Scene,Resolution,Seed,Captions,Campaign Tag,utm_source\n"
        'a1,maya,"Hello,\nworld!",,"a beach",720p,7,yes,spring,tiktok\n'
        "a2,nia,,vo.wav,,,,,spring,meta\n"
        ",maya,Third line.,,,,,no,,\n"
    )
    s = sheet(tmp_path, text)
    assert s.errors == []
    assert [r.row for r in s.rows] == [2, 3, 4]
    first, second, third = s.rows
    req = first.request
    assert (first.row_id, req.script, req.scene, req.resolution, req.seed, req.captions) == (
        "a1",
        "Hello, world!",
        "a beach",
        "720p",
        7,
        "clean",
    )
    assert first.extra == {"campaign tag": "spring", "utm_source": "tiktok"}
    assert second.request.audio_path == tmp_path / "vo.wav"
    assert second.audio_seconds == pytest.approx(1.5, abs=0.01)
    assert (second.request.resolution, second.request.seed, second.request.captions) == ("480p", 0, "no")
    assert third.row_id == "row-4"  # generated from the spreadsheet row
    assert len(s.content_hash) == 64


def test_semicolon_sheets_are_read(tmp_path: Path) -> None:
    s = sheet(tmp_path, 'actor;script;scene\nmaya;"Hola; qué tal";"un café, de día"\n')
    assert s.errors == []
    assert (s.rows[0].request.script, s.rows[0].request.scene) == ("Hola; qué tal", "un café, de día")


def test_every_error_of_a_sheet_comes_at_once_with_row_and_column(tmp_path: Path) -> None:
    (tmp_path / "broken.wav").write_bytes(b"not audio at all")
    text = (
        "row_id,actor,script,audio,resolution,seed,captions,image_variant_id\n"
        'r1,maya,"A line\nthat spans two lines in the cell",,,,,\n'  # row 2, valid
        "r2,mallory,Hi.,,,,,\n"  # row 3: unknown actor
        "r3,maya,,,,,,\n"  # row 4: neither
        "r4,maya,Hi.,x.wav,,,,\n"  # row 5: a script with a missing audio file (the script is its words)
        f"r5,maya,{'word ' * 500},,,,,\n"  # row 6: too long for espeak-ng (2000)
        "r6,maya,,broken.wav,,,,\n"  # row 7: unreadable audio
        "r1,maya,Hi again.,,,,,\n"  # row 8: duplicate id
        "r8,maya,Hi.,,1080p,-3,maybe,\n"  # row 9: resolution, seed, captions
        "r9,maya,Hi.,,,,,v-unknown\n"  # row 10: unknown variant
        "r10,nia,Hi.,,,,,v-maya\n"  # row 11: another actor's variant
        "r 11,maya,Hi.,,,,,\n"  # row 12: bad row id
    )
    s = sheet(tmp_path, text)
    found = {(p.row, p.column) for p in s.errors}
    assert found == {
        (3, "actor"),
        (4, "script"),
        (5, "audio"),
        (6, "script"),
        (7, "audio"),
        (8, "row_id"),
        (9, "resolution"),
        (9, "seed"),
        (9, "captions"),
        (10, "image_variant_id"),
        (11, "image_variant_id"),
        (12, "row_id"),
    }
    assert [r.row_id for r in s.rows] == ["r1"]
    messages = {(p.row, p.column): str(p) for p in s.errors}
    assert "unknown actor 'mallory' (known: maya, nia)" in messages[(3, "actor")]
    assert messages[(6, "script")].startswith("row 6, column script: is 2499 characters long; espeak-ng")
    assert "first used in row 2" in messages[(8, "row_id")]
    assert "belongs to actor 'maya'" in messages[(11, "image_variant_id")]


def test_script_limits_follow_the_voice_model(tmp_path: Path) -> None:
    long = "word " * 500  # 2,499 characters: too long for eSpeak, fine for ElevenLabs (10,000)
    s = sheet(tmp_path, f"actor,script\nmaya,{long}\nnia,{long}\n")
    assert [(p.row, p.column) for p in s.errors] == [(2, "script")]
    assert [r.request.actor for r in s.rows] == ["nia"]


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"", "the sheet is empty"),
        (b"actor,script\n", "the sheet has a header but no rows"),
        (b"actor,script\nmaya,Caf\xe9 au lait\n", "not UTF-8 text (undecodable byte 0xe9 on line 2)"),
        (b"name,script\nmaya,Hi\n", "the sheet has no actor column"),
        (b"actor,scene\nmaya,beach\n", "neither a script nor an audio column"),
        (b"actor,script,script\nmaya,a,b\n", "column 'script' appears twice"),
    ],
)
def test_sheet_level_errors(tmp_path: Path, content: bytes, reason: str) -> None:
    s = sheet(tmp_path, content)
    assert s.rows == []
    assert len(s.errors) == 1
    assert reason in str(s.errors[0])


def test_row_limit(tmp_path: Path) -> None:
    s = sheet(tmp_path, "actor,script\n" + "maya,Hi.\n" * 4, campaign={"max_rows": 3})
    assert "the sheet has 4 rows; the limit is 3" in str(s.errors[0])


def test_formula_like_cells_are_flagged_and_escaped(tmp_path: Path) -> None:
    s = sheet(tmp_path, 'actor,script,note\nmaya,"=HYPERLINK(""http://x"")",@SUM(A1)\nmaya,Fine.,+1 555\n')
    assert s.errors == []
    assert len(s.rows) == 2  # flagged, not refused: the text is said as written
    flagged = {(p.row, p.column) for p in s.warnings}
    assert flagged == {(2, "script"), (2, "note"), (3, "note")}
    assert is_formula_like("=1+1")
    assert not is_formula_like("Buy now")
    assert escape_cell("=1+1") == "'=1+1"
    assert escape_cell("-5 dollars") == "'-5 dollars"
    assert escape_cell("plain") == "plain"


def test_a_rows_fields_are_declared_once_by_the_request_model() -> None:
    from castflow.manifest import BASE_COLUMNS
    from castflow.models import VideoRequest
    from castflow.sheets import KNOWN_COLUMNS, request_cells

    assert ("row_id", *VideoRequest.model_fields) == KNOWN_COLUMNS
    assert ["row", *KNOWN_COLUMNS] == BASE_COLUMNS
    req = VideoRequest(actor="maya", script="Hi.", scene="a pier", seed=3, captions=True)
    cells = request_cells(req)
    assert list(cells) == list(VideoRequest.model_fields)  # every field, in the sheet's order
    assert (cells["scene"], cells["audio"], cells["seed"], cells["captions"]) == ("a pier", "", 3, "clean")


@pytest.mark.parametrize("newline", ["\n", "\r\n", "\r"], ids=["LF", "CRLF", "CR"])
def test_blank_lines_are_not_rows_wherever_they_are(tmp_path: Path, newline: str) -> None:
    lines = ["", "actor,script,scene", "maya,First.,a pier", "", " , ,", "nia,Second.,", "", "", ""]
    s = sheet(tmp_path, newline.join(lines))
    assert s.errors == []
    assert [(r.row, r.request.actor) for r in s.rows] == [(3, "maya"), (6, "nia")]  # rows as shown
    assert s.total_rows == 2
    (note,) = s.warnings
    assert str(note) == "sheet: 4 blank line(s) skipped (row 4-5, 7-8) (warning)"


def test_a_header_followed_by_blank_lines_has_no_rows(tmp_path: Path) -> None:
    s = sheet(tmp_path, "actor,script\r\n\r\n\r\n")
    assert [str(p) for p in s.errors] == ["sheet: the sheet has a header but no rows"]


def test_a_record_of_the_wrong_width_is_named_by_its_row(tmp_path: Path) -> None:
    s = sheet(tmp_path, 'actor,script\nmaya,"Hello,\nthere"\nnia,One,two\nleo\n')
    assert {(p.row, p.column) for p in s.errors} == {(3, None), (4, None)}
    assert "has 3 fields; the header has 2" in str(s.errors[0])
    assert "has 1 fields; the header has 2" in str(s.errors[1])
    # Errors of those rows alone: the row between them is validated (and runs with --skip-invalid).
    assert [r.row for r in s.rows] == [2]
    assert s.total_rows == 3


def test_control_characters_are_refused_with_row_and_column(tmp_path: Path) -> None:
    s = sheet(
        tmp_path,
        'actor,script,scene,note\nmaya,"Line one\nline two\tend",a pier,ok\nmaya,Hi\x00there,,\nmaya,Hi.,a\x1b[31m pier,\nmaya,Ok.,,bell\x07\n',
    )
    assert [r.row for r in s.rows] == [2]  # a line break and a tab inside a quoted script are text
    assert s.rows[0].request.script == "Line one line two end"
    found = {(p.row, p.column): str(p) for p in s.errors}
    assert set(found) == {(3, "script"), (4, "scene"), (5, "note")}
    assert "U+0000" in found[(3, "script")]
    assert "U+001B" in found[(4, "scene")]
    assert "U+0007" in found[(5, "note")]


def test_a_script_with_nothing_to_say_is_refused(tmp_path: Path) -> None:
    s = sheet(tmp_path, "actor,script\nmaya,\u200b\u200b\u200b\nmaya,...!\nmaya,Hola 你好\n")
    assert [(p.row, p.column) for p in s.errors] == [(2, "script"), (3, "script")]
    assert all("nothing to say" in str(p) for p in s.errors)
    assert [r.row for r in s.rows] == [4]


@pytest.mark.parametrize("seed", ["\u0663", "1_000", "+5", " 7x", "1e3"])
def test_seed_takes_ascii_digits_only(tmp_path: Path, seed: str) -> None:
    s = sheet(tmp_path, f"actor,script,seed\nmaya,Hi.,{seed}\n")
    ((problem),) = s.errors
    assert (problem.row, problem.column) == (2, "seed")
    assert "digits 0-9 only" in str(problem)


@pytest.mark.parametrize("column", ["status", "error", "row", "video_url", "Cost_USD"])
def test_a_column_the_manifest_writes_is_refused(tmp_path: Path, column: str) -> None:
    s = sheet(tmp_path, f"actor,script,{column}\nmaya,Hi.,mine\n")
    ((problem),) = s.errors
    assert (problem.row, problem.column) == (1, column.lower())
    assert "rename it" in str(problem)
    assert s.rows == []


def test_flags_that_do_nothing_are_said_the_same_way(tmp_path: Path) -> None:
    from castflow.models import VideoRequest

    wav(tmp_path / "vo.wav", 1.0)
    s = sheet(tmp_path, "actor,audio,captions\nmaya,vo.wav,yes\n")
    ((warning),) = [p for p in s.warnings if p.column == "captions"]
    assert (
        str(warning)
        == "row 2, column captions: captions need the words: give the audio's script too; this row gets none (warning)"
    )
    request = VideoRequest(actor="maya", audio=str(tmp_path / "vo.wav"), captions=True)
    assert request.ignored() == [
        ("captions", "captions need the words: give the audio's script too; this video gets none")
    ]
    assert VideoRequest(actor="maya", script="Hi.", captions=True).ignored() == []


def test_formula_like_cells_and_header_cells_are_escaped_in_the_manifest() -> None:
    from castflow.manifest import manifest_csv
    from castflow.sheets import is_formula_like

    assert all(is_formula_like(v) for v in ["=1+1", " =1+1", "\x01=cmd", "\t1", "@SUM(A1)", "-2", " +3"])
    assert not any(is_formula_like(v) for v in ["", "Hi =1", "a-b", "1.5"])
    text = manifest_csv(["row", "=hdr", "@evil"], [{"row": 2, "=hdr": " =1+1", "@evil": "fine"}])
    assert text == "row,'=hdr,'@evil\n2,' =1+1,fine\n"


def test_audio_files_stay_inside_the_sheets_folder_and_the_input_roots(tmp_path: Path) -> None:
    import os

    here = tmp_path / "campaign"
    here.mkdir()
    outside = wav(tmp_path / "outside.wav", 1.0)
    wav(here / "vo.wav", 1.0)
    (here / "link.wav").symlink_to(outside)
    (here / "inner.wav").symlink_to(here / "vo.wav")
    os.mkfifo(here / "pipe.wav")
    (here / "folder.wav").mkdir()
    rows = [
        "../outside.wav",
        str(outside),
        "link.wav",
        "pipe.wav",
        "/dev/zero",
        "folder.wav",
        "inner.wav",
        "vo.wav",
    ]
    text = "actor,audio\n" + "".join(f"maya,{r}\n" for r in rows)
    path = here / "sheet.csv"
    path.write_text(text, encoding="utf-8")
    s = read_sheet(path, settings=Settings(data_dir=tmp_path / "data"), actors=ACTORS)
    found = {p.row: str(p) for p in s.errors}
    for row in (2, 3, 4, 6):  # '..', an absolute path, a symlink out of the folder, /dev/zero
        assert "is outside the folders inputs may come from" in found[row]
    assert f"file {rows[0]!r}" in found[2]  # named as the user wrote it
    assert "is a pipe, not a regular file" in found[5]  # refused without being opened (it would hang)
    assert "is a folder, not a file" in found[7]
    assert [r.row for r in s.rows] == [8, 9]  # a symlink inside the folder is fine
    allowed = read_sheet(
        path,
        settings=Settings(data_dir=tmp_path / "data", campaign={"input_roots": [str(tmp_path)]}),  # type: ignore[arg-type]
        actors=ACTORS,
    )
    assert sorted({p.row for p in allowed.errors}) == [5, 6, 7]  # the root lets outside.wav in, not the rest


def test_sheets_are_bounded_before_and_while_they_are_read(tmp_path: Path) -> None:
    import os

    big = tmp_path / "big.csv"
    with big.open("wb") as fh:  # sparse: 40 MB that cost nothing to make
        fh.write(b"actor,script\n")
        fh.truncate(40 * 1024 * 1024)
    s = read_sheet(big, settings=Settings(data_dir=tmp_path / "data"), actors=ACTORS)
    assert [str(p) for p in s.errors] == [
        "sheet: the sheet is 40.0 MiB; the limit is 32.0 MiB (CASTFLOW_CAMPAIGN__MAX_SHEET_BYTES)"
    ]
    os.mkfifo(tmp_path / "pipe.csv")
    s = read_sheet(tmp_path / "pipe.csv", settings=Settings(data_dir=tmp_path / "data"), actors=ACTORS)
    assert [str(p) for p in s.errors] == ["sheet: the sheet is a pipe, not a regular file"]
    many = "actor,script\n" + "maya,Hi.\n" * 30 + "\n" * 50
    s = sheet(tmp_path, many, campaign={"max_rows": 20})
    assert [str(p) for p in s.errors] == ["sheet: the sheet has 30 rows; the limit is 20"]
    assert sheet(tmp_path, many, campaign={"max_rows": 30}).errors == []  # blank lines are not rows
    s = sheet(tmp_path, "actor,script\nmaya," + "x" * 60_000 + "\n")
    assert [(p.row, str(p)) for p in s.errors] == [
        (2, "row 2: has a cell of 60000 characters; the limit is 50000")
    ]
    s = sheet(tmp_path, "actor,scene,script\nmaya," + "sunny " * 400 + ",Hi.\n")
    assert [(p.row, p.column) for p in s.errors] == [(2, "scene")]
    assert "the image edit takes at most 2000" in str(s.errors[0])


def test_caption_styles_and_an_audio_with_its_script(tmp_path: Path) -> None:
    wav(tmp_path / "vo.wav", 1.0)
    s = sheet(
        tmp_path,
        "row_id,actor,script,audio,captions\n"
        "a,maya,Hi there.,,bold\n"
        "b,maya,Hi there.,,KARAOKE\n"
        "c,maya,What the voice-over says.,vo.wav,clean\n"
        "d,maya,Hi.,,Yes\n",
    )
    assert s.errors == []
    assert [r.request.captions for r in s.rows] == ["bold", "karaoke", "clean", "clean"]
    told = s.rows[2].request
    assert told.audio is not None
    assert told.script == "What the voice-over says."  # its words, for captions: not spoken
    bad = sheet(
        tmp_path,
        "row_id,actor,script,captions\na,maya,Hi.,wavy\nb,maya,Runes ᚠᚢ here.,bold\n",
    )
    assert [str(p) for p in bad.errors] == [
        "row 2, column captions: 'wavy' is not a caption style (clean, bold, karaoke, yes or no)",
        "row 3, column captions: no caption font draws 'ᚠ' (U+16A0 RUNIC LETTER FEHU FEOH FE F), "
        "'ᚢ' (U+16A2 RUNIC LETTER URUZ UR U)",
    ]
