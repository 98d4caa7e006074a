"""The embedded-default providers, checked on real media."""

from __future__ import annotations

import wave
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from castflow import media
from castflow.models import Voice
from castflow.portraits import SAMPLE_LOOKS, SAMPLE_MOUTH, draw_portrait
from castflow.providers.base import PermanentError
from castflow.providers.local import EspeakSpeech, LocalImageEditor, PreviewLipSync

VOICE = Voice(provider="local", model="espeak-ng", voice_id="en-us+f3")


@pytest.fixture(scope="module")
def portrait(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("p") / "maya.png"
    draw_portrait(SAMPLE_LOOKS["maya"]).save(path)
    return path


@pytest.fixture(scope="module")
def speech_wav(tmp_path_factory: pytest.TempPathFactory) -> Path:
    wd = tmp_path_factory.mktemp("s")
    return EspeakSpeech().synthesize("Hello, this is a test of the speech engine.", VOICE, workdir=wd).path


def _pixels(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"), dtype=np.int16)


def test_image_edit_is_deterministic_and_visible(portrait: Path, tmp_path: Path) -> None:
    editor = LocalImageEditor()
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "c").mkdir()
    first = editor.edit(portrait, "on a sunny beach", seed=1, workdir=tmp_path / "a")
    again = editor.edit(portrait, "on a sunny beach", seed=1, workdir=tmp_path / "b")
    other = editor.edit(portrait, "in a neon city at night", seed=1, workdir=tmp_path / "c")
    assert first.path.read_bytes() == again.path.read_bytes()
    src, out, alt = _pixels(portrait), _pixels(first.path), _pixels(other.path)
    assert out.shape == src.shape
    # The backdrop changed a lot; the face (centre of the head) did not.
    assert np.abs(out - src)[:, :40].mean() > 40
    h, w = src.shape[:2]
    face = (slice(int(h * 0.40), int(h * 0.48)), slice(int(w * 0.4), int(w * 0.6)))
    assert np.abs(out[face] - src[face]).mean() < 3
    assert np.abs(out - alt).mean() > 20  # another prompt gives another scene


def test_image_edit_on_a_photo_changes_the_edges(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    photo = tmp_path / "photo.jpg"
    Image.fromarray(rng.integers(0, 255, (400, 300, 3), dtype=np.uint8)).save(photo)
    out = LocalImageEditor().edit(photo, "office", seed=3, workdir=tmp_path)
    before, after = _pixels(photo), _pixels(out.path)
    assert np.abs(after - before)[:20].mean() > 30
    assert np.abs(after - before)[180:220, 130:170].mean() < 15


def test_image_edit_rejects_unreadable_image(tmp_path: Path) -> None:
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    with pytest.raises(PermanentError, match="cannot read image"):
        LocalImageEditor().edit(bad, "beach", seed=0, workdir=tmp_path)


def test_speech_is_real_audio_with_its_true_duration(tmp_path: Path) -> None:
    short = EspeakSpeech().synthesize("Hi there.", VOICE, workdir=tmp_path)
    (tmp_path / "long").mkdir()
    long = EspeakSpeech().synthesize(
        "This is a much longer sentence, which should take a good deal more time to say out loud.",
        VOICE,
        workdir=tmp_path / "long",
    )
    with wave.open(str(long.path)) as w:
        frames, rate = w.getnframes(), w.getframerate()
        pcm = np.frombuffer(w.readframes(frames), dtype=np.int16)
    assert long.seconds == pytest.approx(frames / rate)
    assert long.seconds is not None
    assert short.seconds is not None
    assert 3.0 < long.seconds < 12.0
    assert long.seconds > short.seconds * 2
    assert np.sqrt(np.mean(pcm.astype(np.float64) ** 2)) > 500  # not silence
    assert long.billing.unit == "characters"


def test_speech_rejects_unknown_voice(tmp_path: Path) -> None:
    with pytest.raises(PermanentError, match="unknown eSpeak NG voice"):
        EspeakSpeech().synthesize("hello", VOICE.model_copy(update={"voice_id": "xx-nope"}), workdir=tmp_path)


def _frames(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as c:
        return [f.to_ndarray(format="rgb24").astype(np.int16) for f in c.decode(video=0)]


def test_lipsync_preview_moves_the_mouth_with_the_speech(
    portrait: Path, speech_wav: Path, tmp_path: Path
) -> None:
    out = PreviewLipSync().render(
        portrait, speech_wav, resolution="480p", seed=0, mouth=SAMPLE_MOUTH, workdir=tmp_path
    )
    audio_seconds = media.decode_audio(speech_wav).seconds
    info = media.probe(out.path)
    assert info.has_video
    assert info.has_audio
    assert (info.width, info.height) == (480, 854)
    assert info.fps == pytest.approx(25)
    assert info.video_duration is not None
    assert abs(info.video_duration - audio_seconds) <= 1 / 25 + 1e-6
    assert (
        media.check_video(out.path, audio_seconds=audio_seconds, fps=25, size=(480, 854), tolerance=0.1) == []
    )
    frames = np.stack(_frames(out.path))
    mouth_y, mouth_x = int(SAMPLE_MOUTH.y * 854), int(SAMPLE_MOUTH.x * 480)
    mouth = frames[:, mouth_y - 5 : mouth_y + 30, mouth_x - 30 : mouth_x + 30].mean(axis=(1, 2, 3))
    eyes = frames[:, int(0.41 * 854) - 10 : int(0.41 * 854) + 10, 180:300].mean(axis=(1, 2, 3))
    assert mouth.std() > 3 * max(eyes.std(), 0.3)  # the mouth moves, the eyes stay
    # Closed in the leading silence, open while speaking.
    assert mouth[:2].std() < 1.0
    assert mouth.max() - mouth.min() > 8


def test_lipsync_preview_gently_moves_any_portrait(speech_wav: Path, tmp_path: Path) -> None:
    photo = tmp_path / "photo.png"
    yy, xx = np.mgrid[0:640, 0:480]
    Image.fromarray(np.dstack([xx % 256, yy % 256, (xx + yy) % 256]).astype(np.uint8)).save(photo)
    out = PreviewLipSync().render(photo, speech_wav, resolution="480p", seed=0, mouth=None, workdir=tmp_path)
    frames = _frames(out.path)
    diffs = [np.abs(frames[i + 1] - frames[i]).mean() for i in range(len(frames) - 1)]
    assert max(diffs) > 0.5  # it moves
    assert max(diffs) < 40  # gently


def test_lipsync_rejects_unreadable_audio(portrait: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.mp3"
    bad.write_bytes(b"\x00" * 1000)
    with pytest.raises(PermanentError):
        PreviewLipSync().render(portrait, bad, resolution="480p", seed=0, mouth=None, workdir=tmp_path)


def test_quality_check_reports_mismatches(portrait: Path, speech_wav: Path, tmp_path: Path) -> None:
    out = PreviewLipSync().render(
        portrait, speech_wav, resolution="480p", seed=0, mouth=None, workdir=tmp_path
    )
    seconds = media.decode_audio(speech_wav).seconds
    problems = media.check_video(
        out.path, audio_seconds=seconds + 1.0, fps=25, size=(720, 1280), tolerance=0.1
    )
    assert any("frame size 480x854" in p for p in problems)
    assert any("video lasts" in p for p in problems)
    assert any(
        "frame rate" in p
        for p in media.check_video(out.path, audio_seconds=seconds, fps=30, size=(480, 854), tolerance=0.1)
    )
    silent = tmp_path / "silent.mp4"
    media.encode_video(
        silent,
        iter([np.zeros((854, 480, 3), np.uint8)] * 5),
        size=(480, 854),
        fps=25,
        audio=media.Audio(np.zeros(4800, np.float32), 24000),
    )
    assert media.check_video(silent, audio_seconds=0.2, fps=25, size=(480, 854), tolerance=0.1) == []
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(b"nope")
    assert media.check_video(garbage, audio_seconds=1, fps=25, size=(480, 854), tolerance=0.1)
