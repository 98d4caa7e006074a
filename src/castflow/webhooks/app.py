"""The webhook receiver: a small Starlette app behind ``castflow webhooks serve``.

``POST /webhooks/fal`` and ``POST /webhooks/wavespeed`` read the raw body once (capped), verify the
signature over those exact bytes, parse the JSON and record the completion; ``GET /healthz`` answers
``{"status": "ok"}``. Answers:

- 200 recorded; 202 authentic but not a completion (a queue-status callback), nothing recorded
- 400 malformed headers or body; 401 forged signature or stale/future timestamp
- 409 this delivery is already recorded (a replay); 413 body over the cap
- 503 cannot verify now (fal JWKS unreachable, WaveSpeed secret not configured, database down)

Rejected requests never touch the database. Logs name the provider, the job id and the reason, never
header values, bodies or secrets.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, NoReturn

import sqlalchemy as sa
from sqlalchemy.orm import Session
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from castflow.db import queries
from castflow.db.tables import WebhookProvider, WebhookStatus
from castflow.settings import WebhookSettings
from castflow.webhooks.jwks import JwksCache, JwksUnavailable
from castflow.webhooks.signing import (
    FAL_HEADERS,
    WS_HEADERS,
    WS_SECRET_PREFIX,
    SignatureMismatch,
    WebhookRejected,
    check_fal_headers,
    fal_delivery_id,
    verify_fal,
    verify_wavespeed,
)

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 1_000_000
FAL_PATH = "/webhooks/fal"
WAVESPEED_PATH = "/webhooks/wavespeed"

_JOB_ID = re.compile(r"[!-~]{1,200}")
# Statuses that are not completions (fal's undocumented queue callback; WaveSpeed's non-terminal states).
_FAL_PENDING = frozenset({"IN_QUEUE", "IN_PROGRESS"})
_WS_PENDING = frozenset({"created", "pending", "processing"})
_WS_FAILED = frozenset({"failed", "cancelled", "timeout", "deleted"})


@dataclass(frozen=True)
class Event:
    """A delivery normalised for the ``webhook_event`` table."""

    request_id: str
    status: WebhookStatus
    error: str | None
    payload: dict[str, Any] | None


def _reject(reason: str, status_code: int = 400) -> NoReturn:
    raise WebhookRejected(reason, status_code)


def _reject_constant(name: str) -> NoReturn:
    raise ValueError(f"JSON constant {name} is not allowed")


def parse_json_object(body: bytes) -> dict[str, Any]:
    """The body as a JSON object (NaN/Infinity refused: PostgreSQL's JSONB cannot store them)."""
    try:
        doc = json.loads(body, parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError):
        _reject("body is not valid JSON")
    if not isinstance(doc, dict):
        _reject("body is not a JSON object")
    return doc


def _job_id(doc: Mapping[str, Any], field: str) -> str:
    value = doc.get(field)
    if not isinstance(value, str) or not _JOB_ID.fullmatch(value):
        _reject(f"missing or malformed {field!r}")
    return value


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def parse_fal(doc: Mapping[str, Any]) -> Event | None:
    """fal's payload (spec §1.10): OK → completed, ERROR → failed; None for a queue-status callback."""
    request_id = _job_id(doc, "request_id")
    status = doc.get("status")
    if status in _FAL_PENDING:
        return None
    payload = doc.get("payload")
    if payload is not None and not isinstance(payload, dict):
        _reject("'payload' is not an object")
    if status == "OK":
        # payload null + payload_error: done, but the output must be fetched from the queue API.
        return Event(request_id, WebhookStatus.completed, _text(doc.get("payload_error")), payload)
    if status == "ERROR":
        error = _text(doc.get("error")) or "fal reported an error"
        return Event(request_id, WebhookStatus.failed, error, payload)
    _reject("unknown 'status'")


def parse_wavespeed(doc: Mapping[str, Any]) -> Event | None:
    """WaveSpeed's flat prediction (spec §4): completed, or failed-like; None while not terminal."""
    request_id = _job_id(doc, "id")
    status = doc.get("status")
    if status in _WS_PENDING:
        return None
    if status == "completed":
        return Event(request_id, WebhookStatus.completed, None, dict(doc))
    if status in _WS_FAILED:
        error = _text(doc.get("error")) or f"WaveSpeed task {status}"
        return Event(request_id, WebhookStatus.failed, error, dict(doc))
    _reject("unknown 'status'")


async def read_body(request: Request, limit: int) -> bytes:
    """The raw body, read once; 413 as soon as it exceeds ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            _reject("malformed Content-Length")
        if int(declared) > limit:
            _reject("body too large", 413)
    data = bytearray()
    async for chunk in request.stream():
        data += chunk
        if len(data) > limit:
            _reject("body too large", 413)
    return bytes(data)


def _single_headers(request: Request, names: tuple[str, ...]) -> dict[str, str]:
    """All headers, lower-cased; a signature header sent twice is ambiguous and refused."""
    for name in names:
        if len(request.headers.getlist(name)) > 1:
            _reject(f"duplicate header {name}")
    return dict(request.headers.items())


def _answer(provider: str, exc: WebhookRejected) -> Response:
    level = logging.ERROR if exc.status_code >= 500 else logging.WARNING
    log.log(level, "%s webhook rejected (%d): %s", provider, exc.status_code, exc.reason)
    return JSONResponse({"error": exc.reason}, status_code=exc.status_code)


class Receiver:
    """Verification and recording, shared by both routes (blocking: runs in Starlette's thread pool)."""

    def __init__(
        self, settings: WebhookSettings, engine: sa.Engine, jwks: JwksCache, clock: Callable[[], float]
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.jwks = jwks
        self.clock = clock

    def fal(self, headers: dict[str, str], body: bytes) -> Response:
        tolerance = self.settings.tolerance_s
        check_fal_headers(headers, now=self.clock(), tolerance_s=tolerance)
        try:
            keys = self.jwks.keys()
            try:
                verify_fal(headers, body, keys, now=self.clock(), tolerance_s=tolerance)
            except SignatureMismatch:
                fresh = self.jwks.refresh(keys)  # fal may have rotated its key
                if fresh is None:
                    raise
                verify_fal(headers, body, fresh, now=self.clock(), tolerance_s=tolerance)
        except JwksUnavailable as exc:
            raise WebhookRejected(f"cannot verify now: {exc}", 503) from exc
        event = parse_fal(parse_json_object(body))
        return self._record(WebhookProvider.fal, fal_delivery_id(headers, body), event)

    def wavespeed(self, headers: dict[str, str], body: bytes) -> Response:
        secret = self.settings.wavespeed_secret
        value = secret.get_secret_value() if secret is not None else ""
        if not value.removeprefix(WS_SECRET_PREFIX):
            log.error(
                "WaveSpeed webhook received but CASTFLOW_WEBHOOKS__WAVESPEED_SECRET is not set: answering 503"
            )
            raise WebhookRejected("WaveSpeed webhook secret not configured", 503)
        verify_wavespeed(headers, body, value, now=self.clock(), tolerance_s=self.settings.tolerance_s)
        event = parse_wavespeed(parse_json_object(body))
        return self._record(WebhookProvider.wavespeed, headers["webhook-id"], event)

    def _record(self, provider: WebhookProvider, delivery_id: str, event: Event | None) -> Response:
        if event is None:
            log.info("%s webhook: not a completion, ignored", provider.value)
            return JSONResponse({"ignored": "not a completion"}, status_code=202)
        try:
            with Session(self.engine) as session, session.begin():
                row = queries.record_webhook_event(
                    session,
                    provider=provider,
                    delivery_id=delivery_id,
                    request_id=event.request_id,
                    status=event.status,
                    error=event.error,
                    payload=event.payload,
                )
        except sa.exc.SQLAlchemyError as exc:
            # The message would carry the SQL parameters (the payload): log the type only.
            raise WebhookRejected(f"database unavailable ({type(exc).__name__})", 503) from exc
        if row is None:
            raise WebhookRejected("delivery already recorded", 409)
        log.info("%s webhook: %s %s", provider.value, event.request_id, event.status.value)
        return JSONResponse({"recorded": True, "request_id": event.request_id, "status": event.status.value})


def create_app(
    settings: WebhookSettings,
    *,
    engine: sa.Engine,
    jwks: JwksCache | None = None,
    max_body_bytes: int = MAX_BODY_BYTES,
    clock: Callable[[], float] | None = None,
) -> Starlette:
    """The ASGI app; ``engine`` is castflow's database (migrated), ``jwks`` defaults to settings' URL."""
    import time

    receiver = Receiver(
        settings,
        engine,
        jwks or JwksCache(settings.fal_jwks_url, cache_s=settings.jwks_cache_s),
        clock or time.time,
    )

    async def fal(request: Request) -> Response:
        try:
            body = await read_body(request, max_body_bytes)
            headers = _single_headers(request, FAL_HEADERS)
            return await run_in_threadpool(receiver.fal, headers, body)
        except WebhookRejected as exc:
            return _answer("fal", exc)

    async def wavespeed(request: Request) -> Response:
        try:
            body = await read_body(request, max_body_bytes)
            headers = _single_headers(request, WS_HEADERS)
            return await run_in_threadpool(receiver.wavespeed, headers, body)
        except WebhookRejected as exc:
            return _answer("wavespeed", exc)

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    app = Starlette(
        routes=[
            Route(FAL_PATH, fal, methods=["POST"]),
            Route(WAVESPEED_PATH, wavespeed, methods=["POST"]),
            Route("/healthz", healthz, methods=["GET"]),
        ]
    )
    app.state.receiver = receiver
    return app


def webhook_urls(settings: WebhookSettings, *, local_base: str) -> dict[str, str]:
    """The URLs to give the providers: under ``public_url`` when set, else the local listener."""
    base = (settings.public_url or local_base).rstrip("/")
    return {"fal": base + FAL_PATH, "wavespeed": base + WAVESPEED_PATH}
