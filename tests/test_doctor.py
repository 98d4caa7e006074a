"""``castflow doctor``: configuration checks against the loopback fakes, never printing secrets."""

from __future__ import annotations

from pathlib import Path

import pytest

from castflow.doctor import run_checks
from castflow.providers.fal import fake as fal_fake
from castflow.providers.wavespeed import fake as ws_fake
from castflow.settings import Settings


def settings_for(tmp: Path, fal: str, ws: str, fal_key: str, ws_key: str) -> Settings:
    return Settings(
        data_dir=tmp,
        providers={"image": "fal", "lipsync": "wavespeed"},
        fal={"queue_url": fal, "rest_url": fal, "cdn_url": fal, "key": fal_key},
        wavespeed={"base_url": ws, "key": ws_key},
    )  # type: ignore[arg-type]


def test_all_checks_pass_on_a_good_configuration(
    provider_fakes: tuple[fal_fake.FakeFal, ws_fake.FakeWaveSpeed], tmp_path: Path
) -> None:
    fal, ws = provider_fakes
    checks = run_checks(settings_for(tmp_path, fal.url, ws.url, fal_fake.VALID_KEY, ws_fake.VALID_KEY))
    levels = {c.name: c.level for c in checks}
    # Prefect's check depends on whether this session's test server runs yet (its own test below).
    assert levels.pop("prefect") in ("ok", "warn")
    assert levels == {
        "database": "ok",
        "storage": "ok",
        "fal": "ok",
        "wavespeed": "ok",
        "webhooks": "ok",
    }
    assert "balance 100.0" in next(c.detail for c in checks if c.name == "wavespeed")


def test_refused_keys_and_dead_hosts_fail_without_showing_the_keys(
    provider_fakes: tuple[fal_fake.FakeFal, ws_fake.FakeWaveSpeed], tmp_path: Path
) -> None:
    fal, _ws = provider_fakes
    fal_secret, ws_secret = "nobody:sekrit-fal-value", "sekrit-ws-value"
    checks = run_checks(settings_for(tmp_path, fal.url, "http://127.0.0.1:9", fal_secret, ws_secret))
    by_name = {c.name: c for c in checks}
    assert by_name["fal"].level == "fail"
    assert "refused" in by_name["fal"].detail
    assert by_name["wavespeed"].level == "fail"
    assert "unreachable" in by_name["wavespeed"].detail
    text = repr(checks)
    assert "sekrit" not in text


def test_missing_wavespeed_key_for_the_lipsync_role_is_a_failure(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, providers={"fakes": True, "lipsync": "wavespeed"})  # type: ignore[arg-type]
    settings.providers.fakes = False  # as if the key had been removed after start-up
    checks = {c.name: c for c in run_checks(settings)}
    assert checks["wavespeed"].level == "fail"
    assert checks["fal"].level == "ok"


def test_doctor_command_on_fakes_and_on_a_refused_key(
    data_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    provider_fakes: tuple[fal_fake.FakeFal, ws_fake.FakeWaveSpeed],
) -> None:
    from typer.testing import CliRunner

    from castflow.cli import app
    from castflow.settings import reset_settings

    monkeypatch.setenv("CASTFLOW_PROVIDERS__FAKES", "true")
    monkeypatch.setenv("CASTFLOW_STORAGE__BACKEND", "supabase")
    reset_settings()
    ok = CliRunner().invoke(app, ["doctor"])
    assert ok.exit_code == 0, ok.stdout
    assert "ok    storage" in ok.stdout
    assert "buckets" in ok.stdout

    _fal, ws = provider_fakes
    monkeypatch.setenv("CASTFLOW_PROVIDERS__FAKES", "false")
    monkeypatch.setenv("CASTFLOW_STORAGE__BACKEND", "local")
    monkeypatch.setenv("CASTFLOW_PROVIDERS__LIPSYNC", "wavespeed")
    monkeypatch.setenv("CASTFLOW_WAVESPEED__KEY", "sekrit-refused-key")
    monkeypatch.setenv("CASTFLOW_WAVESPEED__BASE_URL", ws.url)
    reset_settings()
    bad = CliRunner().invoke(app, ["doctor"])
    assert bad.exit_code == 1
    assert "FAIL  wavespeed" in bad.stdout
    assert "sekrit" not in bad.stdout + bad.stderr


@pytest.mark.usefixtures("prefect_server")
def test_the_prefect_api_is_checked_and_a_dead_one_fails(tmp_path: Path) -> None:
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from castflow.doctor import check_prefect

    live = check_prefect(Settings(data_dir=tmp_path))
    assert "(Prefect 3." in live.detail
    # The test server runs on a free port with the UI's API URL left at its default (port 4200): the
    # mismatch the README's team set-up warns about, and the fix.
    assert live.level == "warn", live.detail
    assert "the UI is set to call http://127.0.0.1:4200/api" in live.detail
    assert "PREFECT_UI_API_URL=http://127.0.0.1:" in live.detail
    with temporary_settings({PREFECT_API_URL: "http://127.0.0.1:9/api"}):
        (dead,) = [c for c in run_checks(Settings(data_dir=tmp_path)) if c.name == "prefect"]
    assert dead.level == "fail"
    assert "unreachable" in dead.detail
    assert "127.0.0.1:9" in dead.detail
