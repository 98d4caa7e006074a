"""Webhook signatures of fal (Ed25519, ../shared/specs/fal.md §1.10) and WaveSpeed (HMAC-SHA256, wavespeed.md §4).

Verifiers raise :class:`WebhookRejected` carrying the HTTP status to answer; signers exist for the
loopback fakes and the tests. Reasons never contain header values, bodies or secrets.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import time
from collections.abc import Mapping, Sequence
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

FAL_REQUEST_ID = "x-fal-webhook-request-id"
FAL_USER_ID = "x-fal-webhook-user-id"
FAL_TIMESTAMP = "x-fal-webhook-timestamp"
FAL_SIGNATURE = "x-fal-webhook-signature"
FAL_HEADERS = (FAL_REQUEST_ID, FAL_USER_ID, FAL_TIMESTAMP, FAL_SIGNATURE)

WS_ID = "webhook-id"
WS_TIMESTAMP = "webhook-timestamp"
WS_SIGNATURE = "webhook-signature"
WS_HEADERS = (WS_ID, WS_TIMESTAMP, WS_SIGNATURE)
WS_SECRET_PREFIX = "whsec_"  # noqa: S105 (a prefix, not a secret)
WS_VERSION = "v3"

_HEX_SIG = re.compile(r"[0-9a-fA-F]{128}")
_TIMESTAMP = re.compile(r"[0-9]{1,12}")
# Ids end up in the signed message and in the database: printable ASCII, no spaces, bounded.
_ID = re.compile(r"[!-~]{1,200}")


class WebhookRejected(Exception):
    """A delivery that must not be recorded; ``status_code`` is what the sender gets."""

    def __init__(self, reason: str, status_code: int = 400) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status_code = status_code


class SignatureMismatch(WebhookRejected):
    """Well-formed and fresh, but no key verifies the signature (a fresher JWKS might)."""

    def __init__(self, reason: str = "signature does not verify") -> None:
        super().__init__(reason, 401)


def _lower(headers: Mapping[str, str]) -> dict[str, str]:
    return {k.lower(): v for k, v in headers.items()}


def _required(headers: dict[str, str], names: Sequence[str]) -> list[str]:
    missing = [n for n in names if not headers.get(n)]
    if missing:
        raise WebhookRejected(f"missing header(s): {', '.join(missing)}", 400)
    return [headers[n] for n in names]


def _check_timestamp(raw: str, now: float | None, tolerance_s: float) -> None:
    if not _TIMESTAMP.fullmatch(raw):
        raise WebhookRejected("timestamp is not Unix seconds", 400)
    skew = int(raw) - (time.time() if now is None else now)
    if skew < -tolerance_s:
        raise WebhookRejected("timestamp too old", 401)
    if skew > tolerance_s:
        raise WebhookRejected("timestamp in the future", 401)


# ---- fal: Ed25519 over "request_id\nuser_id\ntimestamp\nsha256(body)" ------------------------------------


def fal_message(request_id: str, user_id: str, timestamp: str, body: bytes) -> bytes:
    """The exact bytes fal signs (the raw body is hashed, never re-serialised JSON)."""
    return "\n".join([request_id, user_id, timestamp, hashlib.sha256(body).hexdigest()]).encode("utf-8")


def fal_delivery_id(headers: Mapping[str, str], body: bytes) -> str:
    """Identity of a fal delivery: SHA-256 of the signed message (hex signature case cannot dodge it)."""
    h = _lower(headers)
    return hashlib.sha256(fal_message(h[FAL_REQUEST_ID], h[FAL_USER_ID], h[FAL_TIMESTAMP], body)).hexdigest()


def _jwk_public_key(jwk: Mapping[str, Any]) -> Ed25519PublicKey | None:
    """The Ed25519 key of one JWK, or None when it is not a usable Ed25519 key."""
    x = jwk.get("x")
    if jwk.get("kty", "OKP") != "OKP" or jwk.get("crv") != "Ed25519" or not isinstance(x, str):
        return None
    try:
        # fal's own example forgets the padding and then rejects every key (spec §1.10 step 6).
        raw = base64.urlsafe_b64decode(x + "=" * (-len(x) % 4))
        return Ed25519PublicKey.from_public_bytes(raw)
    except (ValueError, binascii.Error):
        return None


def usable_keys(jwks_keys: Sequence[Mapping[str, Any]]) -> list[Ed25519PublicKey]:
    """The Ed25519 public keys of a JWKS ``keys`` list; other or broken entries are skipped."""
    keys = [_jwk_public_key(k) for k in jwks_keys if isinstance(k, Mapping)]
    return [k for k in keys if k is not None]


def public_jwk(key: Ed25519PublicKey, kid: str | None = None) -> dict[str, str]:
    """A JWK of an Ed25519 public key as fal publishes it (unpadded base64url ``x``)."""
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    x = base64.urlsafe_b64encode(key.public_bytes(Encoding.Raw, PublicFormat.Raw)).rstrip(b"=").decode()
    jwk = {"kty": "OKP", "crv": "Ed25519", "x": x, "use": "sig", "alg": "EdDSA"}
    if kid:
        jwk["kid"] = kid
    return jwk


def check_fal_headers(
    headers: Mapping[str, str], *, now: float | None = None, tolerance_s: float = 300
) -> tuple[str, str, str, str]:
    """The checks of :func:`verify_fal` that need no key: headers present and well-formed, timestamp fresh.

    Returns (request_id, user_id, timestamp, signature hex); the receiver runs this before touching the
    JWKS so junk requests never cause a key fetch.
    """
    h = _lower(headers)
    request_id, user_id, timestamp, signature = _required(h, FAL_HEADERS)
    if not (_ID.fullmatch(request_id) and _ID.fullmatch(user_id)):
        raise WebhookRejected("malformed request or user id header", 400)
    if not _HEX_SIG.fullmatch(signature):
        raise WebhookRejected("signature is not 128 hex characters", 400)
    _check_timestamp(timestamp, now, tolerance_s)
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


# ---- WaveSpeed: "v3," + hex HMAC-SHA256(secret minus whsec_, "{id}.{ts}.{raw_body}") ---------------------


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
    h = _lower(headers)
    webhook_id, timestamp, signature = _required(h, WS_HEADERS)
    if not _ID.fullmatch(webhook_id):
        raise WebhookRejected("malformed webhook-id header", 400)
    _check_timestamp(timestamp, now, tolerance_s)
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
