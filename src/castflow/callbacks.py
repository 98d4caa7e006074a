"""Result callbacks: when a run triggered with a ``callback_url`` ends, castflow POSTs its result there.

The body is JSON (status, video URL, cost, error, ...). It is signed like the providers sign their
webhooks: ``X-Castflow-Timestamp`` (Unix seconds) and ``X-Castflow-Signature: v1=<hex>``, the HMAC-SHA256
of ``"{timestamp}.{body}"`` keyed with ``CASTFLOW_CALLBACKS__SECRET``; receivers should check it in
constant time and refuse timestamps older than a few minutes. Delivery is retried with backoff on
connection errors, 429 and 5xx.

Callback URLs come from outside (API callers), so they are checked before anything is sent: http(s)
only, and never to a host that resolves to a loopback, private, link-local, multicast or reserved
address unless ``CASTFLOW_CALLBACKS__ALLOW_PRIVATE`` is set (server-side request forgery).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
from collections.abc import Callable
from typing import Any

import httpx

from castflow.inputs import UrlRefused, check_public_url, resolve_host
from castflow.providers.http import RetryPolicy, tls_context
from castflow.redact import redact
from castflow.settings import CallbackSettings

log = logging.getLogger(__name__)


class CallbackRefused(ValueError):
    """A callback URL castflow will not call (bad scheme, private address, no secret configured)."""


def check_url(
    url: str, settings: CallbackSettings, resolve: Callable[[str], list[Any]] = resolve_host
) -> str:
    """The URL if castflow may call it; CallbackRefused (with the reason) otherwise. The scheme and
    address rules are castflow.inputs', shared with every URL castflow fetches."""
    if settings.secret is None:
        raise CallbackRefused("callbacks need CASTFLOW_CALLBACKS__SECRET to sign them; none is set")
    try:
        return check_public_url(url, allow_private=settings.allow_private, resolve=resolve)
    except UrlRefused as exc:
        hint = " (set CASTFLOW_CALLBACKS__ALLOW_PRIVATE=true to allow it)" if exc.non_public else ""
        raise CallbackRefused(f"callback {exc}{hint}") from None


def sign(secret: str, timestamp: int, body: bytes) -> str:
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"v1={digest}"


def verify(secret: str, headers: dict[str, str], body: bytes, *, tolerance_s: int = 300) -> bool:
    """What a receiver does: a fresh timestamp and a matching signature (constant-time)."""
    lowered = {k.lower(): v for k, v in headers.items()}
    try:
        timestamp = int(lowered["x-castflow-timestamp"])
    except (KeyError, ValueError):
        return False
    if abs(time.time() - timestamp) > tolerance_s:
        return False
    return hmac.compare_digest(sign(secret, timestamp, body), lowered.get("x-castflow-signature", ""))


def _retryable(exc: BaseException) -> bool:
    if isinstance(exc, httpx.TransportError):
        return True
    return isinstance(exc, httpx.HTTPStatusError) and (
        exc.response.status_code == 429 or exc.response.status_code >= 500
    )


def deliver(
    url: str,
    payload: dict[str, Any],
    settings: CallbackSettings,
    *,
    transport: httpx.BaseTransport | None = None,
    resolve: Callable[[str], list[Any]] = resolve_host,
) -> int:
    """Check, sign and POST ``payload`` to ``url`` with retries; returns the final HTTP status."""
    check_url(url, settings, resolve)
    assert settings.secret is not None
    if isinstance(payload.get("error"), str):  # the receiver is outside: provider errors quote keys and URLs
        payload = {**payload, "error": redact(payload["error"])}
    body = json.dumps(payload, sort_keys=True, default=str).encode()
    secret = settings.secret.get_secret_value()

    def post() -> int:
        timestamp = int(time.time())
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "castflow-callback",
            "X-Castflow-Timestamp": str(timestamp),
            "X-Castflow-Signature": sign(secret, timestamp, body),
        }
        with httpx.Client(
            transport=transport, timeout=settings.timeout_s, verify=tls_context(), follow_redirects=False
        ) as client:
            resp = client.post(url, content=body, headers=headers)
        if resp.status_code == 429 or resp.status_code >= 500:
            resp.raise_for_status()
        return resp.status_code

    return int(callback_policy(settings).retrying(_retryable)(post))


def callback_policy(settings: CallbackSettings) -> RetryPolicy:
    """The HTTP layer's retry policy with the callback's own patience: a receiver outside is given more
    time than a provider (its tries and first backoff are settings of their own)."""
    return RetryPolicy(
        attempts=settings.attempts, base_delay=settings.backoff_s, max_delay=60.0, total_seconds=600.0
    )
