"""Preview, approve, then render: the preview pays for the scenes and the voices only (its lip-sync is the
free local one), the review page plays every take, and the render of the approved rows reuses every paid
preview stage; counted by the provider fakes' own call logs. The approval form path runs under a real
Prefect server: the run pauses on the form and renders what the form approved."""

from __future__ import annotations

import csv
import io
import shutil
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from castflow.cli import app
from castflow.db.tables import Approval
from castflow.fakes import running_fakes
from castflow.runtime import Runtime

pytestmark = pytest.mark.flow

MATRIX = """
campaign: trial
hooks: [{id: h1, text: "Okay, real talk."}, {id: h2, text: "Stop scrolling."}]
bodies: [{id: b1, text: "Fresh coffee every morning."}]
actors: [nia]
scenes: [{id: kitchen, prompt: a sunny kitchen}, {id: beach, prompt: a beach at noon}]
"""  # 2 hooks x 2 scenes: 4 rows, 2 scene edits, 2 speeches


@pytest.fixture
def paid_rt(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Runtime:
    """The fakes' runtime, asking Prefect every second whether a paused run was resumed."""
    monkeypatch.setenv("CASTFLOW_CAMPAIGN__APPROVAL_POLL_S", "1")
    rt: Runtime = request.getfixturevalue("fakes_rt")  # built after the setting
    return rt


def calls() -> dict[str, int]:
    fakes = running_fakes()
    return {"fal": fakes["fal"].calls["submit"], "wavespeed": fakes["wavespeed"].calls["submit"]}


def since(before: dict[str, int]) -> dict[str, int]:
    now = calls()
    return {k: now[k] - before[k] for k in now}


def test_preview_then_approve_then_render_pays_each_stage_once(
    paid_rt: Runtime, tmp_path: Path, prefect_server: None
) -> None:
    path = tmp_path / "matrix.yaml"
    path.write_text(textwrap.dedent(MATRIX), encoding="utf-8")
    runner = CliRunner()
    start = calls()
    shown = runner.invoke(app, ["campaign", "preview", str(path)])
    assert shown.exit_code == 0, shown.output
    assert "trial-preview: 4 previewed, 0 failed, 0 skipped" in shown.output
    assert since(start) == {"fal": 2 + 2, "wavespeed": 0}  # 2 scenes + 2 speeches; no paid lip-sync
    page = (paid_rt.settings.data_dir / "reviews" / "trial" / "review.html").read_text()
    assert page.count("<video controls") == 4
    assert page.count('src="data:video/mp4;base64,') == 4  # self-contained: the takes are inside
    assert "Download approvals.csv" in page
    assert "trial_h1_b1_nia_kitchen" in page  # each take's name and axes
    assert "$0.150" in page  # its full render: the lip-sync left (WaveSpeed's 5 s minimum at $0.03/s)
    assert paid_rt.storage.exists("campaigns/trial-preview/review.html")

    with paid_rt.session() as s:
        ids = sorted(s.scalars(sa.text("select row_id from video where row_id is not null")).all())
    ids = sorted(set(ids))
    assert len(ids) == 4
    approvals = tmp_path / "approvals.csv"
    review_in_a_browser(paid_rt.settings.data_dir / "reviews" / "trial" / "review.html", ids, approvals)
    done = runner.invoke(app, ["campaign", "approve", "trial", "--file", str(approvals)])
    assert done.exit_code == 0, done.output
    done = runner.invoke(app, ["campaign", "approve", "trial", "--rows", ids[2]])
    assert "trial: 2 approved, 1 rejected, 1 undecided" in done.output
    bad = runner.invoke(app, ["campaign", "approve", "trial", "--rows", "v0000000000"])
    assert bad.exit_code != 0
    assert "'v0000000000' is not a row of campaign trial" in bad.output

    before = calls()
    made = runner.invoke(app, ["campaign", "run", str(path), "--approved-only"])
    assert made.exit_code == 0, made.output
    assert "trial: 2 succeeded, 0 failed, 2 skipped (2 not approved); spent $0.30\n" in made.output
    assert since(before) == {"fal": 0, "wavespeed": 2}  # no scene or voice again; a lip-sync per approval
    with paid_rt.session() as s:
        rendered = s.execute(
            sa.text(
                "select v.row_id, v.status from video v join campaign c on c.id = v.campaign_id "
                "where c.name = 'trial' order by v.row_id"
            )
        ).all()
        reasons = dict(s.execute(sa.select(Approval.row_id, Approval.reason)).all())
    assert [(r, str(st)) for r, st in rendered] == [(ids[0], "succeeded"), (ids[2], "succeeded")]
    assert reasons[ids[1]] == "too dark"
    again = calls()
    runner.invoke(app, ["campaign", "run", str(path), "--approved-only"])
    assert since(again) == {"fal": 0, "wavespeed": 0}


def test_the_approval_form_pauses_the_run_and_renders_what_it_approved(
    paid_rt: Runtime, tmp_path: Path, prefect_server: None
) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterState, FlowRunFilterStateType
    from prefect.client.schemas.objects import StateType
    from prefect.flow_runs import resume_flow_run

    from flows.run_campaign import run_campaign

    path = tmp_path / "matrix.yaml"
    path.write_text(textwrap.dedent(MATRIX).replace("trial", "asked"), encoding="utf-8")
    start = calls()
    out: dict[str, Any] = {}

    def run() -> None:
        try:
            out["result"] = run_campaign(sheet=str(path), approval=True)
        except BaseException as exc:  # the assertion below shows it
            out["error"] = exc

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    paused = None
    deadline = time.monotonic() + 240
    with get_client(sync_client=True) as client:
        while paused is None and time.monotonic() < deadline and worker.is_alive():
            found = client.read_flow_runs(
                flow_run_filter=FlowRunFilter(
                    state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.PAUSED]))
                )
            )
            paused = found[0] if found else None
            time.sleep(0.5)
        assert paused is not None, out
        assert since(start) == {"fal": 4, "wavespeed": 0}  # previews made, nothing rendered yet
        assert paused.state is not None
        assert paused.state.name == "Paused"
        keyed = client.read_artifacts()
        assert any(a.key == "campaign-asked-review" for a in keyed)  # the review page, linked in the UI
    resume_flow_run(paused.id, run_input={"row_0": True, "row_3": True})
    worker.join(timeout=240)
    assert not worker.is_alive()
    assert "error" not in out, out.get("error")
    result = out["result"]
    assert (result.succeeded, result.skipped, result.not_approved) == (2, 2, 2)
    assert since(start) == {"fal": 4, "wavespeed": 2}  # the two approved rows' lip-sync, nothing more
    with paid_rt.session() as s:
        decided = dict(s.execute(sa.select(Approval.row_id, Approval.decision)).all())
    assert sorted(decided.values()) == ["approved", "approved", "rejected", "rejected"]
    manifest = list(csv.DictReader(io.StringIO(Path(result.manifest_path).read_text())))
    assert sorted(r["status"] for r in manifest if r["format"] == "source") == [
        "pending", "pending", "succeeded", "succeeded"
    ]  # fmt: skip


