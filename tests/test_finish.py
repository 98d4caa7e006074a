"""Export profiles (issue 15, item 4): each platform's output rendered, checked against its spec with
FFmpeg's own reading of the file, filled without cropping the face, and carried into the manifest."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa

from castflow import captions, finish, media
from castflow.actors import ensure_sample_actors
from castflow.db.tables import StageRun, Video
from castflow.providers import local
from castflow.runtime import Runtime

SCRIPT = "Honestly, this cream changed my mornings. Try it today!"


@pytest.fixture(scope="module")
def render(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, list[dict[str, object]]]:
    """A 480x854, 25 fps render of eSpeak speech: a dark wall with a bright 'face' near the top."""
    folder = tmp_path_factory.mktemp("render")
    engine = local._espeak()
    pcm, events = engine.speak_words(SCRIPT, "en-us+f3", 165)
    words = local.word_timings(SCRIPT, events, pcm, engine.rate)
    wav = folder / "speech.wav"
    media.write_wav(wav, pcm, engine.rate)
    sound = media.decode_audio(wav)

    def frames():  # type: ignore[no-untyped-def]
        for n in range(media.frame_count(sound.seconds, 25)):
            frame = np.full((854, 480, 3), (40, 30, 90 + n % 50), dtype=np.uint8)
            frame[150:350, 140:340] = (235, 200, 170)
            yield frame

    video = folder / "render.mp4"
    media.encode_video(video, frames(), size=(480, 854), fps=25, audio=sound)
    return video, wav, words


@pytest.mark.parametrize("name", ["tiktok", "feed-4x5", "landscape"])
def test_each_profile_meets_its_own_spec(
    name: str, render: tuple[Path, Path, list[dict[str, object]]], tmp_path: Path
) -> None:
    video, wav, words = render
    profile = finish.PROFILES[name]
    out = finish.render(video, wav, finish.Finish(profile, SCRIPT, "bold", words), tmp_path / f"{name}.mp4")
    seconds = media.decode_audio(wav).seconds
    assert finish.check(out, profile, audio_seconds=seconds) == []
    streams = finish.read_streams(out)  # what FFmpeg reads back, not what we asked for
    assert (streams.width, streams.height) == profile.size
    assert streams.fps == 30
    assert (streams.video_codec, streams.video_profile) == ("h264", "High")
    assert (streams.audio_codec, streams.audio_rate, streams.audio_channels) == ("aac", 48_000, 2)
    assert streams.audio_bitrate is not None
    assert streams.audio_bitrate >= 128_000
    assert streams.video_bitrate is not None
    assert streams.video_bitrate >= profile.min_video_bitrate  # constant bitrate: even a plain wall


THIRTY_WORDS = (
    "Okay so I was honestly skeptical, but after two weeks of this tiny bottle every single "
    "morning my skin looks brighter, my makeup sits better, and people ask what changed."
)


def test_thirty_words_in_bold_at_tiktok_stay_inside_the_safe_band(tmp_path: Path) -> None:
    """The finished file, not the layout: frames with and without the captions differ only inside the
    safe band (the render is a plain wall, so the difference is the captions' ink)."""
    assert len(THIRTY_WORDS.split()) == 30
    engine = local._espeak()
    pcm, events = engine.speak_words(THIRTY_WORDS, "en-us+m3", 175)
    words = local.word_timings(THIRTY_WORDS, events, pcm, engine.rate)
    wav = tmp_path / "speech.wav"
    media.write_wav(wav, pcm, engine.rate)
    sound = media.decode_audio(wav)
    wall = np.full((854, 480, 3), (90, 110, 140), dtype=np.uint8)
    video = tmp_path / "wall.mp4"
    media.encode_video(
        video, iter([wall] * media.frame_count(sound.seconds, 25)), size=(480, 854), fps=25, audio=sound
    )
    profile = finish.PROFILES["tiktok"]
    plain = finish.render(video, wav, finish.Finish(profile), tmp_path / "plain.mp4")
    bold = finish.render(
        video, wav, finish.Finish(profile, THIRTY_WORDS, "bold", words), tmp_path / "bold.mp4"
    )
    band = captions.safe_band(*profile.size)
    inside = np.zeros((1920, 1080), dtype=bool)
    inside[band.top : band.bottom, band.left : band.right] = True
    shown = 0
    for a, b in zip(media.decode_video_frames(plain), media.decode_video_frames(bold), strict=True):
        ink = np.abs(a.astype(int) - b.astype(int)).max(axis=2) > 48
        assert not (ink & ~inside).any(), np.argwhere(ink & ~inside)[:5]
        shown += int(ink.any())
    assert shown > 0.8 * media.frame_count(sound.seconds, 30)  # captions on (nearly) every frame


def test_the_check_names_every_way_a_file_breaks_a_profile(
    render: tuple[Path, Path, list[dict[str, object]]],
) -> None:
    video, wav, _words = render
    problems = finish.check(video, finish.PROFILES["tiktok"], audio_seconds=media.decode_audio(wav).seconds)
    text = "; ".join(problems)
    assert "frame size 480x854, tiktok needs 1080x1920" in text
    assert "frame rate 25.0, tiktok needs 30" in text
    assert "tiktok needs 48000 Hz stereo" in text
    short = finish.profile("reels", {"reels": (30.0, 90.0)})
    assert any("reels takes 30 to 90 s" in p for p in finish.check(video, short, audio_seconds=0))


def test_another_shape_is_filled_without_cropping_unless_asked(
    render: tuple[Path, Path, list[dict[str, object]]],
) -> None:
    video, _wav, _words = render
    frame = next(media.decode_video_frames(video))
    from PIL import Image

    source = Image.fromarray(frame)
    blurred = np.asarray(finish.fill_frame(source, (1080, 1080), "blur")).astype(int)
    # The whole render is there, scaled to the full height (1080/854) and centred: its 'face' and its
    # top and bottom rows; the sides are a darker, blurred copy.
    scale = 1080 / 854
    width = round(480 * scale)
    left = (1080 - width) // 2
    face = blurred[round(250 * scale), left + round(240 * scale)]
    assert abs(face - np.array([235, 200, 170])).max() < 20
    assert abs(blurred[2, 540] - frame[1, 240].astype(int)).max() < 20  # its top row: not cut
    assert blurred[540, 20].sum() < frame[400, 20].astype(int).sum()  # the sides: darkened
    cropped = np.asarray(finish.fill_frame(source, (1080, 1080), "crop")).astype(int)
    assert abs(cropped[540, 20] - frame[427, 5].astype(int)).max() < 20  # no band: the picture itself
    assert finish.fill_frame(source, (1080, 1920)).size == (1080, 1920)  # the same shape: scaled only


def test_formats_cells_are_read_with_clear_errors(tmp_path: Path, rt: Runtime) -> None:
    from castflow.campaigns import load_sheet

    ensure_sample_actors(rt)
    path = tmp_path / "sheet.csv"
    path.write_text(
        "row_id,actor,script,formats\n"
        "a,maya,Hi.,TikTok | square\n"
        "b,maya,Hi.,source\n"
        "c,maya,Hi.,tiktok|vertical\n",
        encoding="utf-8",
    )
    sheet = load_sheet(rt, path)
    assert [str(p) for p in sheet.errors] == [
        "row 4, column formats: 'vertical' is not an export profile "
        "(tiktok, reels, feed-4x5, square, landscape, source; join several with |)"
    ]
    assert [r.request.formats for r in sheet.rows] == [("tiktok", "square"), ()]


@pytest.mark.timeout(600)
def test_a_campaign_row_gets_one_output_per_profile_and_a_failing_one_stands_alone(
    data_dir: Path, tmp_path: Path, prefect_server: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """tiktok and square for one row: two more files, each checked; a profile whose limits the file
    breaks (square set to 30-60 s here) fails alone, with its reason; the row and its paid stages
    stand. The manifest has a record per output."""
    from castflow.runtime import get_runtime, reset_runtime
    from castflow.settings import reset_settings
    from flows.run_campaign import run_campaign

    monkeypatch.setenv("CASTFLOW_PIPELINE__FORMAT_SECONDS", json.dumps({"square": [30, 60]}))
    reset_settings()
    reset_runtime()
    rt = get_runtime()
    ensure_sample_actors(rt)
    sheet = tmp_path / "sheet.csv"
    sheet.write_text(
        f"row_id,actor,script,captions,formats\na,maya,{SCRIPT.replace(',', '')},karaoke,tiktok|square\n",
        encoding="utf-8",
    )
    result = run_campaign(sheet=str(sheet), name="Formats")
    assert (result.succeeded, result.failed) == (1, 0), result.results
    with rt.session() as s:
        video = s.scalars(sa.select(Video).where(Video.row_id == "a")).one()
        finishes = s.scalars(sa.select(StageRun).where(StageRun.stage == "finish")).all()
    assert video.outputs is not None
    outputs = {o["format"]: o for o in video.outputs}
    assert outputs["tiktok"]["status"] == "succeeded"
    assert outputs["tiktok"]["key"] == "campaigns/formats/a_maya_portrait_480p_tiktok.mp4"
    tiktok = rt.storage.local_path(outputs["tiktok"]["key"])
    seconds = video.audio_seconds or 0
    assert finish.check(tiktok, finish.PROFILES["tiktok"], audio_seconds=seconds) == []
    assert outputs["square"]["status"] == "failed"
    assert "square takes 30 to 60 s; this video would last" in outputs["square"]["error"]
    assert not rt.storage.exists("campaigns/formats/a_maya_portrait_480p_square.mp4")
    assert [r.status.value for r in finishes] == ["succeeded"]  # nothing encoded for square
    assert result.manifest_path is not None
    with open(result.manifest_path, encoding="utf-8", newline="") as fh:
        manifest = list(csv.DictReader(fh))
    assert [(m["row_id"], m["format"], m["status"]) for m in manifest] == [
        ("a", "source", "succeeded"),
        ("a", "tiktok", "succeeded"),
        ("a", "square", "failed"),
    ]
    assert manifest[0]["formats"] == "tiktok|square"
    assert "square takes 30 to 60 s" in manifest[2]["error"]

    from castflow import reports

    built = reports.build(rt, "Formats", tmp_path / "report", thumbnails=False)
    made = reports.outputs_of(built.tables["videos"].row(0, named=True))
    assert [(o["format"], o["status"]) for o in made] == [("tiktok", "succeeded"), ("square", "failed")]
    page = (tmp_path / "report" / "report.html").read_text(encoding="utf-8")
    assert "formats: <a href=" in page
    assert "a_maya_portrait_480p_tiktok.mp4" in page
    assert "square (failed)" in page

    # A rerun re-encodes nothing: every stage is reused and the published files stay as they are.
    published = rt.storage.local_path(outputs["tiktok"]["key"])
    stamp = published.stat().st_mtime_ns
    with rt.session() as s:
        stages_before = s.scalar(sa.select(sa.func.count()).select_from(StageRun))
    again = run_campaign(sheet=str(sheet), name="Formats")
    assert again.resumed
    assert (again.succeeded, again.cost_usd) == (1, 0)
    with rt.session() as s:
        assert s.scalar(sa.select(sa.func.count()).select_from(StageRun)) == stages_before
        redone = s.scalars(sa.select(StageRun).where(StageRun.stage == "finish")).all()
    assert [r.status.value for r in redone] == ["succeeded"]
    assert published.stat().st_mtime_ns == stamp
