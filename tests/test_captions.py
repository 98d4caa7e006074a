"""Captions: cue splitting and timing to the speech, SRT text, and a burned-in video that still passes QC."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa
from PIL import Image

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


SCRIPTS = {
    "latin": "Honestly, this cream changed my mornings. Try it today for $20, you will not regret it!",
    "long word": "The Supercalifragilisticexpialidociousnessmaximiser2000 changed everything, truly.",
    "cjk": "这款面霜真的改变了我的早晨。今天就试试吧，只要二十美元！",
    "arabic": "هذا الكريم غير صباحي حقاً. جربه اليوم بعشرين دولاراً فقط!",
    "emoji": "I love it 😍🔥 seriously 👍🏽 try it! ✨",
}
SIZES = [(480, 854), (720, 1280), (1080, 1920), (1080, 1080)]


def _words(script: str, seconds: float) -> list[dict[str, object]]:
    return captions.spread_words(script, (0.3, seconds - 0.3))


@pytest.mark.parametrize("style", captions.STYLE_NAMES)
@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_every_glyph_stays_inside_the_safe_band(style: str, size: tuple[int, int]) -> None:
    """Drawn for real (FreeType, HarfBuzz): the ink of every cue, outline included, lies inside the band,
    for long words, Chinese, Arabic and emoji alike, and every word of the script is shown once."""
    audio = media.Audio(np.zeros(16_000 * 10, dtype=np.float32), 16_000)
    for name, script in SCRIPTS.items():
        assert captions.missing_glyphs(script, style) is None, name
        layout, cues = captions.build(style, script, _words(script, 10), audio, size)
        band = layout.band
        assert cues, name
        for cue in cues:
            for active in [None, *cue.tokens[:2]]:
                box = layout.overlay(cue, size, active).getbbox()
                assert box is not None
                where = (name, cue.text, box, band)
                assert band.left <= box[0], where
                assert box[2] <= band.right, where
                assert band.top <= box[1], where
                assert box[3] <= band.bottom, where
            assert len(cue.lines) <= layout.style.max_lines
            if layout.style.max_words and name != "cjk":
                assert len(cue.tokens) <= layout.style.max_words
        shown = "".join(t.text for c in cues for t in c.tokens)
        assert shown.upper() == "".join(script.split()).upper(), name  # nothing lost, nothing repeated


def test_lines_are_wrapped_by_glyph_width_not_characters() -> None:
    """Forty 'i' are much narrower than forty 'W': the same character count wraps differently."""
    audio = media.Audio(np.zeros(16_000 * 6, dtype=np.float32), 16_000)
    narrow = " ".join(["ill"] * 12)
    wide = " ".join(["WWW"] * 12)
    _layout, thin = captions.build("clean", narrow, _words(narrow, 6), audio, (1080, 1920))
    _layout, fat = captions.build("clean", wide, _words(wide, 6), audio, (1080, 1920))
    assert sum(len(c.lines) for c in fat) > sum(len(c.lines) for c in thin)


def test_a_word_too_wide_shrinks_its_cue_and_other_cues_keep_the_style_size() -> None:
    audio = media.Audio(np.zeros(16_000 * 6, dtype=np.float32), 16_000)
    script = "Meet the Extraordinarilyremarkable cream. It works."
    layout, cues = captions.build("clean", script, _words(script, 6), audio, (1080, 1920))
    sizes = {c.text: c.size for c in cues}
    assert sizes["It works."] == layout.full
    assert min(sizes.values()) < layout.full


def test_cues_follow_the_word_timings() -> None:
    """Each cue starts with its first word and ends when the next begins (or soon after its last word);
    a long pause ends a cue; bold shows at most three words; karaoke lights the word being spoken."""
    script = "First words here. Then after a pause, some more words to read."
    words = [
        {
            "word": w,
            "start": 0.3 + 0.3 * i + (1.5 if i >= 3 else 0),
            "end": 0.3 + 0.3 * i + 0.25 + (1.5 if i >= 3 else 0),
        }
        for i, w in enumerate(captions.WORD.findall(script))
    ]
    audio = media.Audio(np.zeros(16_000 * 8, dtype=np.float32), 16_000)
    _layout, clean = captions.build("clean", script, words, audio, (1080, 1920))
    assert clean[0].text == "First words here."
    assert clean[0].start == pytest.approx(0.3)
    assert clean[0].end == pytest.approx(0.3 + 0.6 + 0.25 + captions.HOLD_S)  # held, the pause follows
    assert clean[1].start == pytest.approx(0.3 + 0.9 + 1.5)
    assert all(a.end <= b.start + 1e-9 for a, b in itertools.pairwise(clean))
    _layout, bold = captions.build("bold", script, words, audio, (1080, 1920))
    assert all(1 <= len(c.tokens) <= 3 for c in bold)
    assert " ".join(bold[0].text.split()) == "First words here."  # the SRT's text: as written
    layout, karaoke = captions.build("karaoke", script, words, audio, (1080, 1920))
    cue = karaoke[1]
    first, second = (
        layout.overlay(cue, (1080, 1920), cue.tokens[0]),
        layout.overlay(cue, (1080, 1920), cue.tokens[1]),
    )
    assert _highlight_x(first) < _highlight_x(second)  # the lit word moves along the line


def _highlight_x(image: Image.Image) -> float:
    pixels = np.asarray(image)
    yellow = (pixels[..., 0] > 200) & (pixels[..., 1] > 180) & (pixels[..., 2] < 120) & (pixels[..., 3] > 200)
    assert yellow.any()
    return float(np.flatnonzero(yellow.any(axis=0)).mean())


def test_without_word_timings_the_voiced_span_is_used() -> None:
    audio = tone_with_silence(lead=1.0, voiced=4.0, tail=1.0)
    _layout, cues = captions.build(
        "clean", "First part here. Second part, a bit longer than the first.", [], audio, (720, 1280)
    )
    assert cues[0].start == pytest.approx(1.0, abs=0.1)  # the speech starts after a second of silence
    assert max(t.end for t in cues[-1].tokens) == pytest.approx(5.0, abs=0.15)


def test_srt_and_ass_files() -> None:
    script = "Hello there. Big {deal} \\ here!"
    words = captions.spread_words(script, (0.5, 3.0))
    audio = media.Audio(np.zeros(16_000 * 4, dtype=np.float32), 16_000)
    layout, cues = captions.build("karaoke", script, words, audio, (1080, 1920))
    srt = captions.srt(cues)
    assert srt.startswith("1\n00:00:00,500 --> 00:00:0")
    assert "Hello there." in srt
    ass = captions.ass(layout, cues, (1080, 1920))
    assert "PlayResX: 1080\nPlayResY: 1920" in ass
    style = next(line for line in ass.splitlines() if line.startswith("Style: karaoke,Montserrat,"))
    fields = style.split(",")
    assert fields[-5:-1] == ["2", "180", "180", "500"]  # bottom centre, the safe band as margins
    dialogue = [line for line in ass.splitlines() if line.startswith("Dialogue:")]
    assert len(dialogue) == len(cues)
    assert dialogue[0].startswith("Dialogue: 0,0:00:00.50,")
    assert "{\\k" in dialogue[0]
    assert "{deal}" not in ass  # a brace in the script would be read as an override tag
    assert _stamp_ok(captions.srt([captions.Cue(61.0, 3725.042, (), 40)]))


def _stamp_ok(text: str) -> bool:
    return "00:01:01,000 --> 01:02:05,042" in text


def test_a_script_no_font_draws_is_refused_with_the_characters_named() -> None:
    lacking = captions.missing_glyphs("Try it \U0001fae8 now \u16a0", "clean")  # no font draws these
    assert lacking is not None
    assert "U+1FAE8" in lacking or "U+16A0" in lacking
    assert "RUNIC" in lacking
    assert captions.missing_glyphs("Plain words, 100% fine!", "bold") is None


@pytest.mark.flow
def test_a_captioned_video_is_burned_in_with_an_srt_and_passes_qc(rt: Runtime, prefect_server: None) -> None:
    from flows.generate_video import generate_video

    ensure_sample_actors(rt)
    plain = generate_video(VideoRequest(actor="maya", script="Captions make ads work without sound."))
    captioned = generate_video(
        VideoRequest(actor="maya", script="Captions make ads work without sound.", captions="bold")
    )
    assert captioned.status == "succeeded"
    # portrait, speech, lip-sync and word timing of the plain video: only captions are new
    assert captioned.reused_stages == 4
    assert plain.video_key is not None
    assert captioned.video_key is not None
    with rt.session() as s:
        row = s.scalars(sa.select(Video).where(Video.video_key == captioned.video_key)).one()
        assert row.captions_key is not None
        srt_key = row.captions_key
        assert s.scalars(sa.select(StageRun).where(StageRun.stage == "captions")).one().cost_usd == 0
    srt_text = Path(rt.storage.local_path(srt_key)).read_text(encoding="utf-8")
    assert srt_text.startswith("1\n00:00:0")
    assert (
        " ".join(srt_text.split()).count("make ads") == 1
    )  # the script as written (bold draws it upper case)
    ass_text = Path(rt.storage.local_path(srt_key.removesuffix(".srt") + ".ass")).read_text(encoding="utf-8")
    assert "Style: bold,Montserrat," in ass_text
    assert "CAPTIONS" in ass_text
    info = media.probe(rt.storage.local_path(captioned.video_key))
    assert captioned.audio_seconds is not None
    assert abs(info.duration - captioned.audio_seconds) < 0.1
    assert (info.width, info.height) == (480, 854)
    # the captioned frames differ from the plain ones inside the safe band (white text), not above it
    plain_mid = _frame_at(rt.storage.local_path(plain.video_key), 0.5)
    capt_mid = _frame_at(rt.storage.local_path(captioned.video_key), 0.5)
    band = captions.safe_band(480, 854)
    lower = slice(band.top, band.bottom)
    assert np.abs(capt_mid[lower].astype(int) - plain_mid[lower].astype(int)).mean() > 5
    assert np.abs(capt_mid[: band.top].astype(int) - plain_mid[: band.top].astype(int)).mean() < 3


def _frame_at(path: Path, fraction: float) -> np.ndarray:
    frames = list(media.decode_video_frames(path))
    return frames[int(len(frames) * fraction)]


def test_a_latin_brand_name_keeps_its_order_inside_an_arabic_line() -> None:
    """Right to left, word by word from the right, but 'Glow Serum' still reads Glow then Serum."""
    assert captions.visual_order(["جرب", "Glow", "Serum", "الآن"], rtl=True) == [3, 1, 2, 0]
    assert captions.visual_order(["Try", "it", "now"], rtl=False) == [0, 1, 2]
    audio = media.Audio(np.zeros(16_000 * 4, dtype=np.float32), 16_000)
    script = "جرب Glow Serum الآن"
    _layout, (cue,) = captions.build(
        "clean", script, captions.spread_words(script, (0.2, 3.0)), audio, (1080, 1920)
    )
    x = {p.token.text: p.x for p in cue.lines[0]}
    assert x["الآن"] < x["Glow"] < x["Serum"] < x["جرب"]
