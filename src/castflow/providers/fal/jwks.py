"""fal's webhook signing keys (a JWKS), fetched with httpx and cached; refetched at a bounded rate.

The cache serves keys for ``cache_s`` (the spec allows up to 24 h). A signature that no cached key
verifies may mean fal rotated its key, so the receiver asks :meth:`JwksCache.refresh`, which fetches
at most once per ``min_interval_s`` (forged requests cannot turn the receiver into a JWKS hammer).
A fetch that fails raises :class:`JwksUnavailable`: the receiver answers 503 so fal retries later.
"""

from __future__ import annotations

import base64
import binascii
import logging
import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

log = logging.getLogger(__name__)

Keys = tuple[dict[str, Any], ...]


class JwksUnavailable(Exception):
    """No usable key set: the fetch failed or the set holds no Ed25519 key."""


class JwksCache:
    """Thread-safe JWKS cache; one fetch at a time, callers wait for it rather than stampede."""

    def __init__(
        self,
        url: str,
        *,
        cache_s: float = 24 * 3600,
        min_interval_s: float = 60.0,
        timeout_s: float = 5.0,
        transport: httpx.BaseTransport | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.url = url
        self.cache_s = cache_s
        self.min_interval_s = min_interval_s
        self.timeout_s = timeout_s
        self.fetches = 0  # attempted fetches, successful or not
        self._transport = transport
        self._clock = clock
        self._lock = threading.Lock()
        self._keys: Keys | None = None
        self._fetched_at = -math.inf
        self._attempted_at = -math.inf

    def keys(self) -> Keys:
        """The cached keys, fetched first when missing or expired; raises JwksUnavailable."""
        with self._lock:
            now = self._clock()
            if self._keys is not None and now - self._fetched_at < self.cache_s:
                return self._keys
            if now - self._attempted_at < self.min_interval_s:
                raise JwksUnavailable("JWKS fetch failed recently; not retrying yet")
            return self._fetch(now)

    def refresh(self, stale: Keys) -> Keys | None:
        """Keys newer than ``stale`` (fetching if allowed); None when a fetch is not allowed yet.

        Raises JwksUnavailable when the fetch fails.
        """
        with self._lock:
            if self._keys is not None and self._keys is not stale:
                return self._keys  # another request refreshed while this one waited
            now = self._clock()
            if now - self._attempted_at < self.min_interval_s:
                return None
            return self._fetch(now)

    def _fetch(self, now: float) -> Keys:
        self._attempted_at = now
        self.fetches += 1
        try:
            with httpx.Client(transport=self._transport, timeout=self.timeout_s) as client:
                resp = client.get(self.url, headers={"Accept": "application/json"})
            resp.raise_for_status()
            body = resp.json()
        except (httpx.HTTPError, ValueError) as exc:
            log.warning("fal JWKS fetch from %s failed: %s", self.url, type(exc).__name__)
            raise JwksUnavailable(f"JWKS fetch failed ({type(exc).__name__})") from exc
        raw = body.get("keys") if isinstance(body, dict) else None
        if not isinstance(raw, list):
            log.warning("fal JWKS at %s has no 'keys' list", self.url)
            raise JwksUnavailable("JWKS has no 'keys' list")
        keys = tuple(k for k in raw if isinstance(k, dict) and usable_keys([k]))
        if not keys:
            log.warning("fal JWKS at %s holds no Ed25519 key", self.url)
            raise JwksUnavailable("JWKS holds no Ed25519 key")
        self._keys = keys
        self._fetched_at = now
        log.info("fal JWKS fetched from %s: %d key(s)", self.url, len(keys))
        return keys


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
