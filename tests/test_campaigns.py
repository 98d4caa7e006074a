"""Campaign runs: fan-out over a sheet, shared stages, resume without paying, refusal of bad sheets,
dry-run estimates and the budget, and the manifest."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import sqlalchemy as sa

from castflow.actors import ActorSpec, ensure_sample_actors, import_actors
from castflow.db.tables import Campaign, StageRun, Video
from castflow.fakes import running_fakes
from castflow.models import Voice
from castflow.runtime import Runtime, get_runtime
from castflow.settings import reset_settings
from castflow.sheets import SheetInvalid

pytestmark = pytest.mark.flow


def write(tmp: Path, text: str, name: str = "spring.csv") -> Path:
    path = tmp / name
    path.write_text(text, encoding="utf-8")
    return path


SHEET = (
    "row_id,actor,script,scene,resolution,utm_campaign\n"
    "a,maya,Fresh coffee every morning.,a sunny kitchen,480p,spring\n"
    "b,maya,Fresh coffee every morning.,a sunny kitchen,720p,spring\n"  # shares variant and speech
    "c,leo,=1+2 is not a formula here.,,480p,=HYPERLINK(1)\n"
)


def counts(rt: Runtime) -> dict[str, int]:
    with rt.session() as s:
        rows = s.execute(sa.select(StageRun.stage, sa.func.count()).group_by(StageRun.stage)).all()
    return {str(stage): int(n) for stage, n in rows}


def test_a_campaign_runs_shares_stages_resumes_and_writes_a_manifest(
    rt: Runtime, tmp_path: Path, prefect_server: None
) -> None:
    from flows.run_campaign import run_campaign

    ensure_sample_actors(rt)
    sheet = write(tmp_path, SHEET)
    result = run_campaign(sheet=str(sheet), name="Spring promo")
    assert (result.succeeded, result.failed, result.skipped, result.rows) == (3, 0, 0, 3), result.results
    # a and b share one scene variant and one speech; the lip-syncs differ (resolution)
    assert counts(rt) == {"scene_variant": 1, "speech": 2, "lipsync": 3, "timing": 2}
    assert result.warnings  # the formula-like cells were flagged
    with rt.session() as s:
        videos = {v.row_id: v for v in s.scalars(sa.select(Video).where(Video.campaign_id.is_not(None)))}
    assert videos["a"].video_key == "campaigns/spring-promo/a_maya_a-sunny-kitchen_480p.mp4"
    assert videos["c"].video_key == "campaigns/spring-promo/c_leo_portrait_480p.mp4"
    assert videos["a"].extra == {"utm_campaign": "spring"}
    assert all(rt.storage.exists(v.video_key or "") for v in videos.values())

    assert result.manifest_path is not None
    with open(result.manifest_path, encoding="utf-8", newline="") as fh:
        manifest = list(csv.DictReader(fh))
    assert [m["row_id"] for m in manifest] == ["a", "b", "c"]
    assert manifest[0]["utm_campaign"] == "spring"
    assert manifest[2]["utm_campaign"] == "'=HYPERLINK(1)"  # escaped: a spreadsheet shows it as text
    assert manifest[2]["script"] == "'=1+2 is not a formula here."
    assert all(m["status"] == "succeeded" and m["video_url"] for m in manifest)

    before = counts(rt)
    again = run_campaign(sheet=str(sheet), name="Spring promo")
    assert again.resumed
    assert (again.succeeded, again.cost_usd) == (3, 0)
    assert counts(rt) == before
    with rt.session() as s:
        assert s.scalar(sa.select(sa.func.count()).select_from(Campaign)) == 1


def test_a_sheet_pasted_into_the_form_runs_and_pasting_it_again_resumes(
    rt: Runtime, prefect_server: None
) -> None:
    """What an analyst does in the Prefect UI: the cells copied from a spreadsheet (tab-separated)
    pasted into run-campaign's Sheet field."""
    from flows.run_campaign import run_campaign

    ensure_sample_actors(rt)
    pasted = "row_id\tactor\tscript\tutm_source\nx\tleo\tPasted, not uploaded.\ttiktok\n"
    result = run_campaign(sheet=pasted)
    assert result.name.startswith("pasted-")
    assert (result.succeeded, result.rows) == (1, 1), result.results
    assert result.results[0].video_url
    before = counts(rt)
    again = run_campaign(sheet=pasted)
    assert again.resumed
    assert (again.name, again.succeeded, again.cost_usd) == (result.name, 1, 0)
    assert counts(rt) == before
    with rt.session() as s:
        (video,) = s.scalars(sa.select(Video).where(Video.campaign_id.is_not(None)))
    assert video.script == "Pasted, not uploaded."
    assert video.extra == {"utm_source": "tiktok"}


