"""WaveSpeed's webhook: its signature ("v3," + hex HMAC-SHA256 over "{id}.{ts}.{raw body}" with the
secret minus ``whsec_``; docs/providers/wavespeed.md §4) and its payload (the flat prediction).

Verifiers raise ``WebhookRejected`` carrying the HTTP status to answer; the signer exists for the loopback
fake and the tests.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections.abc import Callable, Mapping
from typing import Any

from pydantic import SecretStr

from castflow.db.tables import WebhookStatus
from castflow.providers.webhooks import (
    ID,
    Event,
    WebhookRejected,
    check_timestamp,
    job_id,
    lower,
    parse_json_object,
    required,
    text,
)
from castflow.settings import WebhookSettings

log = logging.getLogger(__name__)

NAME = "wavespeed"

WS_ID = "webhook-id"
WS_TIMESTAMP = "webhook-timestamp"
WS_SIGNATURE = "webhook-signature"
WS_HEADERS = (WS_ID, WS_TIMESTAMP, WS_SIGNATURE)
WS_SECRET_PREFIX = "whsec_"  # noqa: S105 (a prefix, not a secret)
WS_VERSION = "v3"


def _wavespeed_key(secret: str) -> bytes:
    key = secret.removeprefix(WS_SECRET_PREFIX)
    if not key:
        raise ValueError("empty WaveSpeed webhook secret")
    return key.encode("utf-8")  # raw UTF-8, not base64-decoded (spec §4)


def _wavespeed_digest(key: bytes, webhook_id: str, timestamp: str, body: bytes) -> str:
    return hmac.new(key, f"{webhook_id}.{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


def verify_wavespeed(
    headers: Mapping[str, str],
    body: bytes,
    secret: str,
    *,
    now: float | None = None,
    tolerance_s: float = 300,
) -> None:
    """Verify a WaveSpeed delivery; raise WebhookRejected (400 malformed, 401 stale/forged) unless genuine."""
    key = _wavespeed_key(secret)
    h = lower(headers)
    webhook_id, timestamp, signature = required(h, WS_HEADERS)
    if not ID.fullmatch(webhook_id):
        raise WebhookRejected("malformed webhook-id header", 400)
    check_timestamp(timestamp, now, tolerance_s)
    candidates: list[str] = []
    # Standard-Webhooks style: space-separated "version,signature" entries; only v3 counts.
    for entry in signature.split():
        version, sep, value = entry.partition(",")
        if not sep:
            raise WebhookRejected("malformed webhook-signature header", 400)
        if version == WS_VERSION:
            candidates.append(value)
    if not candidates:
        raise WebhookRejected(f"no {WS_VERSION} signature", 401)
    expected = _wavespeed_digest(key, webhook_id, timestamp, body).encode()
    ok = False
    for value in candidates:
        given = value.lower().encode("ascii") if value.isascii() else b""
        ok |= hmac.compare_digest(expected, given)
    if not ok:
        raise WebhookRejected("signature does not verify", 401)


def sign_wavespeed(secret: str, webhook_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The webhook-id/-timestamp/-signature headers WaveSpeed sends with ``body`` (send it as application/json)."""
    ts = str(timestamp)
    digest = _wavespeed_digest(_wavespeed_key(secret), webhook_id, ts, body)
    return {WS_ID: webhook_id, WS_TIMESTAMP: ts, WS_SIGNATURE: f"{WS_VERSION},{digest}"}


_WS_PENDING = frozenset({"created", "pending", "processing"})
_WS_FAILED = frozenset({"failed", "cancelled", "timeout", "deleted"})


def parse_wavespeed(doc: Mapping[str, Any]) -> Event | None:
    """WaveSpeed's flat prediction (spec §4): completed, or failed-like; None while not terminal."""
    request_id = job_id(doc, "id")
    status = doc.get("status")
    if status in _WS_PENDING:
        return None
    if status == "completed":
        return Event(request_id, WebhookStatus.completed, None, dict(doc))
    if status in _WS_FAILED:
        error = text(doc.get("error")) or f"WaveSpeed task {status}"
        return Event(request_id, WebhookStatus.failed, error, dict(doc))
    raise WebhookRejected("unknown 'status'")


class WaveSpeedWebhook:
    """Verifies and reads a WaveSpeed delivery (blocking: runs in Starlette's thread pool)."""

    name = NAME
    headers: tuple[str, ...] = WS_HEADERS  # each may appear once

    def __init__(
        self, settings: WebhookSettings, clock: Callable[[], float], *, secret: SecretStr | None
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.secret = secret

    def receive(self, headers: dict[str, str], body: bytes) -> tuple[str, Event | None]:
        """(delivery id, the completion or None when it is not one); raises WebhookRejected."""
        secret = self.secret
        value = secret.get_secret_value() if secret is not None else ""
        if not value.removeprefix(WS_SECRET_PREFIX):
            log.error(
                "WaveSpeed webhook received but CASTFLOW_WAVESPEED__WEBHOOK_SECRET is not set: answering 503"
            )
            raise WebhookRejected("WaveSpeed webhook secret not configured", 503)
        verify_wavespeed(headers, body, value, now=self.clock(), tolerance_s=self.settings.tolerance_s)
        return headers["webhook-id"], parse_wavespeed(parse_json_object(body))


def problems(settings: Any, *, online: bool = True) -> list[str]:
    """What keeps WaveSpeed deliveries from being accepted with these settings (``castflow doctor`` and
    ``castflow webhooks serve``; nothing here needs the network)."""
    from castflow.providers.wavespeed.settings import of

    ws = of(settings)
    if ws.webhook_secret is None and (ws.key or not online):
        return ["CASTFLOW_WAVESPEED__WEBHOOK_SECRET is not set: WaveSpeed deliveries are refused with 503"]
    return []
