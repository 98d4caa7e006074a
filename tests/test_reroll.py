"""Re-roll with a reason: a new take of one stage of a row (a new stage key through its seed), the old take
kept, the reason and the extra spend recorded, and only what depends on the stage made again; counted by
the provider fakes' own call logs."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from castflow.cli import app
from castflow.db.tables import Take, Video
from castflow.fakes import running_fakes
from castflow.runtime import Runtime

pytestmark = pytest.mark.flow


@pytest.fixture
def paid_rt(fakes_rt: Runtime) -> Runtime:
    return fakes_rt


def jobs() -> dict[str, int]:
    fal = running_fakes()["fal"]
    return {
        "edit": sum("edit" in j.model for j in fal.jobs.values()),
        "speech": sum("elevenlabs" in j.model for j in fal.jobs.values()),
        "lipsync": running_fakes()["wavespeed"].calls["submit"],
    }


def since(before: dict[str, int]) -> dict[str, int]:
    now = jobs()
    return {k: now[k] - before[k] for k in now}


def test_each_stage_rerolled_pays_for_itself_and_what_depends_on_it(
    paid_rt: Runtime, tmp_path: Path, prefect_server: None
) -> None:
    sheet = tmp_path / "takes.csv"
    sheet.write_text(
        "row_id,actor,script,scene\n"
        "a,nia,Fresh coffee every morning.,a sunny kitchen\n"
        "b,nia,Fresh coffee every morning.,a sunny kitchen\n"  # shares a's scene and voice
    )
    runner = CliRunner()
    start = jobs()
    assert runner.invoke(app, ["campaign", "run", str(sheet)]).exit_code == 0
    assert since(start) == {"edit": 1, "speech": 1, "lipsync": 1}  # a and b share every stage

    for stage, made in (
        ("scene", {"edit": 1, "speech": 0, "lipsync": 1}),  # a new picture, so a new lip-sync
        ("speech", {"edit": 0, "speech": 1, "lipsync": 1}),
        ("lipsync", {"edit": 0, "speech": 0, "lipsync": 1}),
    ):
        said = runner.invoke(
            app, ["campaign", "reroll", "takes", "a", "--stage", stage, "--reason", f"{stage} off"]
        )
        assert said.exit_code == 0, said.output
        assert f"takes: row a: a new {stage} take" in said.output
        before = jobs()
        again = runner.invoke(app, ["campaign", "run", str(sheet)])
        assert again.exit_code == 0, again.output
        assert since(before) == made, stage
        assert "takes: 2 succeeded" in again.output  # b untouched, a made again

    with paid_rt.session() as s:
        takes = s.scalars(sa.select(Take).order_by(Take.created_at)).all()
        video = s.scalars(sa.select(Video).where(Video.row_id == "a")).one()
    assert [(t.stage, t.reason) for t in takes] == [("scene", "scene off"), ("speech", "speech off"),
                                                    ("lipsync", "lipsync off")]  # fmt: skip
    assert all(t.stage_key for t in takes)
    costs = {t.stage: t.cost_usd for t in takes}
    assert costs["scene"] == pytest.approx(0.039)  # nano banana's price of an edit: the take's extra spend
    assert costs["lipsync"] == pytest.approx(0.15)  # WaveSpeed's 5 s minimum at 480p
    assert costs["speech"] is not None
    assert costs["speech"] > 0
    kept = [t.kept_key for t in takes]
    assert kept == [
        f"campaigns/takes/a_nia_a-sunny-kitchen_480p.take{n}.mp4" for n in (1, 2, 3)
    ]  # each earlier video
    from castflow.stages import sha256_file

    first, after_scene = (sha256_file(paid_rt.storage.local_path(k or "")) for k in kept[:2])
    assert first != after_scene  # the first video and the one with the new picture, both kept
    # (A fake's voice and lip-sync give the same bytes for the same inputs: those takes may match.)
    assert all(paid_rt.storage.exists(k or "") for k in kept)
    assert video.status.value == "succeeded"
    refused = runner.invoke(app, ["campaign", "reroll", "takes", "zz", "--stage", "scene", "--reason", "x"])
    assert refused.exit_code != 0
    assert "campaign takes has no row 'zz'" in refused.output
    wrong = runner.invoke(app, ["campaign", "reroll", "takes", "a", "--stage", "music", "--reason", "x"])
    assert "stage 'music': give scene, speech or lipsync" in wrong.output
