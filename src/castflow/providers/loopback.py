"""What every loopback fake shares: a threaded HTTP server on 127.0.0.1, a request-handler base, and the
fault machinery (seeded draws, knobs set over HTTP, the record of created jobs)."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import random
import socket
import threading
import time
import typing
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import parse_qsl, urlencode, urlparse

import pydantic

# A probability: 0 never, 1 always.
Rate = Annotated[float, pydantic.Field(ge=0.0, le=1.0)]
Codes = Annotated[list[int], pydantic.Field(min_length=1)]


@dataclass
class FaultKnobs:
    """Faults drawn at random, per call, from the fake's generator seeded with ``seed``."""

    seed: int = 0  # a new seed (or any seed set over HTTP) restarts the draws: same calls, same faults
    # Answer a submit with one of the codes and create no job (codes the client may safely retry).
    submit_error_rate: Rate = 0.0
    submit_error_codes: Codes = field(default_factory=lambda: [429, 503])
    lost_answer_rate: Rate = 0.0  # create the job (it runs), then hang up without answering the submit
    result_error_rate: Rate = 0.0
    result_error_codes: Codes = field(default_factory=lambda: [500, 503])
    fail_job_rate: Rate = 0.0  # create the job; it ends failed, as a provider-side failure
    latency_spike_rate: Rate = 0.0  # delay an API answer by latency_spike_s (on top of any latency)
    latency_spike_s: float = 0.0


class Draws:
    """A fake's fault draws: one ``random.Random`` seeded from its knobs, so a run's faults repeat."""

    def __init__(self, seed_of: Callable[[], int]) -> None:
        self._seed_of = seed_of
        self._lock = threading.Lock()
        self._rng = random.Random()  # noqa: S311 - fault injection, not security
        self._seed: int | None = None

    def reseed(self) -> None:
        with self._lock:
            self._seed = self._seed_of()
            self._rng.seed(self._seed)

    def chance(self, rate: float) -> bool:
        """True with probability ``rate``; a rate of 0 draws nothing, so it leaves the sequence alone."""
        return rate > 0 and self._draw(rate, None) is not None

    def error(self, rate: float, codes: Sequence[int]) -> int | None:
        """One of ``codes`` with probability ``rate``, else None."""
        return self._draw(rate, codes) if rate > 0 else None

    def _draw(self, rate: float, codes: Sequence[int] | None) -> int | None:
        with self._lock:
            if self._seed != self._seed_of():  # a seed set in Python rather than over HTTP
                self._seed = self._seed_of()
                self._rng.seed(self._seed)
            if self._rng.random() >= rate:
                return None
            return self._rng.choice(codes) if codes else 1


def set_knobs(knobs: Any, values: Any) -> None:
    """Set a knobs dataclass from a JSON object, all values or none; ValueError names a bad one."""
    if not isinstance(values, dict):
        raise ValueError("knobs must be a JSON object")
    hints = typing.get_type_hints(type(knobs), include_extras=True)
    names = {f.name for f in dataclasses.fields(knobs)}
    parsed: dict[str, Any] = {}
    for name, value in values.items():
        if name not in names:
            raise ValueError(f"unknown knob {name!r}; known: {', '.join(sorted(names))}")
        try:
            parsed[name] = pydantic.TypeAdapter(hints[name]).validate_python(value)
        except pydantic.ValidationError as exc:
            raise ValueError(f"knob {name}: {exc.errors()[0]['msg']}") from None
    for name, value in parsed.items():
        setattr(knobs, name, value)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class Submitted:
    """What the job record keeps of a submit: when, the payload's digest, its inputs', and whether the
    submit was answered (False: the fake hung up on purpose)."""

    created: float
    payload_sha256: str
    input_sha256s: tuple[str, ...]
    answered: bool

    def record(self, provider: str, job_id: str, model: str, status: str) -> dict[str, Any]:
        return {
            "provider": provider,
            "id": job_id,
            "model": model,
            "created": self.created,
            "payload_sha256": self.payload_sha256,
            "input_sha256s": list(self.input_sha256s),
            "status": status,
            "answered": self.answered,
        }


