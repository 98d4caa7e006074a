"""Result callbacks: SSRF checks before anything is sent, HMAC signatures, retries, and the
generate-video flow calling back with its result."""

from __future__ import annotations

import ipaddress
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import sqlalchemy as sa
from pydantic import SecretStr

from castflow import callbacks
from castflow.actors import ensure_sample_actors
from castflow.db.tables import StageRun
from castflow.models import VideoRequest
from castflow.runtime import Runtime
from castflow.settings import CallbackSettings, reset_settings

SECRET = "test-callback-secret"


class Receiver:
    """A loopback endpoint that records deliveries and can answer the first ones with errors."""

    def __init__(self) -> None:
        self.received: list[tuple[dict[str, str], bytes]] = []
        self.fail_first: list[int] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                return

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                receiver.received.append((dict(self.headers.items()), body))
                code = receiver.fail_first.pop(0) if receiver.fail_first else 200
                self.send_response(code)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook?run=1"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    thread = threading.Thread(target=r.server.serve_forever, daemon=True)
    thread.start()
    yield r
    r.server.shutdown()
    r.server.server_close()


def settings(**kw: Any) -> CallbackSettings:
    return CallbackSettings(secret=SecretStr(SECRET), backoff_s=0.01, **kw)


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://127.0.0.1:9/x", "non-public"),
        ("http://localhost/x", "non-public"),
        ("http://10.1.2.3/x", "non-public"),
        ("http://192.168.0.10/x", "non-public"),
        ("http://169.254.169.254/latest/meta-data", "non-public"),
        ("http://[::1]/x", "non-public"),
        ("http://0.0.0.0/x", "non-public"),
        ("ftp://example.com/x", r"http\(s\)"),
        ("file:///etc/passwd", r"http\(s\)"),
    ],
)
def test_non_public_or_odd_urls_are_refused(url: str, reason: str) -> None:
    with pytest.raises(callbacks.CallbackRefused, match=reason):
        callbacks.check_url(url, settings())


def test_public_addresses_pass_and_private_ones_only_when_allowed() -> None:
    public = lambda _host: [ipaddress.ip_address("93.184.216.34")]  # noqa: E731
    assert callbacks.check_url("https://hooks.example.com/x", settings(), resolve=public)
    assert callbacks.check_url("http://127.0.0.1:9/x", settings(allow_private=True))
    with pytest.raises(callbacks.CallbackRefused, match="SECRET"):
        callbacks.check_url("https://hooks.example.com/x", CallbackSettings(), resolve=public)


def test_delivery_is_signed_and_retried(receiver: Receiver) -> None:
    receiver.fail_first = [503, 500]
    status = callbacks.deliver(
        receiver.url, {"status": "succeeded", "cost_usd": 0.5}, settings(allow_private=True)
    )
    assert status == 200
    assert len(receiver.received) == 3
    headers, body = receiver.received[-1]
    assert json.loads(body) == {"cost_usd": 0.5, "status": "succeeded"}
    assert callbacks.verify(SECRET, headers, body)
    assert not callbacks.verify("another-secret", headers, body)
    assert not callbacks.verify(SECRET, headers, body + b" ")
    stale = {**headers, "X-Castflow-Timestamp": str(int(headers["X-Castflow-Timestamp"]) - 3600)}
    assert not callbacks.verify(SECRET, stale, body)


@pytest.mark.flow
def test_generate_video_calls_back_with_its_result(
    rt: Runtime, receiver: Receiver, monkeypatch: pytest.MonkeyPatch, prefect_server: None
) -> None:
    from castflow.pipeline import UserError
    from flows.generate_video import generate_video

    monkeypatch.setenv("CASTFLOW_CALLBACKS__SECRET", SECRET)
    reset_settings()
    ensure_sample_actors(rt)
    with pytest.raises(UserError, match="non-public"):  # refused before any spend
        generate_video(VideoRequest(actor="maya", script="Private?"), callback_url=receiver.url)
    with rt.session() as s:
        assert s.scalar(sa.select(sa.func.count()).select_from(StageRun)) == 0
    assert receiver.received == []

    monkeypatch.setenv("CASTFLOW_CALLBACKS__ALLOW_PRIVATE", "true")
    reset_settings()
    result = generate_video(VideoRequest(actor="maya", script="Call me back."), callback_url=receiver.url)
    ((headers, body),) = receiver.received
    assert callbacks.verify(SECRET, headers, body)
    payload = json.loads(body)
    assert payload["status"] == "succeeded"
    assert payload["video_url"] == result.video_url
    assert payload["cost_usd"] == result.cost_usd
    assert SECRET not in body.decode()
