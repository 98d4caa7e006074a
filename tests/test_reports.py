"""Campaign reports: polars tables over the database, CSV/Parquet/XLSX/HTML files, Prefect artifacts."""

from __future__ import annotations

import re
import zipfile
from pathlib import Path

import polars as pl
import pytest

from castflow import reports
from castflow.actors import ActorSpec, ensure_sample_actors, import_actors
from castflow.fakes import running_fakes
from castflow.models import Voice
from castflow.runtime import Runtime, get_runtime
from castflow.settings import reset_settings

pytestmark = pytest.mark.flow


@pytest.fixture
def campaign(data_dir: Path, monkeypatch: pytest.MonkeyPatch, prefect_server: None) -> Runtime:
    """A finished campaign on the fakes: 3 videos made, 1 failed (content policy), 1 invalid row."""
    from flows.run_campaign import run_campaign

    monkeypatch.setenv("CASTFLOW_PROVIDERS__FAKES", "true")
    monkeypatch.setenv("CASTFLOW_PROVIDERS__IMAGE", "fal")
    monkeypatch.setenv("CASTFLOW_PROVIDERS__LIPSYNC", "wavespeed")
    reset_settings()
    rt = get_runtime()
    ensure_sample_actors(rt)
    voice = Voice(provider="fal", model="fal-ai/elevenlabs/tts/multilingual-v2", voice_id="Aria")
    import_actors(
        rt, [ActorSpec(key="nia", name="Nia", portrait="drawn:ava", voice=voice)], base_dir=Path.cwd()
    )
    sheet = data_dir.parent / "autumn.csv"
    sheet.write_text(
        "row_id,actor,script,scene,note\n"
        "a,nia,Autumn deals are here.,a park in autumn,=cmd|' /C calc'!A0\n"
        "b,nia,Autumn deals are here.,a park in autumn,plain\n"
        "c,maya,Cozy season starts now.,,\n"
        "d,leo,This one is refused by the policy.,a forbidden place,\n"
        "e,nobody,Invalid row.,,\n",
        encoding="utf-8",
    )
    fal = running_fakes()["fal"]
    fal.knobs.fail_jobs = []

    original = fal._finish_locked

    def refuse_forbidden(job: object) -> None:
        if "forbidden" in str(getattr(job, "payload", {}).get("prompt", "")):
            job.error = ("Content policy violation", "content_policy_violation")  # type: ignore[attr-defined]
            return
        original(job)  # type: ignore[arg-type]

    monkeypatch.setattr(fal, "_finish_locked", refuse_forbidden)
    result = run_campaign(sheet=str(sheet), name="Autumn", skip_invalid=True)
    assert (result.succeeded, result.failed, result.skipped) == (3, 1, 1), result.results
    return rt


def test_report_tables_files_and_escaping(campaign: Runtime, tmp_path: Path) -> None:
    built = reports.build(campaign, "Autumn", tmp_path / "out")
    t = built.totals
    assert (t["rows"], t["succeeded"], t["failed"], t["skipped"]) == (5, 3, 1, 1)
    by_provider = {
        r["provider"]: r["spend_usd"] for r in built.tables["spend_by_provider"].iter_rows(named=True)
    }
    assert by_provider["fal"] > 0
    assert by_provider["wavespeed"] > 0
    assert by_provider.get("local", 0) == 0  # eSpeak and captions are free
    videos = built.tables["videos"]
    # every dollar is attributed: the campaign's video costs plus what the failed row already paid
    assert t["spend_usd"] == pytest.approx(sum(by_provider.values()))
    assert t["spend_usd"] >= float(videos["cost_usd"].sum())
    assert t["cost_per_finished_video_usd"] == pytest.approx(t["spend_usd"] / 3, abs=1e-5)
    assert t["stages_reused"] >= 2  # row b reused a's variant and speech
    failures = built.tables["failures"].row(0, named=True)
    assert failures["failed_stage"] == "scene_variant"
    assert "Content policy" in failures["reason"]
    times = {r["stage"]: r for r in built.tables["stage_times"].iter_rows(named=True)}
    assert times["lipsync"]["p95_s"] >= times["lipsync"]["p50_s"] > 0

    out = tmp_path / "out"
    errors = pl.read_csv(out / "failures.csv")
    assert errors.height == 1
    assert pl.read_parquet(out / "spend_by_stage.parquet").height >= 3
    with zipfile.ZipFile(out / "report.xlsx") as xlsx:
        sheets = [n for n in xlsx.namelist() if n.startswith("xl/worksheets/sheet")]
        assert len(sheets) == len(reports.TABLES)
    page = (out / "report.html").read_text(encoding="utf-8")
    assert page.count("<svg") == 5
    assert page.count("<video") == 3
    assert page.count("data:image/jpeg;base64,") == 3  # thumbnails inline
    assert not re.search(r"<(script|link)[^>]+(src|href)=\"https?://", page)  # nothing from a CDN


def test_formula_like_text_is_escaped_in_csv_and_xlsx() -> None:
    frame = pl.DataFrame({"error": ["=HYPERLINK(1)", "+1", "-x", "@y", "fine"], "n": [1, 2, 3, 4, 5]})
    assert reports.escaped(frame)["error"].to_list() == ["'=HYPERLINK(1)", "'+1", "'-x", "'@y", "fine"]


def test_campaign_report_flow_publishes_artifacts(campaign: Runtime, tmp_path: Path) -> None:
    import asyncio

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from flows.campaign_report import campaign_report

    result = campaign_report(campaign="Autumn", out_dir=str(tmp_path / "flow"))
    assert Path(result.files["html"]).is_file()
    assert result.totals["succeeded"] == 3

    async def artifacts() -> list[str]:
        async with get_client() as client:
            found = await client.read_artifacts(
                artifact_filter=ArtifactFilter(key=ArtifactFilterKey(like_="campaign-autumn"))
            )
            return sorted({a.key or "" for a in found})

    keys = asyncio.run(artifacts())
    assert {"campaign-autumn-report", "campaign-autumn-spend", "campaign-autumn-progress"} <= set(keys)


def test_unknown_campaign(rt: Runtime) -> None:
    with pytest.raises(reports.ReportError, match="no campaign 'nope'"):
        reports.build(rt, "nope")
