"""``castflow doctor``: check the configuration without spending money or printing secrets.

Each check says what it looked at and what it found: keys present (never their values), hosts reachable
with the key accepted (free, authenticated calls), the database migrated, storage writable and its
buckets present, webhook settings complete.
"""

from __future__ import annotations

import functools
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import httpx
import sqlalchemy as sa

from castflow.db import migrate
from castflow.db.session import get_engine
from castflow.settings import Settings

Level = Literal["ok", "warn", "fail"]


@dataclass(frozen=True)
class Check:
    name: str
    level: Level
    detail: str


def _http(
    method: str, url: str, *, headers: dict[str, str], json: object = None, timeout: float = 10.0
) -> httpx.Response:
    with httpx.Client(timeout=timeout) as client:
        return client.request(method, url, headers=headers, json=json)


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


def check_fal(settings: Settings) -> Check:
    key = settings.providers.fal_key
    if key is None:
        return Check("fal", "ok", "not configured (no key); scene variants and speech stay embedded")
    resp = _http(
        "POST",
        f"{settings.fal.rest_url.rstrip('/')}/storage/auth/token?storage_type=fal-cdn-v3",
        headers={"Authorization": f"Key {key.get_secret_value()}"},
        json={},
    )
    if resp.status_code in (401, 403):
        return Check(
            "fal", "fail", f"key set but refused by {settings.fal.rest_url} (HTTP {resp.status_code})"
        )
    if not resp.is_success:
        return Check("fal", "fail", f"{settings.fal.rest_url} answered HTTP {resp.status_code}")
    return Check(
        "fal", "ok", f"key accepted by {settings.fal.rest_url}; image role: {settings.providers.image}"
    )


def check_wavespeed(settings: Settings) -> Check:
    key = settings.providers.wavespeed_key
    if key is None:
        level: Level = "fail" if settings.providers.lipsync == "wavespeed" else "ok"
        return Check("wavespeed", level, "no key; lip-sync stays embedded")
    base = settings.wavespeed.base_url.rstrip("/")
    resp = _http(
        "GET", f"{base}/api/v3/balance", headers={"Authorization": f"Bearer {key.get_secret_value()}"}
    )
    if resp.status_code == 401:
        return Check(
            "wavespeed",
            "fail",
            "key set but refused (401); a key works only after the account's first top-up",
        )
    if not resp.is_success:
        return Check("wavespeed", "fail", f"{base} answered HTTP {resp.status_code}")
    balance = (resp.json().get("data") or {}).get("balance")
    return Check("wavespeed", "ok", f"key accepted by {base}; balance {balance}")


def check_webhooks(settings: Settings) -> Check:
    hooks = settings.webhooks
    if not hooks.public_url:
        return Check("webhooks", "ok", "off (no public URL): completion by polling")
    problems = []
    if not hooks.public_url.startswith("https://"):
        problems.append("public_url should be https:// (providers deliver to public HTTPS endpoints)")
    if settings.providers.wavespeed_key is not None and hooks.wavespeed_secret is None:
        problems.append(
            "CASTFLOW_WEBHOOKS__WAVESPEED_SECRET is not set (WaveSpeed deliveries would be refused)"
        )
    resp = _http("GET", hooks.fal_jwks_url, headers={})
    if not resp.is_success or not resp.json().get("keys"):
        problems.append(f"fal JWKS {hooks.fal_jwks_url} answered HTTP {resp.status_code} without keys")
    if problems:
        return Check("webhooks", "warn", "; ".join(problems))
    return Check("webhooks", "ok", f"deliveries to {hooks.public_url}/webhooks/{{fal,wavespeed}}")


def run_checks(settings: Settings) -> list[Check]:
    """Every check, in a fixed order; none raises."""
    if settings.providers.fakes:
        from castflow.fakes import serve_fakes

        settings = serve_fakes(settings)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    checks = [
        ("database", check_database),
        ("storage", check_storage),
        ("fal", check_fal),
        ("wavespeed", check_wavespeed),
        ("webhooks", check_webhooks),
    ]
    return [_guard(name, functools.partial(fn, settings)) for name, fn in checks]
