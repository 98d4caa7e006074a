"""Webhook receiver: fal (Ed25519 + JWKS) and WaveSpeed (HMAC) signatures, over real HTTP on loopback,
recorded in SQLite and PostgreSQL; the fal fake delivers signed webhooks end to end."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
import uvicorn
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import SecretStr
from sqlalchemy.orm import Session
from starlette.applications import Starlette

from castflow.db.tables import WebhookEvent
from castflow.providers.fal.client import FalClient
from castflow.providers.fal.fake import VALID_KEY, FakeFal
from castflow.providers.fal.jwks import JwksCache, public_jwk
from castflow.providers.fal.webhook import sign_fal, verify_fal
from castflow.providers.wavespeed.webhook import sign_wavespeed, verify_wavespeed
from castflow.providers.webhooks import SignatureMismatch, WebhookCompletion, WebhookRejected, find_completion
from castflow.runtime import Runtime
from castflow.settings import Settings
from castflow.webhooks.app import create_app

SECRET = "whsec_c2VjcmV0LWZvci10ZXN0cw-and-more"
TTS = "fal-ai/elevenlabs/tts/multilingual-v2"


# ---- helpers ------------------------------------------------------------------------------------------


@contextmanager
def serving(app: Starlette) -> Iterator[str]:
    """Run ``app`` under uvicorn in a thread on a free loopback port; yields its base URL."""
    config = uvicorn.Config(
        app, host="127.0.0.1", port=0, log_level="warning", ws="none", lifespan="off", access_log=False
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert thread.is_alive(), "uvicorn did not start"
        assert time.monotonic() < deadline, "uvicorn did not start in 10 s"
        time.sleep(0.005)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@dataclass
class Hook:
    url: str
    fake: FakeFal
    jwks: JwksCache
    clock: list[float]  # the JWKS cache's monotonic clock, advanced by hand
    engine: sa.Engine

    def post(self, provider: str, headers: Mapping[str, str], body: bytes) -> httpx.Response:
        return httpx.post(f"{self.url}/webhooks/{provider}", content=body, headers=dict(headers), timeout=10)

    def rows(self) -> list[WebhookEvent]:
        with Session(self.engine) as s:
            return list(s.scalars(sa.select(WebhookEvent).order_by(WebhookEvent.received_at)))


@contextmanager
def receiver(engine: sa.Engine, fake: FakeFal, **groups: Any) -> Iterator[Hook]:
    clock = [1_000.0]
    jwks = JwksCache(
        f"{fake.url}/.well-known/jwks.json", cache_s=3600, min_interval_s=60, clock=lambda: clock[0]
    )
    app = create_app(
        Settings(**groups), engine=engine, vendor_options={"fal": {"jwks": jwks}}, max_body_bytes=64_000
    )
    with serving(app) as url:
        yield Hook(url, fake, jwks, clock, engine)


@pytest.fixture
def fake() -> Iterator[FakeFal]:
    with FakeFal().running() as server:
        yield server


@pytest.fixture
def hook(rt: Runtime, fake: FakeFal) -> Iterator[Hook]:
    with receiver(rt.engine, fake, wavespeed={"webhook_secret": SecretStr(SECRET)}) as h:
        yield h


def fal_doc(request_id: str = "req-0001", status: str = "OK", **extra: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {"request_id": request_id, "gateway_request_id": request_id, "status": status}
    doc["payload"] = {"images": [{"url": "https://v3.fal.media/files/x.png"}], "description": ""}
    doc.update(extra)
    return doc


def fal_signed(
    key: Ed25519PrivateKey, doc: dict[str, Any] | bytes, *, ts: int | None = None
) -> tuple[dict[str, str], bytes]:
    body = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
    rid = "req-0001" if isinstance(doc, bytes) else str(doc["request_id"])
    headers = sign_fal(key, rid, "user-42", int(time.time()) if ts is None else ts, body)
    return {**headers, "Content-Type": "application/json"}, body


def ws_doc(task_id: str = "a" * 32, status: str = "completed", **extra: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "id": task_id,
        "model": "wavespeed-ai/infinitetalk",
        "outputs": ["https://d2p7pge43lyniu.cloudfront.net/output/v.mp4"] if status == "completed" else [],
        "urls": {"get": f"https://api.wavespeed.ai/api/v3/predictions/{task_id}/result"},
        "has_nsfw_contents": [False],
        "status": status,
        "created_at": "2025-09-25T09:12:48.239112031Z",
        "error": "",
        "executionTime": 6710,
        "timings": {"inference": 6710},
    }
    doc.update(extra)
    return doc


def ws_signed(
    doc: dict[str, Any], *, webhook_id: str = "msg_0001", ts: int | None = None, secret: str = SECRET
) -> tuple[dict[str, str], bytes]:
    body = json.dumps(doc).encode()
    headers = sign_wavespeed(secret, webhook_id, int(time.time()) if ts is None else ts, body)
    return {**headers, "Content-Type": "application/json"}, body


def wait_for(predicate: Any, timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError("condition not met in time")


def spec_verify_fal_webhook(
    h: Mapping[str, str], body: bytes, jwks_keys: list[dict[str, Any]], now: float | None = None
) -> bool:
    """The reference verifier of fal.md §1.10, as written there (independent of castflow's)."""
    h = {k.lower(): v for k, v in h.items()}
    rid, uid = h.get("x-fal-webhook-request-id"), h.get("x-fal-webhook-user-id")
    ts, sig = h.get("x-fal-webhook-timestamp"), h.get("x-fal-webhook-signature")
    if not (rid and uid and ts and sig):
        return False
    try:
        if abs((now or time.time()) - int(ts)) > 300:
            return False
        sig_b = bytes.fromhex(sig)
    except ValueError:
        return False
    msg = "\n".join([rid, uid, ts, hashlib.sha256(body).hexdigest()]).encode()
    for k in jwks_keys:
        x = k.get("x")
        if k.get("crv") != "Ed25519" or not isinstance(x, str):
            continue
        try:
            Ed25519PublicKey.from_public_bytes(base64.urlsafe_b64decode(x + "=" * (-len(x) % 4))).verify(
                sig_b, msg
            )
            return True
        except (InvalidSignature, ValueError):
            continue
    return False


# ---- signatures (no HTTP) -----------------------------------------------------------------------------


def test_sign_fal_passes_the_spec_reference_verifier_and_ours() -> None:
    key = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
    jwk = public_jwk(key.public_key())
    assert len(jwk["x"]) == 43  # unpadded base64url, the form that trips fal's own example
    headers, body = fal_signed(key, fal_doc())
    assert len(headers["X-Fal-Webhook-Signature"]) == 128
    assert spec_verify_fal_webhook(headers, body, [jwk])
    verify_fal(headers, body, [jwk])
    assert not spec_verify_fal_webhook(headers, body + b" ", [jwk])
    with pytest.raises(SignatureMismatch):
        verify_fal(headers, body + b" ", [jwk])


NOW = 1_800_000_000  # a fixed "now": parameters are built at collection time, long before they run


@pytest.mark.parametrize(
    ("change", "status", "reason"),
    [
        ({"X-Fal-Webhook-Signature": None}, 400, "missing header"),
        ({"X-Fal-Webhook-User-Id": None}, 400, "missing header"),
        ({"X-Fal-Webhook-Signature": "zz" * 64}, 400, "128 hex"),
        ({"X-Fal-Webhook-Timestamp": "12.5"}, 400, "Unix seconds"),
        ({"X-Fal-Webhook-Timestamp": str(NOW - 301)}, 401, "too old"),
        ({"X-Fal-Webhook-Timestamp": str(NOW + 301)}, 401, "future"),
        ({"X-Fal-Webhook-User-Id": "someone-else"}, 401, "does not verify"),
    ],
)
def test_verify_fal_rejects(change: dict[str, str | None], status: int, reason: str) -> None:
    key = Ed25519PrivateKey.generate()
    headers, body = fal_signed(key, fal_doc(), ts=NOW)
    verify_fal(headers, body, [public_jwk(key.public_key())], now=NOW + 300)
    for name, value in change.items():
        if value is None:
            del headers[name]
        else:
            headers[name] = value
    with pytest.raises(WebhookRejected) as info:
        verify_fal(headers, body, [public_jwk(key.public_key())], now=NOW)
    assert info.value.status_code == status
    assert reason in info.value.reason


def test_wavespeed_signature_is_hmac_of_id_ts_body_keyed_by_the_raw_secret() -> None:
    body = b'{"id":"abc","status":"completed"}'
    headers = sign_wavespeed("whsec_s3cr3t", "msg_1", 1758798328, body)
    # Independent restatement of wavespeed.md §4: prefix stripped, the rest used as raw UTF-8 bytes.
    expected = hmac.new(b"s3cr3t", b"msg_1.1758798328." + body, hashlib.sha256).hexdigest()
    assert headers == {
        "webhook-id": "msg_1",
        "webhook-timestamp": "1758798328",
        "webhook-signature": f"v3,{expected}",
    }
    now = 1758798328 + 299
    verify_wavespeed(headers, body, "whsec_s3cr3t", now=now)
    verify_wavespeed(
        {**headers, "webhook-signature": f"v3,{expected.upper()}"}, body, "whsec_s3cr3t", now=now
    )
    verify_wavespeed(
        {**headers, "webhook-signature": f"v1,{'0' * 64} v3,{expected}"}, body, "whsec_s3cr3t", now=now
    )
    # The same secret without the prefix is the same key; a base64-decoded key is not.
    verify_wavespeed(headers, body, "s3cr3t", now=now)
    with pytest.raises(WebhookRejected, match="does not verify"):
        verify_wavespeed(headers, body, "whsec_" + base64.b64encode(b"s3cr3t").decode(), now=now)


@pytest.mark.parametrize(
    ("change", "now_offset", "status", "reason"),
    [
        ({"webhook-signature": "v1," + "0" * 64}, 0, 401, "no v3"),
        ({"webhook-signature": "v3" + "0" * 64}, 0, 400, "malformed"),
        ({"webhook-signature": "v3," + "0" * 64}, 0, 401, "does not verify"),
        ({"webhook-id": "other"}, 0, 401, "does not verify"),
        ({"webhook-id": ""}, 0, 400, "missing header"),
        ({}, 301, 401, "too old"),
        ({}, -301, 401, "future"),
    ],
)
def test_verify_wavespeed_rejects(change: dict[str, str], now_offset: int, status: int, reason: str) -> None:
    body = b'{"id":"abc","status":"completed"}'
    headers = {**sign_wavespeed(SECRET, "msg_1", NOW, body), **change}
    with pytest.raises(WebhookRejected) as info:
        verify_wavespeed(headers, body, SECRET, now=NOW + now_offset)
    assert (info.value.status_code, reason in info.value.reason) == (status, True)


# ---- fal over HTTP ------------------------------------------------------------------------------------


def test_valid_fal_delivery_is_recorded_and_found(hook: Hook, rt: Runtime) -> None:
    doc = fal_doc("req-ok")
    headers, body = fal_signed(hook.fake.signing_key, doc)
    resp = hook.post("fal", headers, body)
    assert resp.status_code == 200, resp.text
    assert resp.json() == {"recorded": True, "request_id": "req-ok", "status": "completed"}
    found = find_completion(rt.engine, "fal", "req-ok")
    assert found == WebhookCompletion(status="completed", error=None, payload=doc["payload"])
    with rt.session() as s:
        assert find_completion(s, "fal", "req-ok") == found
    assert find_completion(rt.engine, "wavespeed", "req-ok") is None
    assert find_completion(rt.engine, "fal", "req-other") is None
    (row,) = hook.rows()
    assert (row.provider, row.request_id, len(row.delivery_id)) == ("fal", "req-ok", 64)
    # Headers and signatures never reach the database.
    assert headers["X-Fal-Webhook-Signature"] not in json.dumps(row.payload)


def test_fal_error_and_payload_error_deliveries(hook: Hook) -> None:
    key = hook.fake.signing_key
    detail = {"detail": [{"loc": ["body", "prompt"], "msg": "field required", "type": "value_error.missing"}]}
    failed = fal_doc("req-err", "ERROR", error="Invalid status code: 422", payload=detail)
    no_output = fal_doc("req-big", payload=None, payload_error="Response payload is not JSON serializable.")
    assert hook.post("fal", *fal_signed(key, failed)).status_code == 200
    assert hook.post("fal", *fal_signed(key, no_output)).status_code == 200
    assert find_completion(hook.engine, "fal", "req-err") == WebhookCompletion(
        "failed", "Invalid status code: 422", detail
    )
    assert find_completion(hook.engine, "fal", "req-big") == WebhookCompletion(
        "completed", "Response payload is not JSON serializable.", None
    )


def test_fal_rejections_answer_4xx_and_write_nothing(hook: Hook, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    key = hook.fake.signing_key
    now = int(time.time())
    good_headers, good_body = fal_signed(key, fal_doc())
    forged = {**good_headers, "X-Fal-Webhook-Signature": good_headers["X-Fal-Webhook-Signature"][::-1]}
    cases: list[tuple[str, dict[str, str], bytes, int]] = [
        ("forged signature", forged, good_body, 401),
        ("body changed", good_headers, good_body.replace(b"OK", b"ok"), 401),
        ("wrong key", *fal_signed(Ed25519PrivateKey.generate(), fal_doc()), 401),
        ("stale", *fal_signed(key, fal_doc(), ts=now - 301), 401),
        ("future", *fal_signed(key, fal_doc(), ts=now + 360), 401),
        ("malformed JSON", *fal_signed(key, b'{"request_id": "req-0001", '), 400),
        ("not an object", *fal_signed(key, b"[1, 2]"), 400),
        ("NaN", *fal_signed(key, b'{"request_id": "r", "status": "OK", "payload": {"x": NaN}}'), 400),
        ("unknown status", *fal_signed(key, fal_doc(status="DONE")), 400),
        ("no request id", *fal_signed(key, {**fal_doc(), "request_id": ""}), 400),
        ("too large", *fal_signed(key, fal_doc(pad="x" * 70_000)), 413),
    ]
    for name in ("X-Fal-Webhook-Request-Id", "X-Fal-Webhook-User-Id", "X-Fal-Webhook-Timestamp"):
        cases.append((f"no {name}", {k: v for k, v in good_headers.items() if k != name}, good_body, 400))
    cases.append(
        ("no signature", {k: v for k, v in good_headers.items() if "Signature" not in k}, good_body, 400)
    )
    for label, headers, body, status in cases:
        resp = hook.post("fal", headers, body)
        assert resp.status_code == status, (label, resp.status_code, resp.text)
        assert "error" in resp.json(), label
    # A chunked body (no Content-Length) is capped while it is read.
    big_headers, big_body = fal_signed(key, fal_doc(pad="x" * 70_000))
    chunks = (big_body[i : i + 8192] for i in range(0, len(big_body), 8192))
    resp = httpx.post(f"{hook.url}/webhooks/fal", content=chunks, headers=big_headers)
    assert resp.status_code == 413
    assert hook.rows() == []
    # One fetch; the key misses asked for a refetch, refused by the rate limit (the clock did not move).
    assert hook.fake.calls["jwks"] == 1
    assert good_headers["X-Fal-Webhook-Signature"] not in caplog.text
    assert "rejected (401): signature does not verify" in caplog.text


def test_a_replayed_fal_delivery_is_refused(hook: Hook) -> None:
    headers, body = fal_signed(hook.fake.signing_key, fal_doc("req-replay"))
    assert hook.post("fal", headers, body).status_code == 200
    again = hook.post("fal", headers, body)
    assert again.status_code == 409
    assert again.json() == {"error": "delivery already recorded"}
    # Same signed message, hex in upper case: still the same delivery.
    upper = {**headers, "X-Fal-Webhook-Signature": headers["X-Fal-Webhook-Signature"].upper()}
    assert hook.post("fal", upper, body).status_code == 409
    assert len(hook.rows()) == 1


def test_jwks_is_cached_and_refetched_when_fal_rotates_its_key(hook: Hook) -> None:
    fake = hook.fake
    for i in range(3):
        assert hook.post("fal", *fal_signed(fake.signing_key, fal_doc(f"req-{i}"))).status_code == 200
    assert fake.calls["jwks"] == 1

    hook.clock[0] += 61  # past the refetch rate limit, well inside the cache lifetime
    fake.rotate_key()
    assert hook.post("fal", *fal_signed(fake.signing_key, fal_doc("req-rotated"))).status_code == 200
    assert fake.calls["jwks"] == 2
    # A key nobody publishes: a refetch is not allowed again so soon, so no fetch and a 401.
    assert hook.post("fal", *fal_signed(Ed25519PrivateKey.generate(), fal_doc("x"))).status_code == 401
    assert fake.calls["jwks"] == 2

    hook.clock[0] += 3601  # the cache expired: the next delivery fetches again
    assert hook.post("fal", *fal_signed(fake.signing_key, fal_doc("req-late"))).status_code == 200
    assert fake.calls["jwks"] == 3
    assert len(hook.rows()) == 5


def test_jwks_unreachable_answers_503_so_fal_retries(hook: Hook) -> None:
    hook.fake.knobs.jwks_errors = [500]
    headers, body = fal_signed(hook.fake.signing_key, fal_doc("req-later"))
    resp = hook.post("fal", headers, body)
    assert resp.status_code == 503
    assert hook.post("fal", headers, body).status_code == 503  # rate-limited: no second fetch yet
    assert hook.fake.calls["jwks"] == 1
    assert hook.rows() == []
    hook.clock[0] += 61
    assert hook.post("fal", headers, body).status_code == 200
    assert hook.fake.calls["jwks"] == 2


# ---- WaveSpeed over HTTP --------------------------------------------------------------------------------


def test_wavespeed_deliveries(hook: Hook, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    done = ws_doc("b" * 32)
    headers, body = ws_signed(done, webhook_id="msg_done")
    assert hook.post("wavespeed", headers, body).status_code == 200
    assert find_completion(hook.engine, "wavespeed", "b" * 32) == WebhookCompletion("completed", None, done)

    failed = ws_doc("c" * 32, "failed", error="Failed to download image from the provided URL.", code=1402)
    assert hook.post("wavespeed", *ws_signed(failed, webhook_id="msg_failed")).status_code == 200
    found = find_completion(hook.engine, "wavespeed", "c" * 32)
    assert found is not None
    assert (found.status, found.error) == ("failed", "Failed to download image from the provided URL.")

    # Replay of the same webhook-id: refused, nothing written.
    assert hook.post("wavespeed", headers, body).status_code == 409
    forged = {**headers, "webhook-signature": "v3," + "0" * 64}
    stale_headers, stale_body = ws_signed(ws_doc("d" * 32), webhook_id="msg_stale", ts=int(time.time()) - 301)
    wrong_secret = ws_signed(ws_doc("e" * 32), webhook_id="msg_wrong", secret="whsec_other")
    v1 = {
        **headers,
        "webhook-id": "msg_v1",
        "webhook-signature": headers["webhook-signature"].replace("v3", "v1"),
    }
    assert hook.post("wavespeed", forged, body).status_code == 401
    assert hook.post("wavespeed", stale_headers, stale_body).status_code == 401
    assert hook.post("wavespeed", *wrong_secret).status_code == 401
    assert hook.post("wavespeed", v1, body).status_code == 401
    assert hook.post("wavespeed", *ws_signed(ws_doc(status="weird"), webhook_id="m1")).status_code == 400
    assert hook.post("wavespeed", {"webhook-id": "m2"}, body).status_code == 400
    # A non-terminal status is authentic but not a completion: 202, nothing recorded.
    assert (
        hook.post("wavespeed", *ws_signed(ws_doc("f" * 32, "processing"), webhook_id="m3")).status_code == 202
    )
    assert {r.request_id for r in hook.rows()} == {"b" * 32, "c" * 32}
    assert SECRET not in caplog.text
    assert headers["webhook-signature"] not in caplog.text


def test_wavespeed_without_a_secret_answers_503(
    rt: Runtime, fake: FakeFal, caplog: pytest.LogCaptureFixture
) -> None:
    with receiver(rt.engine, fake) as hook:
        assert httpx.get(f"{hook.url}/healthz").json() == {"status": "ok"}
        resp = hook.post("wavespeed", *ws_signed(ws_doc()))
        assert resp.status_code == 503
        assert hook.rows() == []
    assert "CASTFLOW_WAVESPEED__WEBHOOK_SECRET is not set" in caplog.text


@pytest.mark.postgres
def test_deliveries_on_postgres(pg_rt: Runtime, fake: FakeFal) -> None:
    assert pg_rt.engine.dialect.name == "postgresql"
    with receiver(pg_rt.engine, fake, wavespeed={"webhook_secret": SecretStr(SECRET)}) as hook:
        doc = fal_doc("req-pg")
        headers, body = fal_signed(fake.signing_key, doc)
        assert hook.post("fal", headers, body).status_code == 200
        assert hook.post("fal", headers, body).status_code == 409
        ws = ws_doc("9" * 32)
        assert hook.post("wavespeed", *ws_signed(ws, webhook_id="msg_pg")).status_code == 200
        assert hook.post("wavespeed", *ws_signed(ws, webhook_id="msg_pg")).status_code == 409
        nan = fal_signed(fake.signing_key, b'{"request_id": "r", "status": "OK", "payload": {"x": NaN}}')
        assert hook.post("fal", *nan).status_code == 400
    assert find_completion(pg_rt.engine, "fal", "req-pg") == WebhookCompletion(
        "completed", None, doc["payload"]
    )
    assert find_completion(pg_rt.engine, "wavespeed", "9" * 32) == WebhookCompletion("completed", None, ws)
    assert len(hook.rows()) == 2


# ---- the fal fake delivers, end to end --------------------------------------------------------------


def _submit(fake: FakeFal, webhook_url: str, text: str = "Hello there.") -> str:
    fal = FalClient(SecretStr(VALID_KEY), queue_url=fake.url, rest_url=fake.url, cdn_url=fake.url)
    handle = asyncio.run(fal.submit(TTS, {"text": text}, webhook_url=webhook_url))
    return handle.request_id


def test_the_fal_fake_delivers_signed_webhooks_end_to_end(hook: Hook) -> None:
    fake = hook.fake
    fake.knobs.queue_seconds = 0.1
    rid = _submit(fake, f"{hook.url}/webhooks/fal")
    done = wait_for(lambda: find_completion(hook.engine, "fal", rid))
    assert done.status == "completed"
    assert done.payload["audio"]["url"].startswith(fake.url)
    assert httpx.get(done.payload["audio"]["url"]).content[:4] == b"RIFF"
    assert [d.status_code for d in fake.deliveries] == [200]

    fake.knobs.fail_jobs = [("Unsafe content detected", "content_policy_violation")]
    failed_id = _submit(fake, f"{hook.url}/webhooks/fal")
    failed = wait_for(lambda: find_completion(hook.engine, "fal", failed_id))
    assert (failed.status, failed.error) == ("failed", "Invalid status code: 422")
    assert failed.payload["detail"][0]["msg"] == "Unsafe content detected"
    assert fake.calls["jwks"] == 1


def test_the_fal_fake_retries_and_its_faults_are_refused(hook: Hook) -> None:
    fake = hook.fake
    url = f"{hook.url}/webhooks/fal"

    fake.knobs.webhook_deliver_twice = True
    twice = _submit(fake, url)
    assert [d.status_code for d in fake.wait_for_deliveries(2)] == [200, 409]
    assert [r.request_id for r in hook.rows()] == [twice]

    fake.deliveries.clear()
    fake.knobs.webhook_deliver_twice = False
    fake.knobs.webhook_corrupt_signature = True
    forged = _submit(fake, url)
    assert [d.status_code for d in fake.wait_for_deliveries(4)] == [401] * 4
    assert find_completion(hook.engine, "fal", forged) is None

    # JWKS down at first: 503, fal retries, the retry verifies.
    fake.deliveries.clear()
    fake.knobs.webhook_corrupt_signature = False
    hook.jwks.min_interval_s = 0
    hook.clock[0] += 3601
    fake.knobs.jwks_errors = [503]
    late = _submit(fake, url)
    assert [d.status_code for d in fake.wait_for_deliveries(2)] == [503, 200]
    assert wait_for(lambda: find_completion(hook.engine, "fal", late)).status == "completed"
    assert len(hook.rows()) == 2


# ---- CLI ----------------------------------------------------------------------------------------------


def test_cli_serves_and_prints_the_urls(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("CASTFLOW_")}
    env |= {
        "CASTFLOW_DATA_DIR": str(tmp_path / "data"),
        "CASTFLOW_WEBHOOKS__PUBLIC_URL": "https://hooks.example.com/",
        "CASTFLOW_WAVESPEED__WEBHOOK_SECRET": SECRET,
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "castflow", "webhooks", "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert proc.stdout is not None
        lines = [proc.stdout.readline(), proc.stdout.readline()]
        assert lines == [
            "fal webhook URL:       https://hooks.example.com/webhooks/fal\n",
            "WaveSpeed webhook URL: https://hooks.example.com/webhooks/wavespeed\n",
        ]

        def healthy() -> bool:
            try:
                return httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200
            except httpx.ConnectError:
                return False

        assert wait_for(healthy, timeout=20)
        headers, body = ws_signed(ws_doc(), webhook_id="msg_cli")
        resp = httpx.post(f"http://127.0.0.1:{port}/webhooks/wavespeed", content=body, headers=headers)
        assert resp.status_code == 200
    finally:
        proc.terminate()
        output, _ = proc.communicate(timeout=10)
    assert SECRET not in output
    assert headers["webhook-signature"] not in output


# ---- webhooks end the waits of the pipeline ------------------------------------------------------------


def test_webhooks_end_the_stage_waits_without_more_polling(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a public URL set, fal and WaveSpeed call the receiver; the stages finish on the delivery
    although the next poll would only come after 30 s."""
    from castflow import pipeline
    from castflow.actors import ActorSpec, ensure_sample_actors, import_actors
    from castflow.models import Voice
    from castflow.providers.http import PollSchedule
    from castflow.providers.wavespeed.fake import VALID_KEY as WS_KEY
    from castflow.providers.wavespeed.fake import FakeWaveSpeed
    from castflow.runtime import get_runtime
    from castflow.settings import reset_settings

    ws = FakeWaveSpeed()
    with FakeFal().running() as fal, ws.running():
        env = {
            "CASTFLOW_PROVIDERS__IMAGE": "fal",
            "CASTFLOW_PROVIDERS__LIPSYNC": "wavespeed",
            "CASTFLOW_FAL__KEY": VALID_KEY,
            "CASTFLOW_WAVESPEED__KEY": WS_KEY,
            "CASTFLOW_FAL__QUEUE_URL": fal.url,
            "CASTFLOW_FAL__REST_URL": fal.url,
            "CASTFLOW_FAL__CDN_URL": fal.url,
            "CASTFLOW_WAVESPEED__BASE_URL": ws.url,
            "CASTFLOW_WAVESPEED__POLL_FIRST_S": "30",
            "CASTFLOW_WAVESPEED__EXPECTED_SECONDS_PER_AUDIO_SECOND": "0",
            "CASTFLOW_WAVESPEED__WEBHOOK_SECRET": ws.webhook_secret,
            "CASTFLOW_FAL__JWKS_URL": f"{fal.url}/.well-known/jwks.json",
        }
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        reset_settings()
        first = get_runtime()  # migrates the database the receiver writes to
        fal.knobs.run_seconds = 0.3
        ws.knobs.queue_seconds = 0.3
        with serving(create_app(first.settings, engine=first.engine)) as url:
            monkeypatch.setenv("CASTFLOW_WEBHOOKS__PUBLIC_URL", url)
            reset_settings()
            rt = get_runtime()
            for role in (rt.image, rt.speech["fal"]):
                role.client.poll = PollSchedule(first=30, factor=2, cap=60)  # type: ignore[union-attr]
            ensure_sample_actors(rt)
            voice = Voice(provider="fal", model="fal-ai/elevenlabs/tts/multilingual-v2", voice_id="Aria")
            import_actors(
                rt, [ActorSpec(key="kim", name="Kim", portrait="drawn:ava", voice=voice)], base_dir=Path.cwd()
            )
            actor = pipeline.actor_ref(rt, "kim")
            started = time.monotonic()
            variant = pipeline.scene_variant(rt, actor, "a bright studio", 1)
            speech = pipeline.speech(rt, actor, "Webhooks are faster.")
            video = pipeline.lipsync(rt, variant.output, speech.output, resolution="480p", seed=0, mouth=None)
            elapsed = time.monotonic() - started
    ws.cleanup()
    assert elapsed < 20, f"the stages waited for polls ({elapsed:.1f} s)"
    assert rt.storage.exists(video.output.key)
    assert fal.calls["status"] <= 4  # one poll right after each submit, one after each delivery
    assert ws.calls["result"] <= 2
    with rt.session() as s:
        events = {(e.provider, e.status.value) for e in s.scalars(sa.select(WebhookEvent))}
    assert events == {("fal", "completed"), ("wavespeed", "completed")}
