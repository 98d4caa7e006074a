"""Estimates at the real providers' prices, whatever plays each role here (the embedded defaults cost
nothing; the dry run says what the same sheet would cost on fal and WaveSpeed)."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from castflow import campaigns, pipeline
from castflow.actors import ensure_sample_actors
from castflow.cli import app
from castflow.estimates import RealPrices, real_total
from castflow.providers.fal.settings import of as fal_of
from castflow.providers.wavespeed.settings import of as ws_of
from castflow.runtime import Runtime

SHEET = (
    "row_id,actor,script,scene,resolution\n"
    "a,maya,Fresh coffee every morning.,a sunny kitchen,480p\n"
    "b,maya,Fresh coffee every morning.,a sunny kitchen,720p\n"  # shares the variant and the speech
    "c,leo,Look at this view.,,480p\n"  # no scene: the portrait, no image edit
)


def real_rates(rt: Runtime, script: str, *, scene: bool, seconds: float, resolution: str) -> float:
    """A row's price on fal and WaveSpeed, from their settings groups (a local voice is priced at fal's
    reference TTS model; InfiniteTalk bills whole seconds, at least 5)."""
    fal, ws = fal_of(rt.settings), ws_of(rt.settings)
    image = fal.image_prices[fal.image_model] if scene else 0.0
    speech = fal.tts_prices_per_1k_chars[fal.reference_tts_model] * len(script) / 1000
    billed = max(5, -(-seconds // 1))
    return image + speech + billed * ws.price_per_second[resolution]


def test_the_embedded_defaults_cost_nothing_here_and_are_priced_as_on_the_real_providers(
    rt: Runtime, tmp_path: Path
) -> None:
    ensure_sample_actors(rt)
    path = tmp_path / "spring.csv"
    path.write_text(SHEET, encoding="utf-8")
    sheet = campaigns.load_sheet(rt, path)
    a, b, c = campaigns.estimate_sheet(rt, sheet.rows)
    assert (a.total_usd, b.total_usd, c.total_usd) == (0, 0, 0)  # nothing is paid here
    script = "Fresh coffee every morning."
    assert a.real_usd == pytest.approx(real_rates(rt, script, scene=True, seconds=1, resolution="480p"))
    # b shares a's scene variant and speech: only its 720p lip-sync is new.
    assert b.real_usd == pytest.approx(5 * ws_of(rt.settings).price_per_second["720p"])
    assert c.real_usd == pytest.approx(
        real_rates(rt, "Look at this view.", scene=False, seconds=1, resolution="480p")
    )
    assert RealPrices(rt).describe() == "image fal, speech fal, lip-sync WaveSpeed"

    # Running a row here pays nothing, and a first run on the real providers still would.
    row = sheet.rows[0]
    video = pipeline.prepare_video(rt, row.request)
    pipeline.record_start(rt, video)
    assert pipeline.run_video(rt, video).status == "succeeded"
    again = campaigns.estimate_sheet(rt, sheet.rows)
    assert again[0].reused_stages >= 2  # finished here
    assert real_total(again) == pytest.approx(real_total([a, b, c]))


def test_a_paid_provider_here_costs_what_it_costs_here(
    rt: Runtime, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With fal's prices doubled in its group, the real figure follows the settings: the price lists are
    the vendors' settings, not a table of their own."""
    ensure_sample_actors(rt)
    fal = fal_of(rt.settings)
    monkeypatch.setitem(fal.image_prices, fal.image_model, 2 * fal.image_prices[fal.image_model])
    path = tmp_path / "one.csv"
    path.write_text("actor,script,scene\nmaya,Hi.,a park\n", encoding="utf-8")
    (estimate,) = campaigns.estimate_sheet(rt, campaigns.load_sheet(rt, path).rows)
    assert estimate.real_usd == pytest.approx(real_rates(rt, "Hi.", scene=True, seconds=1, resolution="480p"))


def test_the_dry_run_shows_both_figures(rt: Runtime, tmp_path: Path) -> None:
    ensure_sample_actors(rt)
    path = tmp_path / "spring.csv"
    path.write_text(SHEET, encoding="utf-8")
    result = CliRunner().invoke(app, ["campaign", "run", str(path), "--dry-run", "--budget", "1"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert all("= $0.0000  real $0." in line for line in lines[:3])
    assert lines[3] == "estimate: $0.00 for 3 row(s) here (image local, speech local, lip-sync local)"
    from castflow import campaigns as c

    real = real_total(c.estimate_sheet(rt, c.load_sheet(rt, path).rows))
    assert real > 0.3
    assert lines[4].startswith(f"on the real providers: ${real:.2f} ")
    assert "(image fal, speech fal, lip-sync WaveSpeed: a first run there" in lines[4]
    assert lines[4].endswith("; --budget applies to the first figure")


def test_a_first_run_there_counts_what_a_paid_provider_here_already_did(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """fal plays the image here (its fake), the lip-sync is local: after a row ran, the real figure
    still counts the fal image it paid for (a first run there), not only what is left to pay."""
    from castflow.settings import reset_settings

    monkeypatch.setenv("CASTFLOW_PROVIDERS__FAKES", "true")
    monkeypatch.setenv("CASTFLOW_PROVIDERS__IMAGE", "fal")
    reset_settings()
    from castflow.runtime import get_runtime

    rt = get_runtime()
    ensure_sample_actors(rt)
    path = data_dir.parent / "paid.csv"
    path.write_text("actor,script,scene\nmaya,Hi there.,a park\n", encoding="utf-8")
    rows = campaigns.load_sheet(rt, path).rows
    (before,) = campaigns.estimate_sheet(rt, rows)
    fal = fal_of(rt.settings)
    assert before.image_usd == pytest.approx(fal.image_prices[fal.image_model])  # paid here
    video = pipeline.prepare_video(rt, rows[0].request)
    pipeline.record_start(rt, video)
    assert pipeline.run_video(rt, video).status == "succeeded"
    (after,) = campaigns.estimate_sheet(rt, rows)
    assert after.total_usd == 0  # nothing left to pay here
    assert after.real_usd == pytest.approx(before.real_usd)
    assert after.real_usd == pytest.approx(
        real_rates(rt, "Hi there.", scene=True, seconds=1, resolution="480p")
    )