def test_a_sheet_with_errors_is_refused_whole_and_nothing_is_written(
    rt: Runtime, tmp_path: Path, prefect_server: None
) -> None:
    from flows.run_campaign import run_campaign

    ensure_sample_actors(rt)
    sheet = write(tmp_path, "actor,script\nmaya,Fine.\nnobody,Hi.\nleo,\n")
    with pytest.raises(SheetInvalid) as refused:
        run_campaign(sheet=str(sheet))
    text = str(refused.value)
    assert "row 3, column actor: unknown actor 'nobody'" in text
    # For the Prefect UI: the run fails with one readable line, every problem in a table artifact.
    state = run_campaign(sheet=str(sheet), name="refused", return_state=True)
    assert state.is_failed()
    assert state.message.startswith(f"{sheet.name}: 2 error(s), nothing was run: row 3, column actor")
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        (artifact,) = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["campaign-refused-problems"]))
        )
    assert artifact.type == "table"
    assert "unknown actor 'nobody'" in str(artifact.data)
    assert "row 4, column script: give a script or an audio file" in text
    with rt.session() as s:
        assert s.scalar(sa.select(sa.func.count()).select_from(Campaign)) == 0
        assert s.scalar(sa.select(sa.func.count()).select_from(StageRun)) == 0

    partial = run_campaign(sheet=str(sheet), skip_invalid=True)
    assert (partial.succeeded, partial.skipped) == (1, 2)
    reasons = {r.row: r.error for r in partial.results if r.status == "skipped"}
    assert set(reasons) == {3, 4}
    assert "unknown actor 'nobody'" in (reasons[3] or "")


@pytest.fixture
def paid_rt(data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Runtime:
    """fal image + speech and WaveSpeed lip-sync, on the in-process fakes."""
    monkeypatch.setenv("CASTFLOW_PROVIDERS__FAKES", "true")
    monkeypatch.setenv("CASTFLOW_PROVIDERS__IMAGE", "fal")
    monkeypatch.setenv("CASTFLOW_PROVIDERS__LIPSYNC", "wavespeed")
    monkeypatch.setenv(
        "CASTFLOW_CAMPAIGN__PROVIDER_LIMITS", '{"fal": 4, "wavespeed": 4, "local": 2, "upload": 4}'
    )
    reset_settings()
    rt = get_runtime()
    ensure_sample_actors(rt)
    voice = Voice(provider="fal", model="fal-ai/elevenlabs/tts/multilingual-v2", voice_id="Aria")
    import_actors(
        rt, [ActorSpec(key="nia", name="Nia", portrait="drawn:ava", voice=voice)], base_dir=Path.cwd()
    )
    return rt


def test_dry_run_estimates_without_calling_paid_apis_and_the_budget_caps_spend(
    paid_rt: Runtime, tmp_path: Path, prefect_server: None
) -> None:
    from flows.run_campaign import run_campaign

    lines = ["row_id,actor,script,scene"] + [
        f"r{i},nia,Offer number {i} ends tonight.,a shop {i}" for i in range(6)
    ]
    sheet = write(tmp_path, "\n".join(lines) + "\n", "budget.csv")
    fal, ws = running_fakes()["fal"], running_fakes()["wavespeed"]
    before = (fal.calls["submit"], ws.calls["submit"])
    dry = run_campaign(sheet=str(sheet), dry_run=True)
    assert (fal.calls["submit"], ws.calls["submit"]) == before  # no paid call
    per_row = dry.estimates[0]
    assert per_row.image_usd == pytest.approx(0.039)
    assert per_row.speech_usd == pytest.approx(0.10 * len("Offer number 0 ends tonight.") / 1000)
    assert per_row.lipsync_usd == pytest.approx(5 * 0.03)  # ~2.4 s of speech: the 5 s minimum
    assert dry.estimate_usd == pytest.approx(sum(e.total_usd for e in dry.estimates))
    # Here the real providers play every role: both figures are one.
    assert dry.estimate_real_usd == pytest.approx(dry.estimate_usd)

    budget = 2.5 * per_row.total_usd  # room for two rows, not three
    run = run_campaign(sheet=str(sheet), budget_usd=budget, row_concurrency=2)
    assert run.cost_usd <= budget
    assert run.succeeded == 2
    assert run.skipped == 4
    assert all((r.error or "").startswith("budget") for r in run.results if r.status == "skipped")
    assert run.cost_usd == pytest.approx(2 * per_row.total_usd)


def test_dry_run_counts_a_stage_shared_by_rows_once(
    paid_rt: Runtime, tmp_path: Path, prefect_server: None
) -> None:
    from flows.run_campaign import run_campaign

    sheet = write(
        tmp_path,
        "row_id,actor,script,scene,resolution\n"
        "a,nia,Same words.,same place,480p\n"
        "b,nia,Same words.,same place,720p\n"  # shares the variant and the speech, not the lip-sync
        "c,nia,Same words.,same place,480p\n",  # shares everything with a
        "shared.csv",
    )
    a, b, c = run_campaign(sheet=str(sheet), dry_run=True).estimates
    assert a.image_usd > 0
    assert a.speech_usd > 0
    assert (b.image_usd, b.speech_usd, b.reused_stages) == (0, 0, 3)  # variant, speech, their timing
    assert b.lipsync_usd == pytest.approx(2 * a.lipsync_usd)  # 720p costs twice 480p
    assert (c.total_usd, c.reused_stages) == (0, 4)


def test_sheet_text_in_the_artifacts_stays_text() -> None:
    """A cell of the sheet cannot make a link, an image or a tag in the Prefect UI's markdown."""
    from flows.run_campaign import _cell

    shown = _cell("[Claim refund](javascript:alert(1)) ![x](https://t.example/p.png) <b>|</b> A&B", 200)
    for raw in ("[", "]", "(", ")", "!", "<", ">", "|"):
        assert raw not in shown
    assert "&#91;Claim refund&#93;" in shown
    assert "A&#38;B" in shown
    assert _cell("word " * 100, 40).endswith("…")
    assert len(_cell("word " * 100, 40)) == 40
