"""What every loopback fake shares: a threaded HTTP server on 127.0.0.1 and a request-handler base."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # The default listen backlog (5) drops connections when a campaign opens dozens at once.
    request_queue_size = 512


class LoopbackServer:
    """A fake served on an ephemeral loopback port while :meth:`running` is active; ``url`` is its base."""

    handler: type[BaseHTTPRequestHandler]

    def __init__(self) -> None:
        self.url = ""
        self._server: ThreadingHTTPServer | None = None

    @contextmanager
    def running(self) -> Iterator[Any]:
        handler = type("Handler", (self.handler,), {"fake": self})
        self._server = _Server(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self._server.shutdown()
            self._server.server_close()
            self.stopped()

    def stopped(self) -> None:
        """Hook: release what the fake holds once its server is down."""


class JsonHandler(BaseHTTPRequestHandler):
    """HTTP/1.1 handler with JSON/bytes replies and a body reader that understands chunked uploads."""

    protocol_version = "HTTP/1.1"
    fake: Any  # the LoopbackServer serving this handler (it has ``lock`` and ``calls``)

    def counted(self, call: str, errors: list[int], error_body: Callable[[int], Any]) -> bool:
        """Count the call; answer it with the next injected HTTP error, if one is queued (True then)."""
        with self.fake.lock:
            self.fake.calls[call] += 1
            code = errors.pop(0) if errors else None
        if code:
            self.send(code, error_body(code))
        return code is not None

    def answered_calls(self) -> bool:
        """``GET /_fake/calls``: the call counters, for benchmarks that run the fake in another process."""
        if self.path != "/_fake/calls":
            return False
        with self.fake.lock:
            self.send(200, dict(self.fake.calls))
        return True

    def log_message(self, format: str, *args: Any) -> None:
        return

    def send(self, code: int, body: Any, headers: dict[str, str] | None = None) -> None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Length", str(len(data)))
        if not isinstance(body, bytes):
            self.send_header("Content-Type", "application/json")
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            return self.rfile.read(length)
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            out = bytearray()
            while True:
                size = int(self.rfile.readline().strip() or b"0", 16)
                if size == 0:
                    self.rfile.readline()
                    return bytes(out)
                out += self.rfile.read(size)
                self.rfile.readline()
        return b""


def multipart_file(body: bytes, content_type: str, field: str = "file") -> tuple[str, str, bytes] | None:
    """The (filename, content type, bytes) of one file field of a multipart/form-data body."""
    marker = "boundary="
    if marker not in content_type:
        return None
    boundary = content_type.split(marker, 1)[1].split(";", maxsplit=1)[0].strip().strip('"').encode()
    for part in body.split(b"--" + boundary):
        head, sep, data = part.partition(b"\r\n\r\n")
        if not sep:
            continue
        headers = head.decode("utf-8", "replace").strip().split("\r\n")
        disposition = next((h for h in headers if h.lower().startswith("content-disposition")), "")
        if f'name="{field}"' not in disposition:
            continue
        filename = "upload.bin"
        if 'filename="' in disposition:
            filename = disposition.split('filename="', 1)[1].split('"', 1)[0]
        ctype = next(
            (h.split(":", 1)[1].strip() for h in headers if h.lower().startswith("content-type")),
            "application/octet-stream",
        )
        return filename, ctype, data.removesuffix(b"\r\n")
    return None
