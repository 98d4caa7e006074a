"""Captions: cue splitting and timing to the speech, SRT text, and a burned-in video that still passes QC."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa

from castflow import captions, media
from castflow.actors import ensure_sample_actors
from castflow.db.tables import StageRun, Video
from castflow.models import VideoRequest
from castflow.runtime import Runtime


def tone_with_silence(lead: float, voiced: float, tail: float, rate: int = 16_000) -> media.Audio:
    t = np.arange(int(voiced * rate)) / rate
    speech = (0.5 * np.sin(2 * np.pi * 200 * t)).astype(np.float32)
    pad = lambda s: np.zeros(int(s * rate), dtype=np.float32)  # noqa: E731
    return media.Audio(np.concatenate([pad(lead), speech, pad(tail)]), rate)


def test_cues_break_at_sentences_and_wrap_to_two_lines_of_42() -> None:
    text = (
        "Short one. "
        + "This second sentence is long enough that it has to wrap over more than two lines of text."
    )
    cues = captions.split_cues(text)
    assert cues[0] == "Short one."
    for cue in cues:
        lines = cue.split("\n")
        assert len(lines) <= 2
        assert all(len(line) <= 42 for line in lines)
    assert " ".join(" ".join(c.split("\n")) for c in cues) == " ".join(text.split())


def test_cues_follow_the_voiced_span_not_the_clock() -> None:
    audio = tone_with_silence(lead=1.0, voiced=4.0, tail=1.0)
    cues = captions.timed_cues("First part here. Second part, a bit longer than the first.", audio)
    assert cues[0].start == pytest.approx(1.0, abs=0.1)  # the speech starts after a second of silence
    assert cues[-1].end == pytest.approx(5.0, abs=0.1)
    assert all(a.end <= b.start + 1e-6 for a, b in itertools.pairwise(cues))
    longer = cues[1].end - cues[1].start
    assert longer > cues[0].end - cues[0].start  # time in proportion to length


def test_srt_format() -> None:
    text = captions.srt([captions.Cue(0.5, 1.75, "Hello"), captions.Cue(61.0, 3725.042, "two\nlines")])
    assert text == "1\n00:00:00,500 --> 00:00:01,750\nHello\n\n2\n00:01:01,000 --> 01:02:05,042\ntwo\nlines\n"


@pytest.mark.flow
def test_a_captioned_video_is_burned_in_with_an_srt_and_passes_qc(rt: Runtime, prefect_server: None) -> None:
    from flows.generate_video import generate_video

    ensure_sample_actors(rt)
    plain = generate_video(VideoRequest(actor="maya", script="Captions make ads work without sound."))
    captioned = generate_video(
        VideoRequest(actor="maya", script="Captions make ads work without sound.", captions=True)
    )
    assert captioned.status == "succeeded"
    assert (
        captioned.reused_stages == 3
    )  # portrait, speech and lip-sync of the plain video: only captions are new
    assert plain.video_key is not None
    assert captioned.video_key is not None
    with rt.session() as s:
        row = s.scalars(sa.select(Video).where(Video.video_key == captioned.video_key)).one()
        assert row.captions_key is not None
        srt_key = row.captions_key
        assert s.scalars(sa.select(StageRun).where(StageRun.stage == "captions")).one().cost_usd == 0
    srt_text = Path(rt.storage.local_path(srt_key)).read_text(encoding="utf-8")
    assert srt_text.startswith("1\n00:00:0")
    assert "Captions make ads work" in srt_text
    info = media.probe(rt.storage.local_path(captioned.video_key))
    assert captioned.audio_seconds is not None
    assert abs(info.duration - captioned.audio_seconds) < 0.1
    assert (info.width, info.height) == (480, 854)
    # the captioned frames differ from the plain ones in the lower third (white text), not at the top
    plain_mid = _frame_at(rt.storage.local_path(plain.video_key), 0.5)
    capt_mid = _frame_at(rt.storage.local_path(captioned.video_key), 0.5)
    lower = slice(int(854 * 0.6), int(854 * 0.85))
    assert np.abs(capt_mid[lower].astype(int) - plain_mid[lower].astype(int)).mean() > 5
    assert np.abs(capt_mid[:200].astype(int) - plain_mid[:200].astype(int)).mean() < 3


def _frame_at(path: Path, fraction: float) -> np.ndarray:
    frames = list(media.decode_video_frames(path))
    return frames[int(len(frames) * fraction)]