def payload_digest(payload: Any, own_url: str, sha256s: dict[str, str]) -> tuple[str, tuple[str, ...]]:
    """The sha256 of the payload's canonical JSON (sorted keys), and the content sha256s of its inputs.

    Every upload gets a fresh URL, even of the same bytes, so a URL of a file the fake stores (a key of
    ``sha256s``, its URL path) stands for ``sha256:<content digest>``; a Supabase signed URL loses its
    token, fresh per signing. The same stage then digests the same however often its inputs moved.
    """
    inputs: list[str] = []

    def canonical(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: canonical(v) for k, v in value.items()}
        if isinstance(value, list):
            return [canonical(v) for v in value]
        if not isinstance(value, str):
            return value
        url = urlparse(value)
        if value.startswith(own_url + "/") and url.path in sha256s:
            inputs.append(sha256s[url.path])
            return f"sha256:{inputs[-1]}"
        if "/object/sign/" in url.path and url.query:
            query = [(k, v) for k, v in parse_qsl(url.query) if k != "token"]
            return url._replace(query=urlencode(query)).geturl()
        return value

    text = json.dumps(canonical(payload), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest(), tuple(inputs)


class JobLog:
    """The jobs file: one JSON line per created job, written straight to the file (no buffer), so the
    record outlives a killed process. Fakes may share one (appends do not interleave)."""

    def __init__(self, path: Path) -> None:
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def append(self, record: dict[str, Any]) -> None:
        os.write(self._fd, (json.dumps(record) + "\n").encode())

    def close(self) -> None:
        os.close(self._fd)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # The default listen backlog (5) drops connections when a campaign opens dozens at once.
    request_queue_size = 512


class LoopbackServer:
    """A fake served on an ephemeral loopback port while :meth:`running` is active; ``url`` is its base.

    Subclasses have ``knobs`` (a :class:`FaultKnobs`), ``lock``, ``calls`` and ``job_records()``.
    """

    handler: type[BaseHTTPRequestHandler]
    knobs: Any

    def __init__(self) -> None:
        self.url = ""
        self._server: ThreadingHTTPServer | None = None
        self.draws = Draws(lambda: int(self.knobs.seed))
        self.sha256s: dict[str, str] = {}  # URL path of a stored file → its content's sha256
        self.job_log: JobLog | None = None  # every created job is appended here too, when set

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

    def submitted(self, payload: Any, *, answered: bool) -> Submitted:
        digest, inputs = payload_digest(payload, self.url, self.sha256s)
        return Submitted(time.time(), digest, inputs, answered)

    def log_job(self, record: dict[str, Any]) -> None:
        if self.job_log is not None:
            self.job_log.append(record)


class JsonHandler(BaseHTTPRequestHandler):
    """HTTP/1.1 handler with JSON/bytes replies and a body reader that understands chunked uploads."""

    protocol_version = "HTTP/1.1"
    fake: Any  # the LoopbackServer serving this handler

    def counted(
        self,
        call: str,
        error_body: Callable[[int], Any],
        *,
        scripted: list[int] | None = None,
        rate: float = 0.0,
        codes: Sequence[int] = (),
    ) -> bool:
        """Count the call; answer it with the next ``scripted`` HTTP error if one is queued, else with
        one of ``codes`` drawn at ``rate`` (True then)."""
        with self.fake.lock:
            self.fake.calls[call] += 1
            code = scripted.pop(0) if scripted else None
        if code is None:
            code = self.fake.draws.error(rate, codes)
        if code:
            self.send(code, error_body(code))
        return code is not None

    def answered_fake(self) -> bool:
        """The fake's own routes, for tests and benchmarks that run it in another process:
        ``GET /_fake/calls`` (call counters), ``GET /_fake/jobs`` (every job created, in order) and
        ``GET``/``POST /_fake/knobs`` (read, or set from a JSON object: the knobs as they are now)."""
        path = urlparse(self.path).path
        fake = self.fake
        if path == "/_fake/calls" and self.command == "GET":
            with fake.lock:
                self.send(200, dict(fake.calls))
        elif path == "/_fake/jobs" and self.command == "GET":
            self.send(200, fake.job_records())
        elif path == "/_fake/knobs" and self.command in ("GET", "POST"):
            if self.command == "POST":
                try:
                    values = json.loads(self.body() or b"{}")
                    with fake.lock:
                        set_knobs(fake.knobs, values)
                except ValueError as exc:
                    self.send(400, {"detail": str(exc)})
                    return True
                if "seed" in values:
                    fake.draws.reseed()
            with fake.lock:
                self.send(200, dataclasses.asdict(fake.knobs))
        else:
            return False
        return True

    def delay(self) -> None:
        """Wait before an API answer: the ``latency`` knob, plus a spike now and then."""
        knobs = self.fake.knobs
        spike = knobs.latency_spike_s if self.fake.draws.chance(knobs.latency_spike_rate) else 0.0
        if knobs.latency + spike > 0:
            time.sleep(knobs.latency + spike)

    def hang_up(self) -> None:
        """Close the connection without an answer: the client cannot tell what became of its request."""
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)

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
