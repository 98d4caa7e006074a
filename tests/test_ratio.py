"""A scene at the target ratio: the image edit renders it so (nano banana's aspect_ratio; the embedded
editor likewise), the lip-sync follows the image, QC checks the output's ratio, and the finishing
profiles start from it instead of filling. End to end on the fakes, and each part on its own."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa
from PIL import Image
from typer.testing import CliRunner

from castflow import finish, media
from castflow.cli import app
from castflow.db.tables import Video
from castflow.fakes import running_fakes
from castflow.models import Mouth
from castflow.portraits import RATIOS, compose_scene, reframe, reframe_mouth
from castflow.runtime import Runtime
from castflow.settings import Settings
from castflow.sheets import ActorInfo, read_sheet


@pytest.mark.parametrize("ratio", list(RATIOS))
def test_the_embedded_editor_paints_the_scene_at_the_ratio_around_the_whole_actor(ratio: str) -> None:
    portrait = Image.new("RGB", (432, 768), (240, 240, 240))  # 9:16, a flat backdrop
    portrait.paste((30, 60, 200), (166, 200, 266, 768))  # the "actor": a blue figure
    scene = compose_scene(portrait, "a beach at noon", 3, ratio)
    rw, rh = RATIOS[ratio]
    assert abs(scene.width / scene.height - rw / rh) < 0.01
    assert scene.width % 2 == 0
    assert scene.height % 2 == 0
    (_, _), (left, top) = reframe(portrait.size, ratio)
    # the actor is whole, where reframe put it
    assert scene.getpixel((left + 216, top + 500)) == (30, 60, 200)
    mouth = reframe_mouth(Mouth(x=0.5, y=0.4, width=0.1), portrait.size, ratio)
    assert mouth.x * scene.width == pytest.approx(left + 216, abs=1)
    assert mouth.y * scene.height == pytest.approx(top + 0.4 * 768, abs=1)


def test_a_frame_near_the_profiles_ratio_is_cut_not_filled() -> None:
    red = Image.new("RGB", (896, 448), (220, 30, 30))  # InfiniteTalk's 16:9 bucket is 2:1
    out = np.asarray(finish.fill_frame(red, (1920, 1080)))
    assert out.shape == (1080, 1920, 3)
    assert (out[..., 0] > 200).all()  # no blurred, darkened band anywhere
    tall = np.asarray(finish.fill_frame(Image.new("RGB", (448, 832), (220, 30, 30)), (1920, 1080)))
    assert (tall[:, :100, 0] < 150).all()  # 9:16 into 16:9 is still filled: the sides are the dark blur


def test_qc_checks_the_ratio(tmp_path: Path) -> None:
    sound = media.Audio(np.zeros(16_000, dtype=np.float32), 16_000)
    path = tmp_path / "v.mp4"
    frame = np.zeros((480, 854, 3), dtype=np.uint8)
    media.encode_video(path, (frame for _ in range(25)), size=(854, 480), fps=25, audio=sound)
    common = {"audio_seconds": 1.0, "fps": 25, "size": lambda w, h: None, "tolerance": 0.1}
    assert media.check_video(path, ratio=((16, 9), 0.15), **common) == []  # type: ignore[arg-type]
    assert media.check_video(path, ratio=((9, 16), 0.15), **common) == [  # type: ignore[arg-type]
        "frame 854x480 is not 9:16 (+216%)"
    ]


def test_a_ratio_needs_a_scene(tmp_path: Path) -> None:
    path = tmp_path / "sheet.csv"
    path.write_text(
        "actor,script,scene,ratio\nmaya,Hi.,,16:9\nmaya,Hi.,a beach,16:10\nmaya,Hi.,a beach,1:1\n"
    )
    s = read_sheet(
        path,
        settings=Settings(data_dir=tmp_path / "d"),
        actors={"maya": ActorInfo("maya", "espeak-ng", "local")},
    )
    assert [str(p) for p in s.errors] == [
        "row 2, column ratio: 16:9 needs a scene (the image edit renders the scene at that ratio)",
        "row 3, column ratio: Input should be '9:16', '4:5', '1:1' or '16:9'",
    ]
    assert [r.request.ratio for r in s.rows] == ["1:1"]


@pytest.fixture
def paid_rt(fakes_rt: Runtime) -> Runtime:
    return fakes_rt


@pytest.mark.flow
def test_every_ratio_end_to_end_on_the_fakes(paid_rt: Runtime, tmp_path: Path, prefect_server: None) -> None:
    path = tmp_path / "matrix.yaml"
    path.write_text(
        textwrap.dedent(
            """
            campaign: shapes
            bodies: [{id: b1, text: "Fresh coffee every morning, ready in a minute."}]
            actors: [nia]
            scenes: [{id: beach, prompt: a beach at noon}]
            ratios: ["9:16", "4:5", "1:1", "16:9"]
            formats: landscape
            """
        ),
        encoding="utf-8",
    )
    fal = running_fakes()["fal"]
    before = set(fal.jobs)  # the fakes serve the whole test session
    done = CliRunner().invoke(app, ["campaign", "run", str(path)])
    assert done.exit_code == 0, done.output
    asked = sorted(
        j.payload.get("aspect_ratio") for k, j in fal.jobs.items() if "edit" in j.model and k not in before
    )
    assert asked == ["16:9", "1:1", "4:5", "9:16"]  # nano banana is asked for each row's ratio
    with paid_rt.session() as s:
        videos = {v.row_id: v for v in s.scalars(sa.select(Video).where(Video.campaign_id.is_not(None)))}
    by_name = {str((v.extra or {}).get("name")): v for v in videos.values()}
    assert sorted(by_name) == ["shapes_b1_nia_beach_16x9", "shapes_b1_nia_beach_1x1", "shapes_b1_nia_beach_4x5",
                               "shapes_b1_nia_beach_9x16"]  # fmt: skip
    for name, video in by_name.items():
        rw, rh = (int(p) for p in name.rsplit("_", 1)[1].split("x"))
        assert video.video_key is not None
        info = media.probe(paid_rt.storage.local_path(video.video_key))
        assert info.width is not None
        assert info.height is not None
        assert abs((info.width / info.height) / (rw / rh) - 1) <= 0.15, (name, info.width, info.height)
        (landscape,) = video.outputs or []
        assert landscape["status"] == "succeeded", landscape
    wide = by_name["shapes_b1_nia_beach_16x9"].outputs or []
    frames = media.decode_video_frames(paid_rt.storage.local_path(wide[0]["key"]))
    first = next(frames)
    assert first.shape[:2] == (1080, 1920)
    edge = first[:, :40].astype(int)  # the 16:9 scene fills the frame: no blurred, darkened side band
    middle = first[:, 900:1020].astype(int)
    assert abs(edge.mean() - middle.mean()) < 60
