"""The castflow command: one-line errors for bad input, nothing written, no tracebacks."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from castflow.actors import ensure_sample_actors
from castflow.cli import app
from castflow.db.tables import Actor, StageRun, Video
from castflow.runtime import Runtime

runner = CliRunner()


def _invoke(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def _written(rt: Runtime) -> tuple[int, int]:
    with rt.session() as s:
        videos = s.scalar(sa.select(sa.func.count()).select_from(Video)) or 0
        stages = s.scalar(sa.select(sa.func.count()).select_from(StageRun)) or 0
    return videos, stages


@pytest.fixture
def actors(rt: Runtime) -> Runtime:
    ensure_sample_actors(rt)
    return rt


@pytest.fixture
def garbage_audio(tmp_path: Path) -> Path:
    path = tmp_path / "broken.mp3"
    path.write_bytes(b"ID3" + b"\x00\xff" * 500)
    return path


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["video", "nobody", "--script", "hi"], "unknown actor 'nobody' (known: ava, leo, maya)"),
        (["video", "maya", "--script", "   "], "give a script, or an audio file"),
        (["video", "maya"], "give a script, or an audio file"),
        (["video", "maya", "--script", "hi", "--audio", "x.wav"], "audio file x.wav does not exist"),
        (["video", "maya", "--script", "hi", "--caption-style", "wavy"], "captions"),
        (["video", "maya", "--script", "ok ᚠ", "--captions"], "no caption font draws 'ᚠ' (U+16A0 RUNIC"),
        (
            ["video", "maya", "--script", "word " * 600],
            "script is 2999 characters long; espeak-ng takes at most 2000",
        ),
        (["video", "maya", "--audio", "missing.wav"], "audio file missing.wav does not exist"),
        (["video", "maya", "--script", "hi", "--resolution", "4k"], "resolution"),
        (["video", "maya", "--script", "hi", "--variant", "not-a-variant"], "unknown image variant"),
        (["video", "maya", "--script", "\u200b\u200b"], "script has nothing to say"),
        (["video", "maya", "--script", "Hi\x00there"], "script contains control characters (U+0000)"),
    ],
)
def test_bad_video_input_is_one_line_and_writes_nothing(
    actors: Runtime, args: list[str], message: str
) -> None:
    code, out, err = _invoke(*args)
    assert code == 2
    assert message in err
    assert err.startswith("error: ")
    assert len(err.strip().splitlines()) == 1
    assert "Traceback" not in out + err
    assert _written(actors) == (0, 0)


def test_unreadable_audio_is_refused(actors: Runtime, garbage_audio: Path) -> None:
    code, _, err = _invoke("video", "maya", "--audio", str(garbage_audio))
    assert code == 2
    assert "broken.mp3" in err
    assert "Traceback" not in err
    assert _written(actors) == (0, 0)


def test_actor_import_reports_every_problem_and_writes_nothing(rt: Runtime, tmp_path: Path) -> None:
    (tmp_path / "bad.png").write_bytes(b"not a png")
    actors_file = tmp_path / "actors.yaml"
    actors_file.write_text(
        """
actors:
  - key: nora
    name: Nora
    portrait: bad.png
    voice: {provider: local, model: espeak-ng, voice_id: en-us}
  - key: omar
    name: Omar
    portrait: missing.jpg
    voice: {provider: local, model: espeak-ng, voice_id: en-us}
  - key: ok
    name: Fine
    portrait: drawn:maya
    voice: {provider: local, model: espeak-ng, voice_id: en-us}
