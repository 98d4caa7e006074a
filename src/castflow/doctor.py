"""``castflow doctor``: check the configuration without spending money or printing secrets.

Each check says what it looked at and what it found: keys present (never their values), hosts reachable
with the key accepted (free, authenticated calls), the database migrated, storage writable and its
buckets present, webhook settings complete.
"""

from __future__ import annotations

import functools
import tempfile
from collections.abc import Callable

import httpx
import sqlalchemy as sa

from castflow.checks import Check
from castflow.db import migrate
from castflow.db.session import get_engine
from castflow.providers.vendors import vendors
from castflow.settings import Settings


def _guard(name: str, fn: Callable[[], Check]) -> Check:
    """Run one check; a crash becomes a failed check (connection errors name the host, never a key)."""
    try:
        return fn()
    except httpx.HTTPError as exc:
        # Only the type and the URL: an HTTP library's message may quote request headers (a key).
        try:
            where = f" ({exc.request.url.scheme}://{exc.request.url.netloc.decode()})"
        except RuntimeError:
            where = ""
        return Check(name, "fail", f"unreachable: {type(exc).__name__}{where}")
    except Exception as exc:
        return Check(name, "fail", f"{type(exc).__name__}: {exc}")


def check_database(settings: Settings) -> Check:
    engine = get_engine(settings.database_url, busy_timeout_ms=settings.database.busy_timeout_ms)
    with engine.connect() as conn:
        conn.execute(sa.text("SELECT 1"))
    where = engine.url.render_as_string(hide_password=True)
    if migrate.is_current(engine):
        return Check("database", "ok", f"{where} at schema {migrate.current_revision(engine)}")
    if settings.is_embedded_db:
        return Check("database", "ok", f"{where} (embedded; migrated automatically on first use)")
    return Check(
        "database",
        "fail",
        f"{where} is at {migrate.current_revision(engine) or 'nothing'}, needs "
        f"{migrate.head_revision()}: run `castflow db upgrade`",
    )


def check_storage(settings: Settings) -> Check:
    if settings.storage.backend == "local":
        root = settings.storage_root
        root.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=root, prefix=".doctor-"):
            pass
        return Check("storage", "ok", f"local folder {root} is writable")
    from castflow.storage import build_storage

    storage = build_storage(settings)
    try:
        problems = storage.check()  # type: ignore[attr-defined]
    finally:
        storage.close()  # type: ignore[attr-defined]
    if problems:
        return Check("storage", "fail", "; ".join(problems))
    sb = settings.storage.supabase
    buckets = ", ".join(sorted({sb.audio_bucket, sb.video_bucket, sb.image_bucket, sb.other_bucket}))
    return Check("storage", "ok", f"supabase {sb.url}: buckets {buckets} present ({sb.url_mode} URLs)")


def check_webhooks(settings: Settings) -> Check:
    hooks = settings.webhooks
    if not hooks.public_url:
        return Check("webhooks", "ok", "off (no public URL): completion by polling")
    problems = []
    if not hooks.public_url.startswith("https://"):
        problems.append("public_url should be https:// (providers deliver to public HTTPS endpoints)")
    for vendor in vendors():
        problems += vendor.webhook_problems(settings)
    if problems:
        return Check("webhooks", "warn", "; ".join(problems))
    paths = ",".join(v.NAME for v in vendors())
    return Check("webhooks", "ok", f"deliveries to {hooks.public_url}/webhooks/{{{paths}}}")


def check_prefect(_settings: Settings) -> Check:
    """The Prefect API this machine's flow runs and `castflow serve` use: reachable, its version, and
    whether the UI points at the same API (on any port but 4200 it may not)."""
    from prefect.settings import get_current_settings

    prefect = get_current_settings()
    url = prefect.api.url
    if not url:
        return Check(
            "prefect", "ok", "no PREFECT_API_URL: each command runs a temporary server (set it to serve "
            "deployments and use the UI)"
        )  # fmt: skip
    base = url.rstrip("/")
    with httpx.Client(timeout=10) as client:
        health = client.get(f"{base}/health")
        if health.status_code != 200:
            return Check("prefect", "fail", f"{base}: /health answered HTTP {health.status_code}")
        version = client.get(f"{base}/admin/version")
        found = version.json() if version.status_code == 200 else "unknown version"
        # What the server tells its UI to call (PREFECT_UI_API_URL, default port 4200).
        ui = client.get(f"{base.removesuffix('/api')}/ui-settings")
        ui_api = str(ui.json().get("api_url") or "") if ui.status_code == 200 else ""
    if ui_api and ui_api.rstrip("/") != base:
        return Check(
            "prefect", "warn", f"{base} (Prefect {found}); but the UI is set to call {ui_api}: "
            f"start the server with PREFECT_UI_API_URL={base}"
        )  # fmt: skip
    return Check("prefect", "ok", f"{base} (Prefect {found})")


def run_checks(settings: Settings) -> list[Check]:
    """Every check, in a fixed order; none raises."""
    if settings.providers.fakes:
        from castflow.fakes import serve_fakes

        settings = serve_fakes(settings)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    checks: list[tuple[str, Callable[[Settings], Check]]] = [
        ("database", check_database),
        ("storage", check_storage),
        *((v.NAME, v.check) for v in vendors()),
        ("webhooks", check_webhooks),
        ("prefect", check_prefect),
    ]
    return [_guard(name, functools.partial(fn, settings)) for name, fn in checks]
