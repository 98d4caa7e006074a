"""Campaign reports: polars tables over the database, CSV/Parquet/XLSX/HTML files, Prefect artifacts."""

from __future__ import annotations

import re
import zipfile
from pathlib import Path

import polars as pl
import pytest

from castflow import reports
from castflow.actors import ensure_sample_actors
from castflow.fakes import running_fakes
from castflow.runtime import Runtime, get_runtime
from castflow.settings import reset_settings

pytestmark = pytest.mark.flow


@pytest.fixture
def campaign(
    fakes_rt: Runtime, data_dir: Path, monkeypatch: pytest.MonkeyPatch, prefect_server: None
) -> Runtime:
    """A finished campaign on the fakes: 3 videos made, 1 failed (content policy), 1 invalid row."""
    from flows.run_campaign import run_campaign

    rt = fakes_rt
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


@pytest.fixture
def free_campaign(rt: Runtime, tmp_path: Path, prefect_server: None) -> Runtime:
    """A campaign on the embedded defaults (nothing paid), with the sheet's own columns."""
    from flows.run_campaign import run_campaign

    ensure_sample_actors(rt)
    sheet = tmp_path / "winter.csv"
    sheet.write_text(
        "row_id,actor,script,scene,utm_source\n"
        "w1,maya,Winter sale starts today and it is a long script that the tile shortens "
        "so the gallery stays tidy for everyone who opens it even on a small phone screen.,a snowy street,tiktok\n"
        "w2,leo,Warm up with us.,,reels\n",
        encoding="utf-8",
    )
    result = run_campaign(sheet=str(sheet), name="Winter")
    assert result.succeeded == 2, result.results
    return rt


def test_a_free_campaign_says_what_the_real_providers_would_cost(
    free_campaign: Runtime, tmp_path: Path
) -> None:
    built = reports.build(free_campaign, "Winter", tmp_path / "r")
    assert built.totals["spend_usd"] == 0
    assert built.real_usd is not None
    assert built.real_usd > 0.3  # two lip-syncs at the 5 s minimum, a scene variant, two speeches
    page = (tmp_path / "r" / "report.html").read_text(encoding="utf-8")
    assert "The embedded providers cost nothing." in page
    assert f"would cost ${built.real_usd:.2f}" in page
    assert "No failures." in page
    assert "Nothing was paid for: the embedded providers cost nothing." in page
    assert page.count("<svg") == 2  # status and stage times: no empty spend charts
    assert "Spend (USD)" not in page  # no table of zeros
    assert "95th percentile (s)" in page
    assert "lip-sync" in page
    assert "Run on 20" in page
    # Tiles: the script shortened, the scene, the sheet's own columns, open and download links.
    assert "Winter sale starts today" in page
    assert "…" in page
    assert "a snowy street" in page
    assert "<dt>utm_source</dt><dd>tiktok</dd>" in page
    assert page.count(">download</a>") == 2


def test_the_page_plays_its_videos_from_another_folder_and_from_storage(
    free_campaign: Runtime, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rt = free_campaign
    out = tmp_path / "elsewhere" / "deep"
    built = reports.build(rt, "Winter", out, publish=True)
    page = (out / "report.html").read_text(encoding="utf-8")
    sources = re.findall(r'<video[^>]* src="([^"]+)"', page)
    assert len(sources) == 2
    for src in sources:  # relative to the page, and they lead to the videos
        assert not src.startswith(("file:", "/"))
        assert (out / src).resolve().is_file()
    # Published beside the videos: links relative to it there.
    assert built.published_url is not None
    published = Path(built.published_url.removeprefix("file://"))
    assert published.parent == rt.storage.local_path("campaigns/winter/x").parent
    for src in re.findall(r'<video[^>]* src="([^"]+)"', published.read_text(encoding="utf-8")):
        assert "/" not in src
        assert (published.parent / src).is_file()
    # One file to send: the videos inside the page.
    monkeypatch.chdir(tmp_path)
    embedded = reports.build(rt, "Winter", tmp_path / "emb", embed=True)
    single = embedded.files["html"].read_text(encoding="utf-8")
    assert single.count('src="data:video/mp4;base64,') == 2
    assert "Videos are inside this page" in single
    monkeypatch.setattr(reports, "EMBED_MAX_BYTES", 10)
    reports.build(rt, "Winter", tmp_path / "emb2", embed=True)
    partly = (tmp_path / "emb2" / "report.html").read_text(encoding="utf-8")
    assert "data:video/mp4" not in partly
    assert "2 larger one(s) are linked" in partly


def test_a_report_in_remote_storage_says_its_links_are_signed(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch, prefect_server: None, tmp_path: Path
) -> None:
    from flows.run_campaign import run_campaign

    monkeypatch.setenv("CASTFLOW_PROVIDERS__FAKES", "true")
    monkeypatch.setenv("CASTFLOW_STORAGE__BACKEND", "supabase")
    reset_settings()
    rt = get_runtime()
    ensure_sample_actors(rt)
    sheet = tmp_path / "remote.csv"
    sheet.write_text("row_id,actor,script\nr1,ava,Stored far away.\n", encoding="utf-8")
    assert run_campaign(sheet=str(sheet), name="Remote").succeeded == 1
    built = reports.build(rt, "Remote", tmp_path / "r", publish=True)
    page = (tmp_path / "r" / "report.html").read_text(encoding="utf-8")
    (src,) = re.findall(r'<video[^>]* src="([^"]+)"', page)
    assert src.startswith("http")
    assert "token=" in src
    assert "signed URLs that stop working on" in page
    assert built.published_url is not None
    assert "report.html" in built.published_url
    keys = {k for (_bucket, k) in running_fakes()["supabase"].objects}
    assert "campaigns/remote/report.html" in keys
    assert any(k.startswith("campaigns/remote/thumbs/") for k in keys)  # the run's gallery pictures
