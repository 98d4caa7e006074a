"""The webhook receiver: a small Starlette app behind ``castflow webhooks serve``.

``POST /webhooks/<vendor>`` (one route per vendor of castflow.providers.vendors) reads the raw body once
(capped), has the vendor's webhook verify the signature over those exact bytes and parse the JSON, and
records the completion; ``GET /healthz`` answers
``{"status": "ok"}``. Answers:

- 200 recorded; 202 authentic but not a completion (a queue-status callback), nothing recorded
- 400 malformed headers or body; 401 forged signature or stale/future timestamp
- 409 this delivery is already recorded (a replay); 413 body over the cap
- 503 cannot verify now (the vendor's keys unreachable or its secret not configured, database down)

Rejected requests never touch the database. Logs name the provider, the job id and the reason, never
header values, bodies or secrets.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from castflow.db import queries
from castflow.providers.vendors import WebhookReceiver, vendors, webhook_path
from castflow.providers.webhooks import Event, WebhookRejected, reject
from castflow.settings import Settings, WebhookSettings

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 1_000_000


async def read_body(request: Request, limit: int) -> bytes:
    """The raw body, read once; 413 as soon as it exceeds ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            reject("malformed Content-Length")
        if int(declared) > limit:
            reject("body too large", 413)
    data = bytearray()
    async for chunk in request.stream():
        data += chunk
        if len(data) > limit:
            reject("body too large", 413)
    return bytes(data)


def _single_headers(request: Request, names: tuple[str, ...]) -> dict[str, str]:
    """All headers, lower-cased; a signature header sent twice is ambiguous and refused."""
    for name in names:
        if len(request.headers.getlist(name)) > 1:
            reject(f"duplicate header {name}")
    return dict(request.headers.items())


def _answer(provider: str, exc: WebhookRejected) -> Response:
    level = logging.ERROR if exc.status_code >= 500 else logging.WARNING
    log.log(level, "%s webhook rejected (%d): %s", provider, exc.status_code, exc.reason)
    return JSONResponse({"error": exc.reason}, status_code=exc.status_code)


class Receiver:
    """Verification by the vendor's webhook, then recording (blocking: runs in Starlette's thread pool)."""

    def __init__(self, engine: sa.Engine, hooks: Mapping[str, WebhookReceiver]) -> None:
        self.engine = engine
        self.hooks = dict(hooks)

    def receive(self, provider: str, headers: dict[str, str], body: bytes) -> Response:
        delivery_id, event = self.hooks[provider].receive(headers, body)
        return self._record(provider, delivery_id, event)

    def _record(self, provider: str, delivery_id: str, event: Event | None) -> Response:
        if event is None:
            log.info("%s webhook: not a completion, ignored", provider)
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
        log.info("%s webhook: %s %s", provider, event.request_id, event.status.value)
        return JSONResponse({"recorded": True, "request_id": event.request_id, "status": event.status.value})


def create_app(
    settings: Settings,
    *,
    engine: sa.Engine,
    vendor_options: Mapping[str, Mapping[str, Any]] | None = None,
    max_body_bytes: int = MAX_BODY_BYTES,
    clock: Callable[[], float] | None = None,
) -> Starlette:
    """The ASGI app: ``POST /webhooks/<vendor>`` for every vendor, each verified by its vendor's
    receiver (from the vendor's settings group and ``settings.webhooks``). ``engine`` is castflow's database
    (migrated); ``vendor_options`` go to each vendor's receiver (fal: ``jwks``, a key cache)."""
    import time

    options = vendor_options or {}
    hooks = {v.NAME: v.receiver(settings, clock or time.time, **options.get(v.NAME, {})) for v in vendors()}
    receiver = Receiver(engine, hooks)

    def route(name: str, hook: WebhookReceiver) -> Route:
        async def endpoint(request: Request) -> Response:
            try:
                body = await read_body(request, max_body_bytes)
                headers = _single_headers(request, hook.headers)
                return await run_in_threadpool(receiver.receive, name, headers, body)
            except WebhookRejected as exc:
                return _answer(name, exc)

        return Route(webhook_path(name), endpoint, methods=["POST"])

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    app = Starlette(
        routes=[
            *(route(name, hook) for name, hook in hooks.items()),
            Route("/healthz", healthz, methods=["GET"]),
        ]
    )
    app.state.receiver = receiver
    return app


def webhook_urls(settings: WebhookSettings, *, local_base: str) -> dict[str, str]:
    """The URLs to give the vendors: under ``public_url`` when set, else the local listener."""
    base = (settings.public_url or local_base).rstrip("/")
    return {v.NAME: base + webhook_path(v.NAME) for v in vendors()}