def review_in_a_browser(page_path: Path, ids: list[str], dest: Path) -> None:
    """The review page in headless Chromium: every player loads its take; approve the first take, reject
    the second with a reason, download the approvals (written to ``dest``). Without Chromium (CI
    installs it), the file is written as the page writes it."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        dest.write_text(f"row_id,decision,reason\n{ids[0]},approved,\n{ids[1]},rejected,too dark\n")
        return
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(accept_downloads=True)
        page.goto(page_path.as_uri(), wait_until="load")
        durations = page.evaluate(
            """() => Promise.all([...document.querySelectorAll('video')].map(v => new Promise(done => {
                if (v.readyState >= 1) return done(v.duration);
                v.addEventListener('loadedmetadata', () => done(v.duration), {once: true});
                v.addEventListener('error', () => done(-1), {once: true});
                v.load();
            })))"""
        )
        assert len(durations) == 4
        assert all(d > 0.5 for d in durations), durations  # every take plays
        page.check(f'input[name="d-{ids[0]}"][value="approved"]')
        page.check(f'input[name="d-{ids[1]}"][value="rejected"]')
        page.fill(f"#w-{ids[1]}", "too dark")
        assert page.inner_text("#count") == "1 approved, 1 rejected, 2 undecided"
        with page.expect_download() as got:
            page.get_by_role("button", name="Download approvals.csv").click()
        assert got.value.suggested_filename == "approvals.csv"
        got.value.save_as(dest)
        browser.close()
    header, *lines = dest.read_text().splitlines()
    assert header == "row_id,decision,reason"
    assert sorted(lines) == sorted([f"{ids[0]},approved,", f"{ids[1]},rejected,too dark"])  # in sheet order