"""
    )
    code, _, err = _invoke("actors", "import", str(actors_file))
    assert code == 2
    assert "actor 'nora', portrait: not a readable image" in err
    assert "actor 'omar', portrait: file" in err
    assert "does not exist" in err
    with rt.session() as s:
        assert s.scalar(sa.select(sa.func.count()).select_from(Actor)) == 0


def test_actor_file_validation_names_entry_and_field(rt: Runtime, tmp_path: Path) -> None:
    csv_file = tmp_path / "actors.csv"
    csv_file.write_text(
        "key,name,portrait,voice_provider,voice_model,voice_id\n"
        "Bad Key,Nora,drawn:maya,local,espeak-ng,en-us\n"
        "sam,Sam,drawn:leo,local,espeak-ng,\n"
        "sam,Sam2,drawn:leo,local,espeak-ng,en\n"
        "sam,Sam3,drawn:leo,local,espeak-ng,en\n"
    )
    code, _, err = _invoke("actors", "import", str(csv_file))
    assert code == 2
    lines = err.removeprefix("error: ").strip().splitlines()
    assert lines[0].startswith("actors.csv row 2, key: String should match pattern")
    assert lines[1].startswith("actors.csv row 3, voice.voice_id: String should have at least 1 character")
    # Row 4 is the first valid 'sam' (row 3 was invalid); row 5 repeats it.
    assert lines[2] == "actors.csv row 5, key: duplicate actor key 'sam' (first at row 4)"
    assert len(lines) == 3
    with rt.session() as s:
        assert s.scalar(sa.select(sa.func.count()).select_from(Actor)) == 0


def test_actor_import_and_list(rt: Runtime, tmp_path: Path) -> None:
    from PIL import Image

    Image.new("RGB", (300, 400), (200, 100, 50)).save(tmp_path / "nora.jpg")
    f = tmp_path / "actors.yaml"
    f.write_text(
        "- key: nora\n  name: Nora\n  portrait: nora.jpg\n"
        "  voice: {provider: local, model: espeak-ng, voice_id: en-us+f2}\n"
    )
    code, out, err = _invoke("actors", "import", str(f))
    assert (code, err) == (0, "")
    assert "imported 1 actor(s): nora" in out
    code, out, _ = _invoke("actors", "list")
    assert code == 0
    assert "nora" in out
    assert "local/espeak-ng:en-us+f2" in out
    with rt.session() as s:
        actor = s.scalars(sa.select(Actor)).one()
        assert rt.storage.exists(actor.image_key)
        assert actor.image_key.endswith(".jpg")


def test_variant_list_unknown_actor(actors: Runtime) -> None:
    code, _, err = _invoke("variant", "list", "--actor", "x' OR 1=1 --")
    assert code == 2
    assert "unknown actor" in err


def test_db_commands(data_dir: Path) -> None:
    code, out, _ = _invoke("db", "upgrade")
    assert code == 0
    assert "database at revision 0007" in out
    code, out, _ = _invoke("db", "current")
    assert out.strip() == "0007 (head: 0007)"
    code, out, _ = _invoke("db", "downgrade", "base")
    assert "database at revision base" in out


def test_an_unknown_actor_names_the_fix(rt: Runtime) -> None:
    """No actors yet: say how to get some. A wrong case or a typo: the key meant."""
    from castflow.hints import unknown_actor

    code, _, err = _invoke("video", "maya", "--script", "hi")
    assert code == 2
    assert "castflow actors samples" in err
    assert "castflow actors import" in err
    assert unknown_actor("Maya", ["ava", "leo", "maya"]).endswith("did you mean 'maya'?")
    assert unknown_actor("mayaa", ["ava", "leo", "maya"]).endswith("did you mean 'maya'?")
    assert "did you mean" not in unknown_actor("zed", ["ava", "leo", "maya"])


def test_help_shows_no_type_after_a_flag(data_dir: Path) -> None:
    from typer.testing import CliRunner

    from castflow.cli import app

    shown = CliRunner().invoke(app, ["campaign", "run", "--help"], env={"COLUMNS": "120"})
    assert shown.exit_code == 0
    assert "--dry-run" in shown.output
    assert "<bool>" not in shown.output
    assert "<float range>" in shown.output  # options that take a value keep their type
