"""Matrix campaigns: expansion (counts, zip, filters, a seeded sample), deterministic ids and names,
collisions and bad files refused with the file, the field and the reason; a matrix run end to end."""

from __future__ import annotations

import csv
import io
import json
import re
import textwrap
from pathlib import Path

import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from castflow import matrix
from castflow.actors import ensure_sample_actors
from castflow.cli import app
from castflow.db.tables import StageRun, Video
from castflow.runtime import Runtime
from castflow.settings import Settings
from castflow.sheets import ActorInfo, read_sheet

ACTORS = {k: ActorInfo(k, "espeak-ng", "local") for k in ("maya", "leo", "ava", "big_sis")}

BASE = """
campaign: spring
hooks:
  - {id: h1, text: "Okay, real talk."}
  - {id: h2, text: "Stop scrolling."}
  - {id: h3, text: "My secret."}
bodies:
  - {id: b1, text: "This serum changed my mornings."}
  - {id: b2, text: "Two drops and I glow."}
actors: [maya, leo]
scenes:
  - {id: kitchen, prompt: a sunny kitchen}
  - a beach at golden hour
"""


def write(tmp_path: Path, text: str, name: str = "matrix.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def expand(tmp_path: Path, text: str, **kw: object) -> matrix.Expansion:
    return matrix.expand(write(tmp_path, text), actors=ACTORS, **kw)  # type: ignore[arg-type]


def refused(tmp_path: Path, text: str) -> str:
    with pytest.raises(matrix.MatrixError) as caught:
        expand(tmp_path, text)
    return str(caught.value)


def rows(e: matrix.Expansion) -> list[dict[str, str]]:
    return [dict(zip(e.columns, r, strict=True)) for r in e.rows]


def test_every_combination_in_axis_order_with_its_script_scene_and_axis_columns(tmp_path: Path) -> None:
    e = expand(tmp_path, BASE)
    assert (e.combinations, len(e.rows)) == (3 * 2 * 2 * 2, 24)
    first, second = rows(e)[:2]
    assert first["name"] == "spring_h1_b1_maya_kitchen"  # no ratio axis: its field and separator left out
    assert second["name"] == "spring_h1_b1_maya_a-beach-at-golden-hour"  # a scene's id from its prompt
    assert first["script"] == "Okay, real talk. This serum changed my mornings."
    assert (first["scene"], first["hook_id"], first["body_id"], first["scene_id"]) == (
        "a sunny kitchen", "h1", "b1", "kitchen"
    )  # fmt: skip
    assert rows(e)[-1]["name"] == "spring_h3_b2_leo_a-beach-at-golden-hour"
    assert len({r["row_id"] for r in rows(e)}) == 24
    assert all(r["row_id"].startswith("v") and len(r["row_id"]) == 11 for r in rows(e))
    assert "captions" not in e.columns  # columns nobody fills are left out


def test_ids_stay_with_their_combination_whatever_else_changes(tmp_path: Path) -> None:
    before = {r["name"]: r["row_id"] for r in rows(expand(tmp_path, BASE))}
    reordered = BASE.replace("actors: [maya, leo]", "actors: [leo, maya, ava]").replace(
        "campaign: spring", "campaign: spring\nname: '{variant}-{hook}-{actor}-{body}-{scene}'"
    )
    after = {
        (r["hook_id"], r["body_id"], r["actor"], r["scene_id"]): r for r in rows(expand(tmp_path, reordered))
    }
    assert len(after) == 36
    for name, vid in before.items():
        _, hook, body, actor, scene = name.split("_", 4)
        scene_id = "kitchen" if scene == "kitchen" else "a-beach-at-golden-hour"
        again = after[(hook, body, actor, scene_id)]
        assert again["row_id"] == vid
        assert again["name"] == f"{vid}-{hook}-{actor}-{body}-{scene_id}"


def test_zip_puts_axes_side_by_side(tmp_path: Path) -> None:
    text = BASE.replace('  - {id: h3, text: "My secret."}\n', "") + "zip: [[hooks, bodies]]\n"
    e = expand(tmp_path, text)
    assert len(e.rows) == 2 * 2 * 2
    assert {(r["hook_id"], r["body_id"]) for r in rows(e)} == {("h1", "b1"), ("h2", "b2")}
    whole = expand(tmp_path, BASE.replace("  - {id: h3, text: \"My secret.\"}\n", "").replace(
        "actors: [maya, leo]", "actors: maya") + "combine: zip\n")  # fmt: skip
    # every axis side by side; a single value goes with each
    assert [(r["hook_id"], r["body_id"], r["actor"], r["scene_id"]) for r in rows(whole)] == [
        ("h1", "b1", "maya", "kitchen"), ("h2", "b2", "maya", "a-beach-at-golden-hour")
    ]  # fmt: skip


def test_include_exclude_and_a_seeded_sample(tmp_path: Path) -> None:
    e = expand(tmp_path, BASE + "exclude: [{hook: h3, scene: kitchen}, {actor: leo, body: [b2]}]\n")
    kept = rows(e)
    assert len(kept) == 24 - 4 - 6 + 1  # h3+kitchen (4), leo+b2 (6), both at once (1)
    assert not any(r["hook_id"] == "h3" and r["scene_id"] == "kitchen" for r in kept)
    assert not any(r["actor"] == "leo" and r["body_id"] == "b2" for r in kept)
    only = rows(
        expand(tmp_path, BASE + "include: [{actor: leo, hook: h1}, {scene: kitchen, body: b2, hook: h2}]\n")
    )
    assert len(only) == 4 + 2
    sampled = [r["row_id"] for r in rows(expand(tmp_path, BASE + "limit: 5\nseed: 3\n"))]
    assert len(sampled) == 5
    assert sampled == [r["row_id"] for r in rows(expand(tmp_path, BASE + "limit: 5\nseed: 3\n"))]
    assert sampled != [r["row_id"] for r in rows(expand(tmp_path, BASE + "limit: 5\nseed: 4\n"))]
    order = [r["row_id"] for r in rows(expand(tmp_path, BASE))]
    assert sampled == sorted(sampled, key=order.index)  # kept in the matrix's order
    filtered = rows(expand(tmp_path, BASE + "exclude: [{actor: leo}]\nlimit: 4\nseed: 3\n"))
    assert len(filtered) == 4
    assert all(r["actor"] == "maya" for r in filtered)


def test_a_huge_matrix_is_refused_unless_sampled(tmp_path: Path) -> None:
    many = "hooks:\n" + "".join(f"  - {{id: h{i}, text: hook {i}}}\n" for i in range(200))
    many += "bodies:\n" + "".join(f"  - {{id: b{i}, text: body {i}}}\n" for i in range(200))
    many += "actors: [maya, leo]\nscenes:\n" + "".join(f"  - scene {i}\n" for i in range(30))
    why = refused(tmp_path, many)
    assert "matrix.yaml: expands to 2,400,000 combinations" in why
    e = expand(tmp_path, many + "limit: 50\n")  # sampled by position: never all made
    assert len(e.rows) == 50
    few = "hooks:\n" + "".join(f"  - {{id: h{i}, text: hook {i}}}\n" for i in range(40))
    few += "bodies:\n" + "".join(f"  - {{id: b{i}, text: body {i}}}\n" for i in range(30))
    few += "actors: [maya]\n"
    with pytest.raises(matrix.MatrixError, match=r"expands to 1,200 rows; a campaign takes at most 1,000"):
        expand(tmp_path, few, max_rows=1000)


def test_names_are_sanitised_and_collisions_refused(tmp_path: Path) -> None:
    text = BASE.replace("actors: [maya, leo]", "actors: [big_sis]").replace(
        "campaign: spring", "campaign: Spring Sale!"
    )
    name = rows(expand(tmp_path, text))[0]["name"]
    assert name == "Spring-Sale_h1_b1_big-sis_kitchen"  # '_' only between fields: ad tools split on it
    assert matrix.NAME.match(name)
    why = refused(tmp_path, BASE + "name: '{campaign}_{hook}_{actor}_{scene}'\n")
    assert "matrix.yaml: name: two rows are named 'spring_h1_maya_kitchen' (hook h1, body b1" in why
    assert "body b2" in why
    assert "{variant}" in why
    case = """
    name: "{hook}{body}"
    hooks: [{id: ab, text: one}, {id: a, text: two}]
    bodies: [{id: c, text: three}, {id: Bc, text: four}]
    actors: maya
    """  # 'abc' and 'aBc': file systems that ignore case would merge them
    why = refused(tmp_path, case)
    assert (
        "two rows are named 'abc' and 'aBc' (letter case aside) (hook ab, body c, actor maya and hook a"
        in why
    )
    assert "name: {ratios} is not a field of names" in refused(
        tmp_path, BASE + "name: '{campaign}_{ratios}'\n"
    )


H1 = '  - {id: h1, text: "Okay, real talk."}'
B1 = '  - {id: b1, text: "This serum changed my mornings."}'


@pytest.mark.parametrize(
    ("old", "new", "reason"),
    [
        (H1, "  - {id: h_1, text: hi}", "matrix.yaml: hooks[0].id: String should match pattern"),
        (H1, "  - {id: h1}", "matrix.yaml: hooks[0].text: Field required"),
        ("", "captions: [bold, neon]", "matrix.yaml: captions: 'neon' is not a caption style"),
        ("", "formats: [tiktok|vertical]", "matrix.yaml: formats: 'vertical' is not an export profile"),
        ("", "ratio: 9:16", "matrix.yaml: ratio: not a matrix field (campaign, name, hooks"),
        ("actors: [maya, leo]", "actors: [maya, bob]", "matrix.yaml: actors[1]: unknown actor 'bob'"),
        (B1, B1 + "\n  - {id: B1, text: b}", "matrix.yaml: bodies[1].id: 'B1' is given twice"),
        ("", "exclude: [{voice: maya}]", "matrix.yaml: exclude[0].voice: not an axis"),
        ("", "include: [{hook: h9}]", "matrix.yaml: include[0].hook: 'h9' is not one of the matrix's hooks"),
        ("", "zip: [[hooks, bodies]]",
         "matrix.yaml: zip[0]: axes side by side need as many values each (hooks 3, bodies 2)"),
        ("", "combine: zip", "matrix.yaml: combine: zip needs as many values on every axis"),
        ("", "exclude: [{actor: [maya, leo]}]", "matrix.yaml: include/exclude leave no row"),
        ("", "limit: 0", "matrix.yaml: limit: Input should be greater than or equal to 1"),
        ("actors: [maya, leo]", "actors: [maya", "matrix.yaml: not valid YAML at line"),
        ("campaign: spring", "name: '{campaign'", "matrix.yaml: name: '{campaign' is not a naming template"),
    ],
)  # fmt: skip
def test_bad_matrix_files_name_the_file_the_field_and_the_reason(
    tmp_path: Path, old: str, new: str, reason: str
) -> None:
    text = BASE.replace(old, new) if old else BASE + new + "\n"
    assert text != BASE
    assert reason in refused(tmp_path, text)


def test_a_matrix_needs_something_to_say(tmp_path: Path) -> None:
    assert "matrix.yaml: hooks: give hooks, bodies or both" in refused(tmp_path, "actors: [maya]\n")
    assert "matrix.yaml: expected a mapping of axes" in refused(tmp_path, "- maya\n")


def test_a_sheet_reads_a_matrix_and_names_the_variant_of_a_bad_row(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data")
    path = write(tmp_path, BASE + "captions: bold\nformats: tiktok|square\n")
    s = read_sheet(path, settings=settings, actors=ACTORS)
    assert s.errors == []
    assert len(s.rows) == 24
    assert s.default_name == "spring"
    req = s.rows[0].request
    assert (req.captions, req.formats, req.script) == (
        "bold",
        ("tiktok", "square"),
        "Okay, real talk. This serum changed my mornings.",
    )
    assert s.rows[0].extra["name"] == "spring_h1_b1_maya_kitchen"
    long_hook = BASE.replace('"My secret."', '"' + "la " * 700 + '"')
    s = read_sheet(
        write(tmp_path, long_hook),
        settings=settings,
        actors={
            "maya": ActorInfo("maya", "fal-ai/elevenlabs/tts/multilingual-v2", "fal"),
            "leo": ACTORS["leo"],
        },
    )
    bad = [str(p) for p in s.errors]
    assert bad
    assert all("column script" in p and "(variant spring_h3_" in p for p in bad)
    assert len(s.rows) == 24 - 4  # h3 with maya (2 bodies x 2 scenes) is too long for its voice


def test_a_sheets_name_column_is_a_file_name_unique_in_any_letter_case(tmp_path: Path) -> None:
    path = tmp_path / "sheet.csv"
    path.write_text(
        "row_id,name,actor,script\na,Ad-One,maya,Hi.\nb,ad-one,maya,Hello.\nc,no good,maya,Hey.\n"
    )
    s = read_sheet(path, settings=Settings(data_dir=tmp_path / "data"), actors=ACTORS)
    assert [str(p) for p in s.errors] == [
        "row 3, column name: 'ad-one' is the name of row 2 too (letter case aside)",
        "row 4, column name: 'no good' is not a file name (letters, digits, '.', '_', '-'; at most 120)",
    ]


@pytest.mark.flow
def test_a_matrix_runs_with_its_names_and_expands_to_the_sheet_that_runs_the_same(
    rt: Runtime, tmp_path: Path, prefect_server: None
) -> None:
    ensure_sample_actors(rt)
    small = """
    campaign: duo
    hooks: [{id: h1, text: "Okay."}, {id: h2, text: "Look."}]
    bodies: [{id: b1, text: "Fresh coffee every morning."}]
    actors: [maya]
    scenes: [{id: kitchen, prompt: a sunny kitchen}]
    captions: clean
    """
    path = write(tmp_path, small)
    runner = CliRunner()
    dry = runner.invoke(app, ["campaign", "run", str(path), "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert "matrix.yaml: expands to 2 row(s)" in dry.output
    done = runner.invoke(app, ["campaign", "run", str(path)])
    assert done.exit_code == 0, done.output
    assert "duo: 2 succeeded" in done.output  # the matrix's campaign name
    with rt.session() as s:
        keys = sorted(
            v.video_key or "" for v in s.scalars(sa.select(Video).where(Video.campaign_id.is_not(None)))
        )
        speeches = s.scalar(sa.select(sa.func.count()).where(StageRun.stage == "speech"))
    assert keys == ["campaigns/duo/duo_h1_b1_maya_kitchen.mp4", "campaigns/duo/duo_h2_b1_maya_kitchen.mp4"]
    assert all(rt.storage.exists(k) for k in keys)
    from castflow import reports

    built = reports.build(rt, "duo", tmp_path / "report", thumbnails=False)
    assert built.tables["by_axis"].rows() == [
        ("hook", "h1", 1, 1, 0, 0, 0.0), ("hook", "h2", 1, 1, 0, 0, 0.0), ("body", "b1", 2, 2, 0, 0, 0.0),
        ("actor", "maya", 2, 2, 0, 0, 0.0), ("scene", "kitchen", 2, 2, 0, 0, 0.0),
    ]  # fmt: skip
    page = (tmp_path / "report" / "report.html").read_text()
    assert "<h3>hook h1 · 1 video(s)</h3>" in page
    assert "<h3>hook h2 · 1 video(s)</h3>" in page
    assert page.count("<video") == 2
    by_body = reports.build(rt, "duo", tmp_path / "report", thumbnails=False, group_by="body")
    assert by_body.group_by == "body"
    assert "<h3>body b1 · 2 video(s)</h3>" in (tmp_path / "report" / "report.html").read_text()
    with pytest.raises(
        reports.ReportError, match="cannot group by 'ratio': the campaign's axes are hook, body"
    ):
        reports.build(rt, "duo", tmp_path / "report", thumbnails=False, group_by="ratio")
    out = tmp_path / "sheets" / "duo.csv"
    expanded = runner.invoke(app, ["campaign", "expand", str(path), "-o", str(out)])
    assert expanded.exit_code == 0, expanded.output
    table = list(csv.DictReader(io.StringIO(out.read_text())))
    assert [r["name"] for r in table] == ["duo_h1_b1_maya_kitchen", "duo_h2_b1_maya_kitchen"]
    again = runner.invoke(app, ["campaign", "run", str(out), "--name", "duo"])
    assert again.exit_code == 0, again.output
    with rt.session() as s:  # the sheet is a new campaign of the same videos: nothing made again
        assert s.scalar(sa.select(sa.func.count()).where(StageRun.stage == "speech")) == speeches
        assert s.scalar(sa.select(sa.func.count()).where(StageRun.stage == "lipsync")) == 2


@pytest.fixture
def fal_rt(data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Runtime:
    """fal speech (ElevenLabs, with timestamps) and WaveSpeed lip-sync, on the in-process fakes."""
    from castflow.actors import ActorSpec, import_actors
    from castflow.models import Voice
    from castflow.runtime import get_runtime
    from castflow.settings import reset_settings

    monkeypatch.setenv("CASTFLOW_PROVIDERS__FAKES", "true")
    monkeypatch.setenv("CASTFLOW_PROVIDERS__LIPSYNC", "wavespeed")
    reset_settings()
    rt = get_runtime()
    ensure_sample_actors(rt)
    voice = Voice(provider="fal", model="fal-ai/elevenlabs/tts/multilingual-v2", voice_id="Aria")
    import_actors(
        rt, [ActorSpec(key="nia", name="Nia", portrait="drawn:ava", voice=voice)], base_dir=Path.cwd()
    )
    return rt


PARTS = """
campaign: parts
hooks: [{id: h1, text: "Okay, real talk."}, {id: h2, text: "Stop scrolling."}, {id: h3, text: "Listen."}]
bodies: [{id: b1, text: "Fresh coffee every morning."}, {id: b2, text: "Two drops and I glow."}]
actors: [nia]
captions: karaoke
speech: parts
"""


@pytest.mark.flow
def test_speech_in_parts_pays_each_hook_and_body_once_per_voice(
    fal_rt: Runtime, tmp_path: Path, prefect_server: None
) -> None:
    from castflow import media
    from castflow.fakes import running_fakes

    fal = running_fakes()["fal"]
    path = write(tmp_path, PARTS)
    runner = CliRunner()
    dry = runner.invoke(app, ["campaign", "run", str(path), "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert "matrix.yaml: expands to 6 row(s)" in dry.output
    lines = [line for line in dry.output.splitlines() if line.startswith("speech: ")]
    assert lines[0].startswith("speech: whole 6 speech job(s), $")  # 3 hooks x 2 bodies
    assert lines[1].startswith("speech: parts 5 speech job(s), $")  # 3 hooks + 2 bodies
    assert lines[1].endswith("(this matrix)")
    whole_usd, parts_usd = (float(line.split("$")[1].split()[0].rstrip(",")) for line in lines)
    assert parts_usd < whole_usd  # priced by the character: each part said once
    before = fal.calls["submit"]
    done = runner.invoke(app, ["campaign", "run", str(path)])
    assert done.exit_code == 0, done.output
    assert "parts: 6 succeeded" in done.output
    assert fal.calls["submit"] - before == 5  # the provider's own count of speech jobs
    with fal_rt.session() as s:
        stages = dict(s.execute(sa.select(StageRun.stage, sa.func.count()).group_by(StageRun.stage)).all())
        video = s.scalars(sa.select(Video).where(Video.row_id.is_not(None)).order_by(Video.row_id)).first()
    assert (stages["speech"], stages["speech_join"], stages["lipsync"]) == (5, 6, 6)
    assert video is not None
    assert video.video_key is not None
    words = fal_rt.storage.local_path(video.video_key.removesuffix(".mp4") + ".words.json").read_text()
    body = json.loads(words)
    assert body["source"] == "speech"  # the parts' own timestamps, the second moved past the first
    starts = [w["start"] for w in body["words"]]
    assert starts == sorted(starts)
    said = [w["word"] for w in body["words"]]
    assert said == re.findall(r"[\w']+", video.script or "")  # every word of both parts, in order
    first_part = next(
        line.text for line in matrix.read_matrix(path).hooks if (video.script or "").startswith(line.text)
    )
    last_of_hook = len(re.findall(r"[\w']+", first_part)) - 1
    gap = body["words"][last_of_hook + 1]["start"] - body["words"][last_of_hook]["end"]
    assert gap >= 0.25  # the pause between the parts, at least
    heard = media.decode_audio(fal_rt.storage.local_path(video.video_key)).seconds
    assert body["audio_seconds"] == pytest.approx(heard, abs=0.1)
    assert body["words"][-1]["end"] <= body["audio_seconds"] + 0.01


def test_a_part_with_a_bar_is_refused_when_parts_are_said_alone(tmp_path: Path) -> None:
    text = PARTS.replace('"Listen."', '"Listen | now."').replace("[nia]", "[maya]")
    assert "matrix.yaml: hooks[2].text: '|' cannot be in a part said on its own (speech: parts)" in refused(
        tmp_path, text
    )
    whole = expand(tmp_path, text.replace("speech: parts", "speech: whole"))
    assert "speech_parts" not in whole.columns
    parts = rows(expand(tmp_path, PARTS.replace("[nia]", "[maya]")))
    assert parts[0]["speech_parts"] == "Okay, real talk.|Fresh coffee every morning."
    assert parts[0]["script"] == "Okay, real talk. Fresh coffee every morning."


def test_a_sheets_speech_parts_must_be_its_script(tmp_path: Path) -> None:
    path = tmp_path / "sheet.csv"
    path.write_text(
        "row_id,actor,script,speech_parts\n"
        "a,maya,,Hi there.|Buy now.\n"
        "b,maya,Hi there. Buy later.,Hi there.|Buy now.\n"
        "c,maya,,One|two|three\n"
    )
    s = read_sheet(path, settings=Settings(data_dir=tmp_path / "data"), actors=ACTORS)
    assert [r.request.script for r in s.rows] == ["Hi there. Buy now."]
    assert [str(p) for p in s.errors] == [
        "row 3, column speech_parts: the parts, one after the other, must be the script",
        "row 4, column speech_parts: give two parts, a hook and a body, joined by |",
    ]
