"""fal's webhook: its signature (Ed25519 over "request_id\nuser_id\ntimestamp\nsha256(body)", keys from
fal's JWKS; docs/providers/fal.md §1.10) and its payload (OK / ERROR, or a queue-status callback).

Verifiers raise ``WebhookRejected`` carrying the HTTP status to answer; the signer exists for the loopback
fake and the tests.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from castflow.db.tables import WebhookStatus
from castflow.providers.fal.jwks import JwksCache, JwksUnavailable, usable_keys
from castflow.providers.webhooks import (
    ID,
    Event,
    SignatureMismatch,
    WebhookRejected,
    check_timestamp,
    job_id,
    lower,
    parse_json_object,
    reject,
    required,
    text,
)
from castflow.settings import WebhookSettings

NAME = "fal"

FAL_REQUEST_ID = "x-fal-webhook-request-id"
FAL_USER_ID = "x-fal-webhook-user-id"
FAL_TIMESTAMP = "x-fal-webhook-timestamp"
FAL_SIGNATURE = "x-fal-webhook-signature"
FAL_HEADERS = (FAL_REQUEST_ID, FAL_USER_ID, FAL_TIMESTAMP, FAL_SIGNATURE)
_HEX_SIG = re.compile(r"[0-9a-fA-F]{128}")


def fal_message(request_id: str, user_id: str, timestamp: str, body: bytes) -> bytes:
    """The exact bytes fal signs (the raw body is hashed, never re-serialised JSON)."""
    return "\n".join([request_id, user_id, timestamp, hashlib.sha256(body).hexdigest()]).encode("utf-8")


def fal_delivery_id(headers: Mapping[str, str], body: bytes) -> str:
    """Identity of a fal delivery: SHA-256 of the signed message (hex signature case cannot dodge it)."""
    h = lower(headers)
    return hashlib.sha256(fal_message(h[FAL_REQUEST_ID], h[FAL_USER_ID], h[FAL_TIMESTAMP], body)).hexdigest()


def check_fal_headers(
    headers: Mapping[str, str], *, now: float | None = None, tolerance_s: float = 300
) -> tuple[str, str, str, str]:
    """The checks of :func:`verify_fal` that need no key: headers present and well-formed, timestamp fresh.

    Returns (request_id, user_id, timestamp, signature hex); the receiver runs this before touching the
    JWKS so junk requests never cause a key fetch.
    """
    h = lower(headers)
    request_id, user_id, timestamp, signature = required(h, FAL_HEADERS)
    if not (ID.fullmatch(request_id) and ID.fullmatch(user_id)):
        raise WebhookRejected("malformed request or user id header", 400)
    if not _HEX_SIG.fullmatch(signature):
        raise WebhookRejected("signature is not 128 hex characters", 400)
    check_timestamp(timestamp, now, tolerance_s)
    return request_id, user_id, timestamp, signature


def verify_fal(
    headers: Mapping[str, str],
    body: bytes,
    jwks_keys: Sequence[Mapping[str, Any]],
    *,
    now: float | None = None,
    tolerance_s: float = 300,
) -> None:
    """Verify a fal delivery; raise WebhookRejected (400 malformed, 401 stale/forged) unless it is genuine."""
    request_id, user_id, timestamp, signature = check_fal_headers(headers, now=now, tolerance_s=tolerance_s)
    message = fal_message(request_id, user_id, timestamp, body)
    sig = bytes.fromhex(signature)
    for key in usable_keys(jwks_keys):
        try:
            key.verify(sig, message)
        except InvalidSignature:
            continue
        return
    raise SignatureMismatch()


def sign_fal(
    private_key: Ed25519PrivateKey, request_id: str, user_id: str, ts: int, body: bytes
) -> dict[str, str]:
    """The four X-Fal-Webhook-* headers fal sends with ``body`` (for the fake and the tests)."""
    timestamp = str(ts)
    signature = private_key.sign(fal_message(request_id, user_id, timestamp, body)).hex()
    return {
        "X-Fal-Webhook-Request-Id": request_id,
        "X-Fal-Webhook-User-Id": user_id,
        "X-Fal-Webhook-Timestamp": timestamp,
        "X-Fal-Webhook-Signature": signature,
    }


# Statuses that are not completions (fal's undocumented queue callback; WaveSpeed's non-terminal states).
_FAL_PENDING = frozenset({"IN_QUEUE", "IN_PROGRESS"})


def parse_fal(doc: Mapping[str, Any]) -> Event | None:
    """fal's payload (spec §1.10): OK → completed, ERROR → failed; None for a queue-status callback."""
    request_id = job_id(doc, "request_id")
    status = doc.get("status")
    if status in _FAL_PENDING:
        return None
    payload = doc.get("payload")
    if payload is not None and not isinstance(payload, dict):
        reject("'payload' is not an object")
    if status == "OK":
        # payload null + payload_error: done, but the output must be fetched from the queue API.
        return Event(request_id, WebhookStatus.completed, text(doc.get("payload_error")), payload)
    if status == "ERROR":
        error = text(doc.get("error")) or "fal reported an error"
        return Event(request_id, WebhookStatus.failed, error, payload)
    raise WebhookRejected("unknown 'status'")


class FalWebhook:
    """Verifies and reads a fal delivery (blocking: runs in Starlette's thread pool). ``jwks``: the key
    cache (default: the settings' JWKS URL)."""

    name = NAME
    headers: tuple[str, ...] = FAL_HEADERS  # each may appear once

    def __init__(
        self,
        settings: WebhookSettings,
        clock: Callable[[], float],
        *,
        jwks_url: str,
        jwks: JwksCache | None = None,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.jwks = jwks or JwksCache(jwks_url, cache_s=settings.jwks_cache_s)

    def receive(self, headers: dict[str, str], body: bytes) -> tuple[str, Event | None]:
        """(delivery id, the completion or None when it is not one); raises WebhookRejected."""
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
        return fal_delivery_id(headers, body), parse_fal(parse_json_object(body))


def problems(settings: Any, *, online: bool = True) -> list[str]:
    """What keeps fal deliveries from being verified with these settings: fal's key set must be
    reachable (checked only ``online``: ``castflow doctor``)."""
    if not online:
        return []
    import httpx

    from castflow.providers.fal.settings import of

    url = of(settings).jwks_url
    resp = httpx.get(url, timeout=10.0)
    if not resp.is_success or not resp.json().get("keys"):
        return [f"fal JWKS {url} answered HTTP {resp.status_code} without keys"]
    return []
