"""End to end, as a team runs castflow: a real Prefect server on loopback, `castflow serve`, runs
triggered through the REST API, `prefect deployment run` and `run_deployment()`, results checked in
castflow's database and as artifacts through the API, the UI's page of a finished run rendered in
headless Chromium (screenshot kept under test-artifacts/), and everything shut down in bounded time."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from pool_harness import free_port, wait_for  # noqa: E402 - the harness of the scale-out test and bench

ARTIFACTS = Path(os.environ.get("CASTFLOW_TEST_ARTIFACTS", ROOT / "test-artifacts"))
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGINT, timeout: float = 30) -> float:
    """Stop a process and its children; returns how long it took (killed after ``timeout``)."""
    started = time.monotonic()
    if proc.poll() is None:
        os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
    return time.monotonic() - started


@pytest.fixture(scope="module")
def team(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A Prefect server and `castflow serve`, sharing a data dir with the test."""
    work = tmp_path_factory.mktemp("e2e")
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    base_env = {k: v for k, v in os.environ.items() if not k.startswith(("CASTFLOW_", "PREFECT_"))}
    prefect_env = {
        **base_env,
        "PREFECT_HOME": str(work / "prefect-server"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_LOGGING_LEVEL": "WARNING",
        "PREFECT_UI_API_URL": api,
    }
    server_log = open(work / "server.log", "wb")  # noqa: SIM115 - closed below
    server = subprocess.Popen(
        [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=prefect_env,
        stdout=server_log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    castflow_env = {
        **base_env,
        "PREFECT_API_URL": api,
        "PREFECT_HOME": str(work / "prefect-client"),
        "PREFECT_LOGGING_LEVEL": "WARNING",
        "CASTFLOW_DATA_DIR": str(work / "data"),
        # Provider slots shared by all workers through Prefect global concurrency limits.
        "CASTFLOW_CAMPAIGN__GLOBAL_LIMIT_PREFIX": "castflow-",
        "CASTFLOW_CAMPAIGN__GLOBAL_LIMITS": '["local", "upload"]',  # the embedded renderers, shared too
    }
    serve_proc = None
    serve_log = open(work / "serve.log", "wb")  # noqa: SIM115 - closed below
    try:
        wait_for(lambda: httpx.get(f"{api}/health", timeout=5).status_code == 200, 180, "the Prefect server")
        for provider, limit in (("local", 2), ("upload", 4)):
            httpx.post(
                f"{api}/v2/concurrency_limits/",
                json={"name": f"castflow-{provider}", "limit": limit},
                timeout=10,
            ).raise_for_status()
        subprocess.run(
            [sys.executable, "-m", "castflow", "actors", "samples"], env=castflow_env, check=True, timeout=120
        )
        storage_port = free_port()
        serve_proc = subprocess.Popen(
            [sys.executable, "-m", "castflow", "serve", "--storage-port", str(storage_port)],
            env=castflow_env,
            stdout=serve_log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=work,
        )

        def deployments() -> list[str] | None:
            found = httpx.post(f"{api}/deployments/filter", json={}, timeout=10).json()
            names = sorted(d["name"] for d in found)
            return names if len(names) == 6 else None

        wait_for(deployments, 180, "castflow serve to register its deployments")
        yield {
            "api": api,
            "ui": f"http://127.0.0.1:{port}",
            "work": work,
            "env": castflow_env,
            "storage": f"http://127.0.0.1:{storage_port}",
        }
    finally:
        timings = {}
        if serve_proc is not None:
            timings["serve"] = stop(serve_proc)
        timings["server"] = stop(server)
        server_log.close()
        serve_log.close()
        assert all(t < 40 for t in timings.values()), timings


def create_run(api: str, flow: str, deployment: str, parameters: dict[str, Any]) -> str:
    """Trigger a deployment as another service would: POST create_flow_run, retrying the 503 that
    Prefect's server answers while its (SQLite) database is busy, as Prefect's own client does."""
    dep = httpx.get(f"{api}/deployments/name/{flow}/{deployment}", timeout=10).json()
    for attempt in range(6):
        resp = httpx.post(
            f"{api}/deployments/{dep['id']}/create_flow_run", json={"parameters": parameters}, timeout=30
        )
        if resp.status_code not in (429, 502, 503, 504):
            break
        time.sleep(2**attempt)
    resp.raise_for_status()
    return str(resp.json()["id"])


def finished(api: str, run_id: str, timeout: float = 300) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        run = httpx.get(f"{api}/flow_runs/{run_id}", timeout=10).json()
        return run if run["state"]["type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED") else None

    return dict(wait_for(done, timeout, f"flow run {run_id}"))


def test_deployments_forms_and_the_sweep_schedule(team: dict[str, Any]) -> None:
    api = team["api"]
    found = {d["name"]: d for d in httpx.post(f"{api}/deployments/filter", json={}, timeout=10).json()}
    assert set(found) == {
        "generate-video",
        "create-image-variant",
        "run-campaign",
        "campaign-chunk",
        "campaign-report",
        "sweep-inbox",
    }
    form = found["run-campaign"]["parameter_openapi_schema"]
    assert form["properties"]["sheet"]["title"] == "Sheet"  # flat: one labelled field per option
    assert "Paste the sheet here" in form["properties"]["sheet"]["description"]
    (schedule,) = found["sweep-inbox"]["schedules"]
    assert schedule["active"] is False


def test_generate_video_and_a_campaign_through_the_rest_api(team: dict[str, Any]) -> None:
    api, work = team["api"], team["work"]
    run_id = create_run(
        api,
        "generate-video",
        "generate-video",
        {"request": {"actor": "maya", "script": "Hello from the API."}},
    )
    body = "row_id,actor,script\na,leo,First row.\nb,ava,Second row.\n"
    (work / "data" / "sheets").mkdir(parents=True, exist_ok=True)
    (work / "data" / "sheets" / "e2e.csv").write_text(body, encoding="utf-8")
    (work / "outside.csv").write_text(body, encoding="utf-8")
    # A relative sheet starts at the first parameter root (<data dir>/sheets), not at serve's directory.
    campaign_id = create_run(api, "run-campaign", "run-campaign", {"sheet": "e2e.csv", "name": "e2e"})
    # A sheet pasted into the form (cells copied from a spreadsheet: tab-separated).
    pasted_id = create_run(
        api,
        "run-campaign",
        "run-campaign",
        {"sheet": "row_id\tactor\tscript\np\tmaya\tPasted in the form.\n"},
    )
    # An API caller cannot make the worker read a file it chooses (here: beside serve's directory).
    refused_id = create_run(
        api, "run-campaign", "run-campaign", {"sheet": str(work / "outside.csv"), "name": "x"}
    )
    for rid in (run_id, campaign_id, pasted_id):
        run = finished(api, rid)
        assert run["state"]["type"] == "COMPLETED", run["state"]
    refused = finished(api, refused_id)
    assert refused["state"]["type"] == "FAILED", refused["state"]
    assert "outside the folders a deployment's parameters may name" in refused["state"]["message"]

    engine = sa.create_engine(f"sqlite:///{work / 'data' / 'castflow.db'}")
    with engine.connect() as conn:
        statuses = dict(
            conn.execute(sa.text("SELECT coalesce(row_id, actor_key), status FROM video")).all()  # type: ignore[arg-type]
        )
    engine.dispose()
    assert statuses == {"maya": "succeeded", "a": "succeeded", "b": "succeeded", "p": "succeeded"}
    gcl = httpx.get(f"{api}/v2/concurrency_limits/castflow-local", timeout=10).json()
    assert gcl["active_slots"] == 0  # every provider job gave its shared slot back
    events = httpx.post(
        f"{api}/events/filter",
        json={"filter": {"event": {"prefix": ["prefect.concurrency-limit.acquired"]}}, "limit": 50},
        timeout=10,
    ).json()["events"]
    acquired = {
        r.get("prefect.resource.name") for e in events for r in [e["resource"], *e.get("related", [])]
    }
    assert "castflow-local" in acquired  # ... and took it through Prefect's global limit
    artifacts = httpx.post(
        f"{api}/artifacts/filter", json={"artifacts": {"key": {"like_": "campaign-e2e"}}}, timeout=10
    ).json()
    found = {a["key"]: a for a in artifacts}
    assert {
        "campaign-e2e-progress",
        "campaign-e2e-summary",
        "campaign-e2e-videos",
        "campaign-e2e-report",
        "campaign-e2e-gallery",
    } <= set(found)
    storage = team["storage"]
    report = found["campaign-e2e-report"]  # a link artifact (Prefect keeps it as markdown)
    assert f"({storage}/campaigns/e2e/report.html)" in report["data"]  # published beside the videos
    assert found["campaign-e2e-gallery"]["data"].count(f'src="{storage}/campaigns/e2e/thumbs/') == 2
    videos = found["campaign-e2e-videos"]
    assert videos["type"] == "table"
    assert "a_leo_portrait_480p.mp4" in str(videos["data"])  # each row's video, linked
    # Linked through the storage folder `castflow serve` serves: a browser opens them from the UI.
    assert f"({storage}/campaigns/e2e/a_leo_portrait_480p.mp4)" in found["campaign-e2e-summary"]["data"]
    video = httpx.get(f"{storage}/campaigns/e2e/a_leo_portrait_480p.mp4", timeout=10)
    assert video.status_code == 200
    assert video.content[4:8] == b"ftyp"  # an MP4
    assert httpx.get(f"{storage}/campaigns/e2e/", timeout=10).status_code == 404  # no folder listings
    team["finished_run"] = campaign_id


def test_prefect_cli_and_run_deployment_trigger_runs(team: dict[str, Any]) -> None:
    env = team["env"]
    done = subprocess.run(
        [
            sys.executable, "-m", "prefect", "deployment", "run", "create-image-variant/create-image-variant",
            "--param", "actor=leo", "--param", "prompt=on a rooftop at dusk", "--watch",
        ],
        env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    code = (
        "from prefect.deployments import run_deployment\n"
        "run = run_deployment('campaign-report/campaign-report', parameters={'campaign': 'e2e'}, timeout=300)\n"
        "print(run.state.type.value)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=330, check=False
    )
    assert out.stdout.strip().endswith("COMPLETED"), out.stdout[-2000:] + out.stderr[-2000:]
    assert (team["work"] / "data" / "reports" / "e2e" / "report.html").is_file()


def test_the_ui_page_of_a_finished_run_renders(team: dict[str, Any]) -> None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("Debian's chromium is not installed (.ci/run installs it)")
    run_id = team.get("finished_run")
    assert run_id, "the REST test runs first"
    url = f"{team['ui']}/runs/flow-run/{run_id}"
    profile = team["work"] / "chromium-profile"
    common = [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--virtual-time-budget=20000"]
    dom = subprocess.run(
        [*common, "--dump-dom", url], capture_output=True, text=True, timeout=120, check=False
    )
    run = httpx.get(f"{team['api']}/flow_runs/{run_id}", timeout=10).json()
    assert run["name"] in dom.stdout, dom.stderr[-2000:]
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "prefect-ui-flow-run.png"
    subprocess.run(
        [*common, "--window-size=1400,1000", f"--screenshot={shot}", url],
        capture_output=True, timeout=120, check=False,
    )  # fmt: skip
    assert shot.is_file()
    assert shot.stat().st_size > 20_000  # a rendered page, not a blank one


PASTED = "row_id\tactor\tscript\tscene\tutm_source\nu1\tmaya\tPasted into the form.\ta sunny kitchen\ttiktok\nu2\tleo\tStraight from a spreadsheet.\t\treels\n"


def test_an_analyst_pastes_a_sheet_into_the_form_and_opens_the_results(team: dict[str, Any]) -> None:
    """In the Prefect UI, as an analyst: run-campaign's form, the cells of a spreadsheet pasted into its
    Sheet field, Submit; then the run's artifacts: the gallery's pictures load, each links its video, and
    the report the run published plays every video (screenshots kept under test-artifacts/)."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("Debian's chromium is not installed (.ci/run installs it)")
    import re

    from playwright.sync_api import sync_playwright

    api, ui = team["api"], team["ui"]
    dep = httpx.get(f"{api}/deployments/name/run-campaign/run-campaign", timeout=10).json()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    run_name = f"ui-paste-{int(time.time())}"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(f"{ui}/deployments/deployment/{dep['id']}/run", wait_until="networkidle")

        def field(label: str) -> Any:
            title = re.compile("^" + re.escape(label) + r"( \(Optional\))?$")
            return page.locator(
                ".schema-form-property", has=page.locator(".schema-form-property__label", has_text=title)
            )

        page.locator(".p-label", has=page.locator("label", has_text="Run Name")).locator("input").fill(
            run_name
        )
        field("Sheet").locator("textarea").fill(PASTED)
        field("Campaign name").locator("textarea").fill("ui-paste")
        page.screenshot(path=str(ARTIFACTS / "run-campaign-form.png"), full_page=True)
        page.get_by_role("button", name="Submit").click()

        def started() -> list[dict[str, Any]] | None:
            found = httpx.post(
                f"{api}/flow_runs/filter", json={"flow_runs": {"name": {"any_": [run_name]}}}, timeout=10
            ).json()
            return found or None

        run = finished(api, started_run := wait_for(started, 60, "the run the form started")[0]["id"])
        assert run["state"]["type"] == "COMPLETED", run["state"]
        assert run["parameters"]["sheet"] == PASTED  # the text as pasted, tabs and all

        page.goto(f"{ui}/runs/flow-run/{started_run}", wait_until="networkidle")
        page.get_by_text("Artifacts", exact=True).first.click()
        page.wait_for_timeout(1500)
        page.screenshot(path=str(ARTIFACTS / "run-artifacts.png"), full_page=True)
        cards = {
            a.inner_text(): a.get_attribute("href") or ""
            for a in page.locator("a[href^='/artifacts/artifact/']").all()
        }
        gallery = next(href for text, href in cards.items() if "campaign-ui-paste-gal" in text)
        assert any("campaign-ui-paste-vid" in text for text in cards)  # the videos table
        assert any("campaign-ui-paste-rep" in text for text in cards)  # the report's link

        page.goto(f"{ui}{gallery}", wait_until="networkidle")
        page.wait_for_timeout(1500)
        page.screenshot(path=str(ARTIFACTS / "run-gallery.png"), full_page=True)
        widths = [img.evaluate("e => e.naturalWidth") for img in page.locator("img[alt^='u']").all()]
        assert len(widths) == 2
        assert all(w > 0 for w in widths), widths  # each picture loaded
        opens = [a.get_attribute("href") or "" for a in page.get_by_text("open the video").all()]
        assert len(opens) == 2
        for href in opens:  # each opens: the video, served by `castflow serve`
            assert href.startswith(team["storage"] + "/campaigns/ui-paste/")
            got = httpx.get(href, headers={"Range": "bytes=0-7"}, timeout=10)
            assert got.status_code == 206  # browsers seek with ranges
            assert got.content[4:8] == b"ftyp"

        # The report the run published beside the videos plays them, opened from storage.
        page.goto(team["storage"] + "/campaigns/ui-paste/report.html", wait_until="load")
        durations = page.evaluate(
            """() => Promise.all([...document.querySelectorAll('video')].map(v => new Promise(done => {
                v.addEventListener('loadedmetadata', () => done(v.duration), {once: true});
                v.addEventListener('error', () => done(-1), {once: true});
                v.preload = 'metadata'; v.load();
            })))"""
        )
        assert len(durations) == 2
        assert all(d > 0.5 for d in durations), durations
        assert "utm_source" in page.content()  # the sheet's own column on each tile
        page.screenshot(path=str(ARTIFACTS / "report-from-storage.png"), full_page=True)
        browser.close()


def test_a_run_that_asks_for_approval_shows_its_form_in_the_ui(team: dict[str, Any]) -> None:
    """run-campaign with approval on: the previews are made, the run pauses, and its page in the Prefect UI
    offers Resume with the approval form (each row, by id and actor); resumed with one row ticked, it
    renders that row only and leaves the other not approved."""
    api, work = team["api"], team["work"]
    sheet = "row_id\tactor\tscript\nok1\tmaya\tApprove this one.\nno1\tleo\tNot this one.\n"
    run_id = create_run(
        api, "run-campaign", "run-campaign", {"sheet": sheet, "name": "ask", "approval": True}
    )

    def paused() -> dict[str, Any] | None:
        run = httpx.get(f"{api}/flow_runs/{run_id}", timeout=10).json()
        assert run["state"]["type"] not in ("FAILED", "CRASHED", "COMPLETED"), run["state"]
        return run if run["state"]["type"] == "PAUSED" else None

    wait_for(paused, 300, "the run to pause for approval")
    artifacts = httpx.post(
        f"{api}/artifacts/filter", json={"artifacts": {"key": {"any_": ["campaign-ask-review"]}}}, timeout=10
    ).json()
    assert artifacts  # the review page, linked from the run
    assert "/campaigns/ask-preview/review.html" in artifacts[0]["data"]
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is not None:
        from playwright.sync_api import sync_playwright

        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu"])
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(f"{team['ui']}/runs/flow-run/{run_id}", wait_until="networkidle")
            page.get_by_role("button", name="Resume").first.click()
            page.get_by_text("Approve every row").first.wait_for(timeout=20_000)
            page.screenshot(path=str(ARTIFACTS / "approval-form.png"), full_page=True)
            form = page.content()
            assert "ok1 · maya" in form
            assert "no1 · leo" in form
            # As the analyst: tick ok1, Submit.
            row = page.locator(
                ".schema-form-property",
                has=page.locator(".schema-form-property__label", has_text="ok1 · maya"),
            )
            switch = row.get_by_role("switch").first
            switch.click()
            assert switch.get_attribute("aria-checked") == "true"
            page.screenshot(path=str(ARTIFACTS / "approval-ticked.png"), full_page=True)
            page.get_by_role("button", name="Submit").click()
            browser.close()
    else:  # no browser here: resumed as the UI's form does it
        httpx.post(
            f"{api}/flow_runs/{run_id}/resume", json={"run_input": {"row_0": True}}, timeout=30
        ).raise_for_status()
    run = finished(api, run_id)
    assert run["state"]["type"] == "COMPLETED", run["state"]
    engine = sa.create_engine(f"sqlite:///{work / 'data' / 'castflow.db'}")
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT c.name, v.row_id, v.status FROM video v JOIN campaign c ON c.id = v.campaign_id "
                "WHERE c.name LIKE 'ask%' ORDER BY c.name, v.row_id"
            )
        ).all()
        decided = dict(conn.execute(sa.text("SELECT row_id, decision FROM approval")).all())  # type: ignore[arg-type]
    engine.dispose()
    assert [tuple(r) for r in rows] == [
        ("ask", "ok1", "succeeded"),
        ("ask-preview", "no1", "succeeded"),
        ("ask-preview", "ok1", "succeeded"),
    ]
    assert decided == {"ok1": "approved", "no1": "rejected"}
