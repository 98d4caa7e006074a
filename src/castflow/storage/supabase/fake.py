"""A loopback fake of Supabase Storage: the REST subset and minimal TUS of Appendix A of
docs/providers/supabase-storage-and-postgres.md, with the real error shape (HTTP 400, true status in
the body's ``statusCode``).

Object bytes live on disk and every body is streamed in blocks, so 100 MB uploads do not grow the
process (memory tests run the fake in the same process as the client). Knobs inject 5xx/429 answers,
dropped connections and latency; ``calls`` counts requests per route. ``knobs`` draws errors at random
on object calls, seeded so a run repeats; ``GET``/``POST /_fake/knobs`` and ``GET /_fake/calls`` serve a
fake that runs in another process.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import email.parser
import hashlib
import json
import secrets
import shutil
import sys
import tempfile
import threading
import time
import typing
import uuid
from base64 import b64decode
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qs, quote, unquote, urlparse

from pydantic import SecretStr

from castflow.providers.loopback import Codes, Draws, Rate, set_knobs
from castflow.storage.supabase.settings import SupabaseStorageSettings

SERVICE_KEY = "fake-service-role-key-0123456789"
PREFIX = "/storage/v1"
TUS_VERSION = "1.0.0"
BLOCK = 256 * 1024

# Route names used by ``calls``, by ``Fault.route`` and by ``Knobs.error_routes``.
Route = Literal[
    "move",
    "bucket_create",
    "bucket_list",
    "bucket_get",
    "upload",
    "update",
    "download",
    "download_public",
    "download_signed",
    "head",
    "info",
    "sign",
    "list",
    "remove",
    "tus_create",
    "tus_head",
    "tus_patch",
    "tus_other",
]
ROUTES: tuple[str, ...] = typing.get_args(Route)
# Uploads, downloads, signing and ``exists`` (storage3 asks ``info``): what a stage's storage calls are.
OBJECT_ROUTES: tuple[Route, ...] = (
    "upload",
    "update",
    "download",
    "download_public",
    "download_signed",
    "head",
    "info",
    "sign",
)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass
class Bucket:
    """A bucket as the server stores it."""

    id: str
    public: bool = False
    file_size_limit: int | None = None
    allowed_mime_types: list[str] | None = None
    name: str = ""
    created_at: str = field(default_factory=_now)
    updated_at: str = field(default_factory=_now)

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name or self.id,
            "owner": "",
            "public": self.public,
            "file_size_limit": self.file_size_limit,
            "allowed_mime_types": self.allowed_mime_types,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
        }


@dataclass
class StoredObject:
    """One object: its bytes in ``path`` on disk, the rest in memory."""

    id: str
    bucket: str
    key: str
    path: Path
    size: int
    mimetype: str
    cache_control: str
    etag: str
    created_at: str
    updated_at: str

    def metadata(self) -> dict[str, Any]:
        return {
            "size": self.size,
            "mimetype": self.mimetype,
            "cacheControl": self.cache_control,
            "eTag": self.etag,
        }


@dataclass
class Upload:
    """A TUS upload in progress; received bytes are appended to ``path``."""

    id: str
    bucket: str
    key: str
    length: int
    content_type: str
    cache_control: str
    upsert: bool
    path: Path
    offset: int = 0


@dataclass
class Fault:
    """One injected answer. ``route`` None matches any route (see ``ROUTES``).

    ``raw`` False answers in Storage's shape (HTTP 400, or 500, with ``statusCode`` in the body);
    ``raw`` True answers like a proxy in front of it: the HTTP status itself and an HTML body.
    ``drop_after`` set: read that many body bytes (a TUS PATCH keeps them), then close the connection
    without an answer.
    """

    status: int = 503
    route: str | None = None
    raw: bool = False
    error: str = "injected"
    message: str = "injected fault"
    retry_after: float | None = None
    drop_after: int | None = None


@dataclass
class Knobs:
    """Errors drawn at random, per call, from the fake's generator seeded with ``seed``."""

    seed: int = 0  # a new seed (or any seed set over HTTP) restarts the draws: same calls, same faults
    error_rate: Rate = 0.0  # answer a call on error_routes with one of error_codes, in Storage's shape
    error_codes: Codes = field(default_factory=lambda: [500, 503])
    error_routes: list[Route] = field(default_factory=lambda: list(OBJECT_ROUTES))


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]


def default_buckets(public: bool = False) -> list[Bucket]:
    """The four buckets of the default settings."""
    s = SupabaseStorageSettings()
    names = (s.audio_bucket, s.video_bucket, s.image_bucket, s.other_bucket)
    return [Bucket(name, public=public) for name in names]


class _Reject(Exception):
    """An error answer in Storage's shape, raised inside a route."""

    def __init__(self, status: str, error: str, message: str, code: str = "") -> None:
        super().__init__(message)
        self.status, self.error, self.message, self.code = status, error, message, code


def _not_found() -> _Reject:
    return _Reject("404", "not_found", "Object not found", "NoSuchKey")


def _no_bucket() -> _Reject:
    return _Reject("404", "Bucket not found", "Bucket not found", "NoSuchBucket")


def _duplicate(code: str = "KeyAlreadyExists") -> _Reject:
    return _Reject("409", "Duplicate", "The resource already exists", code)


class FakeSupabaseStorage:
    """Start with :meth:`running`; ``url`` is the project URL (the API lives under ``/storage/v1``)."""

    def __init__(
        self, buckets: Sequence[Bucket] | None = None, *, key: str = SERVICE_KEY, latency: float = 0.0
    ) -> None:
        self.key = key
        self.latency = latency
        self.buckets: dict[str, Bucket] = {
            b.id: b for b in (default_buckets() if buckets is None else buckets)
        }
        self.objects: dict[tuple[str, str], StoredObject] = {}
        self.uploads: dict[str, Upload] = {}
        self.tokens: dict[str, tuple[str, str, float]] = {}
        self.faults: list[Fault] = []
        self.knobs = Knobs()
        self.draws = Draws(lambda: self.knobs.seed)
        self.calls: Counter[str] = Counter()
        self.requests: collections.deque[RecordedRequest] = collections.deque(maxlen=10_000)
        self.lock = threading.Lock()
        self.dir = Path(tempfile.mkdtemp(prefix="fake-supabase-"))
        self._server: _Server | None = None
        self.url = ""

    @contextmanager
    def running(self) -> Iterator[FakeSupabaseStorage]:
        handler = type("Handler", (_Handler,), {"fake": self})
        self._server = _Server(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self._server.shutdown()
            self._server.server_close()
            shutil.rmtree(self.dir, ignore_errors=True)

    # ---- knobs and test helpers ------------------------------------------------------------------

    def fail(
        self,
        status: int = 503,
        *,
        times: int = 1,
        route: str | None = None,
        raw: bool = False,
        retry_after: float | None = None,
        error: str = "injected",
        message: str = "injected fault",
    ) -> None:
        """Answer the next ``times`` matching requests with ``status``."""
        if route is not None and route not in ROUTES:
            raise ValueError(f"unknown route {route!r}")
        with self.lock:
            self.faults.extend(Fault(status, route, raw, error, message, retry_after) for _ in range(times))

    def drop_connection(self, *, after_bytes: int, route: str = "tus_patch") -> None:
        """Read ``after_bytes`` of the next matching request's body, then hang up without answering."""
        with self.lock:
            self.faults.append(Fault(route=route, drop_after=after_bytes))

    def settings(self, **overrides: Any) -> SupabaseStorageSettings:
        """Settings that point castflow at this fake."""
        values: dict[str, Any] = {"url": self.url, "service_role_key": SecretStr(self.key), **overrides}
        return SupabaseStorageSettings(**values)

    def object(self, bucket: str, key: str) -> StoredObject | None:
        with self.lock:
            return self.objects.get((bucket, key))

    def read(self, bucket: str, key: str) -> bytes:
        """The stored bytes (tests only: reads the whole object)."""
        obj = self.object(bucket, key)
        if obj is None:
            raise KeyError(f"{bucket}/{key}")
        return obj.path.read_bytes()

    # ---- storage ---------------------------------------------------------------------------------

    def _new_file(self) -> Path:
        return self.dir / uuid.uuid4().hex

    def _commit(
        self,
        bucket: str,
        key: str,
        data: Path,
        *,
        size: int,
        mimetype: str,
        cache_control: str,
        etag: str,
        must_be_new: bool,
    ) -> StoredObject:
        now = _now()
        with self.lock:
            old = self.objects.get((bucket, key))
            if old is not None and must_be_new:
                data.unlink(missing_ok=True)
                raise _duplicate()
            obj = StoredObject(
                id=str(uuid.uuid4()),
                bucket=bucket,
                key=key,
                path=data,
                size=size,
                mimetype=mimetype,
                cache_control=cache_control,
                etag=etag,
                created_at=old.created_at if old else now,
                updated_at=now,
            )
            self.objects[(bucket, key)] = obj
        if old is not None:
            old.path.unlink(missing_ok=True)  # readers that have it open keep reading (POSIX)
        return obj

    def _take_fault(self, route: str) -> Fault | None:
        with self.lock:
            for i, fault in enumerate(self.faults):
                if fault.route is None or fault.route == route:
                    return self.faults.pop(i)
        return None


def _cache_control(value: str) -> str:
    value = value.strip()
    return f"max-age={value}" if value.isdigit() else value


def _parse_tus_metadata(header: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for pair in header.split(","):
        parts = pair.strip().split(" ")
        if parts and parts[0]:
            out[parts[0]] = b64decode(parts[1]).decode() if len(parts) > 1 else ""
    return out


def _multipart(
    blocks: Iterator[bytes], boundary: bytes, sink: Callable[[bytes], None]
) -> tuple[dict[str, str], str | None]:
    """Stream a multipart/form-data body: the ``file`` part goes to ``sink`` block by block.

    Returns the other form fields and the file part's content type (None if there was no file part).
    """
    sep = b"\r\n--" + boundary
    buf = b"\r\n"  # the first delimiter has no leading CRLF

    def fill() -> None:
        nonlocal buf
        chunk = next(blocks, b"")
        if not chunk:
            raise ValueError("truncated multipart body")
        buf += chunk

    while (i := buf.find(sep)) < 0:
        buf = buf[-len(sep) :]
        fill()
    buf = buf[i + len(sep) :]
    fields: dict[str, str] = {}
    file_type: str | None = None
    while True:
        while len(buf) < 2:
            fill()
        if buf.startswith(b"--"):
            return fields, file_type
        while (j := buf.find(b"\r\n\r\n")) < 0:
            if len(buf) > 64 * 1024:
                raise ValueError("multipart part headers too long")
            fill()
        head = email.parser.HeaderParser().parsestr(buf[:j].decode("utf-8", "replace").lstrip("\r\n"))
        buf = buf[j + 4 :]
        name = str(head.get_param("name", header="content-disposition") or "")
        is_file = name == "file"
        if is_file:
            file_type = head.get_content_type() if head.get("content-type") else "application/octet-stream"
        value = bytearray()
        emit: Callable[[bytes], None] = sink if is_file else value.extend
        keep = len(sep) - 1
        while (k := buf.find(sep)) < 0:
            if len(buf) > keep:
                emit(buf[:-keep])
                buf = buf[-keep:]
            fill()
        emit(buf[:k])
        buf = buf[k + len(sep) :]
        if not is_file:
            fields[name] = value.decode("utf-8", "replace")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 512  # the default backlog (5) drops connections under load

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], ConnectionError):
            return  # a client that hung up (timeouts in tests): not worth a traceback
        super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    fake: FakeSupabaseStorage
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body are separate writes: no 40 ms delayed-ACK stalls

    def log_message(self, format: str, *args: Any) -> None:
        return

    # ---- request body ----------------------------------------------------------------------------

    def _start_body(self) -> None:
        self._chunked = "chunked" in self.headers.get("Transfer-Encoding", "").lower()
        self._left = 0 if self._chunked else int(self.headers.get("Content-Length") or 0)
        self._body_done = not self._chunked and self._left == 0

    def _blocks(self, limit: int | None = None) -> Iterator[bytes]:
        """The request body in blocks of at most BLOCK bytes (at most ``limit`` bytes in all)."""
        budget = limit if limit is not None else -1
        if self._chunked:
            while not self._body_done and budget != 0:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline().strip():
                        pass
                    self._body_done = True
                    return
                while size > 0 and budget != 0:
                    n = min(size, BLOCK) if budget < 0 else min(size, BLOCK, budget)
                    data = self.rfile.read(n)
                    if not data:
                        raise ConnectionError("client went away")
                    size -= len(data)
                    budget -= len(data) if budget > 0 else 0
                    yield data
                if size == 0:
                    self.rfile.readline()
            return
        while self._left > 0 and budget != 0:
            n = min(self._left, BLOCK) if budget < 0 else min(self._left, BLOCK, budget)
            data = self.rfile.read(n)
            if not data:
                raise ConnectionError("client went away")
            self._left -= len(data)
            if budget > 0:
                budget -= len(data)
            yield data
        if self._left == 0:
            self._body_done = True

    def _drain(self) -> None:
        if not self._body_done:
            for _ in self._blocks():
                pass

    def _json_body(self) -> Any:
        data = b"".join(self._blocks())
        try:
            return json.loads(data or b"{}")
        except ValueError as exc:
            raise _Reject("400", "InvalidRequest", "body is not valid JSON") from exc

    # ---- responses -------------------------------------------------------------------------------

    def _send(
        self,
        code: int,
        body: Any = b"",
        headers: dict[str, str] | None = None,
        content_type: str = "application/json",
    ) -> None:
        self._drain()
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Length", str(len(data)))
        if data:
            self.send_header("Content-Type", content_type)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _error(self, reject: _Reject, headers: dict[str, str] | None = None) -> None:
        body = {
            "statusCode": reject.status,
            "code": reject.code or reject.error,
            "error": reject.error,
            "message": reject.message,
        }
        self._send(500 if reject.status == "500" else 400, body, headers)

    def _send_object(self, obj: StoredObject) -> None:
        self._drain()
        self.send_response(200)
        self.send_header("Content-Type", obj.mimetype)
        self.send_header("Content-Length", str(obj.size))
        self.send_header("ETag", obj.etag)
        self.send_header("Cache-Control", obj.cache_control)
        self.end_headers()
        if self.command == "HEAD":
            return
        with open(obj.path, "rb") as src:
            shutil.copyfileobj(src, self.wfile, BLOCK)

    # ---- dispatch --------------------------------------------------------------------------------

    def do_GET(self) -> None:
        self._dispatch()

    def do_HEAD(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def do_PUT(self) -> None:
        self._dispatch()

    def do_PATCH(self) -> None:
        self._dispatch()

    def do_DELETE(self) -> None:
        self._dispatch()

    def do_OPTIONS(self) -> None:
        self._dispatch()

    def _route(self, method: str, segs: list[str]) -> tuple[str, Callable[[], None]] | None:
        if not segs:
            return None
        head, rest = segs[0], segs[1:]
        if head == "bucket":
            if method == "POST" and not rest:
                return "bucket_create", self._bucket_create
            if method == "GET" and not rest:
                return "bucket_list", self._bucket_list
            if method == "GET" and len(rest) == 1:
                return "bucket_get", lambda: self._bucket_get(rest[0])
            return None
        if head == "upload" and rest[:1] == ["resumable"]:
            if len(rest) == 1:
                return ("tus_create", self._tus_create) if method == "POST" else None
            if len(rest) == 2:
                if method == "HEAD":
                    return "tus_head", lambda: self._tus_head(rest[1])
                if method == "PATCH":
                    return "tus_patch", lambda: self._tus_patch(rest[1])
                return "tus_other", lambda: self._send(405, b"", self._tus_headers())
            return None
        if head != "object" or not rest:
            return None
        sub = rest[0]
        if sub == "move" and len(rest) == 1 and method == "POST":
            return "move", self._move
        if sub in ("sign", "public", "info", "list") and len(rest) >= 2:
            bucket, key = rest[1], "/".join(rest[2:])
            if sub == "list" and method == "POST" and not key:
                return "list", lambda: self._list(bucket)
            if sub == "sign" and key and method == "POST":
                return "sign", lambda: self._sign(bucket, key)
            if sub == "sign" and key and method == "GET":
                return "download_signed", lambda: self._download_signed(bucket, key)
            if sub == "public" and key and method == "GET":
                return "download_public", lambda: self._download_public(bucket, key)
            if sub == "info" and key and method == "GET":
                return "info", lambda: self._info(bucket, key)
            return None
        bucket, key = rest[0], "/".join(rest[1:])
        if not key:
            return ("remove", lambda: self._remove(bucket)) if method == "DELETE" else None
        if method in ("POST", "PUT"):
            name = "upload" if method == "POST" else "update"
            return name, lambda: self._upload(method, bucket, key)
        if method == "GET":
            return "download", lambda: self._download(bucket, key)
        if method == "HEAD":
            return "head", lambda: self._download(bucket, key)
        return None

    def _dispatch(self) -> None:
        fake = self.fake
        self._start_body()
        url = urlparse(self.path)
        self._query = parse_qs(url.query)
        if url.path.startswith("/_fake/"):
            self._fake_route(url.path)
            return
        with fake.lock:
            fake.requests.append(RecordedRequest(self.command, url.path, dict(self.headers.items())))
        path = url.path
        found = None
        if path == PREFIX or path.startswith(PREFIX + "/"):
            segs = [unquote(s) for s in path[len(PREFIX) :].strip("/").split("/") if s]
            found = self._route(self.command, segs)
        if found is None:
            self._error(_Reject("400", "InvalidRequest", f"route not faked: {self.command} {url.path}"))
            return
        name, run = found
        with fake.lock:
            fake.calls[name] += 1
        if fake.latency:
            time.sleep(fake.latency)
        fault = fake._take_fault(name)
        if fault is None and name in fake.knobs.error_routes:
            code = fake.draws.error(fake.knobs.error_rate, fake.knobs.error_codes)
            fault = Fault(code, name) if code is not None else None
        try:
            if fault is not None and self._inject(name, fault):
                return
            if name not in ("download_public", "download_signed") and not self._authorised():
                raise _Reject("403", "Unauthorized", "Invalid Compact JWS", "AccessDenied")
            run()
        except _Reject as reject:
            self._error(reject, self._tus_headers() if name.startswith("tus") else None)

    def _fake_route(self, path: str) -> None:
        """``GET /_fake/calls`` (counters per route) and ``GET``/``POST /_fake/knobs`` (read, or set from
        a JSON object: the knobs as they are now), for a fake that runs in another process."""
        fake = self.fake
        if path == "/_fake/calls" and self.command == "GET":
            with fake.lock:
                self._send(200, dict(fake.calls))
            return
        if path != "/_fake/knobs" or self.command not in ("GET", "POST"):
            self._send(404, {"detail": f"no route {self.command} {path}"})
            return
        if self.command == "POST":
            try:
                values = self._json_body()
                with fake.lock:
                    set_knobs(fake.knobs, values)
            except (_Reject, ValueError) as exc:
                self._send(400, {"detail": str(exc)})
                return
            if "seed" in values:
                fake.draws.reseed()
        with fake.lock:
            self._send(200, dataclasses.asdict(fake.knobs))

    def _authorised(self) -> bool:
        key = self.fake.key
        return self.headers.get("apikey") == key and self.headers.get("Authorization") == f"Bearer {key}"

    def _inject(self, route: str, fault: Fault) -> bool:
        """Apply a fault; True when the request has been answered (or dropped)."""
        if fault.drop_after is not None:
            upload = self.fake.uploads.get(self.path.rstrip("/").split("/")[-1])
            if route == "tus_patch" and upload is not None:
                offset = int(self.headers.get("Upload-Offset") or -1)
                if offset == upload.offset:
                    with open(upload.path, "ab") as out:
                        for block in self._blocks(limit=fault.drop_after):
                            out.write(block)
                            upload.offset += len(block)
            else:
                for _ in self._blocks(limit=fault.drop_after):
                    pass
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(2)  # socket.SHUT_RDWR
            return True
        headers = {"Retry-After": f"{fault.retry_after:g}"} if fault.retry_after is not None else {}
        if fault.raw:
            html = f"<html><body><h1>{fault.status}</h1>{fault.message}</body></html>".encode()
            self._send(fault.status, html, headers, content_type="text/html")
        else:
            self._error(_Reject(str(fault.status), fault.error, fault.message), headers)
        return True

    # ---- buckets ---------------------------------------------------------------------------------

    def _bucket_create(self) -> None:
        body = self._json_body()
        bucket_id = body.get("id") if isinstance(body, dict) else None
        if not bucket_id:
            raise _Reject("400", "InvalidRequest", "body must have required property 'id'")
        bucket = Bucket(
            id=str(bucket_id),
            name=str(body.get("name") or bucket_id),
            public=bool(body.get("public", False)),
            file_size_limit=body.get("file_size_limit"),
            allowed_mime_types=body.get("allowed_mime_types"),
        )
        with self.fake.lock:
            if bucket.id in self.fake.buckets:
                raise _duplicate("BucketAlreadyExists")
            self.fake.buckets[bucket.id] = bucket
        self._send(200, {"name": bucket.id})

    def _bucket_list(self) -> None:
        with self.fake.lock:
            body = [b.as_json() for b in self.fake.buckets.values()]
        self._send(200, body)

    def _bucket_get(self, bucket_id: str) -> None:
        self._send(200, self._bucket(bucket_id).as_json())

    def _bucket(self, bucket_id: str) -> Bucket:
        bucket = self.fake.buckets.get(bucket_id)
        if bucket is None:
            raise _no_bucket()
        return bucket

    def _object(self, bucket_id: str, key: str) -> StoredObject:
        self._bucket(bucket_id)
        obj = self.fake.object(bucket_id, key)
        if obj is None:
            raise _not_found()
        return obj

    # ---- objects ---------------------------------------------------------------------------------

    def _upload(self, method: str, bucket_id: str, key: str) -> None:
        fake = self.fake
        bucket = self._bucket(bucket_id)
        upsert = self.headers.get("x-upsert", "").lower() == "true"
        existing = fake.object(bucket_id, key)
        if method == "POST" and existing is not None and not upsert:
            raise _duplicate()
        if method == "PUT" and existing is None:
            raise _not_found()
        target = fake._new_file()
        md5 = hashlib.md5()  # noqa: S324 - an ETag, as the real server computes it
        size = 0
        try:
            with open(target, "wb") as out:

                def sink(data: bytes) -> None:
                    nonlocal size
                    out.write(data)
                    md5.update(data)
                    size += len(data)

                ctype = self.headers.get_content_type()
                if ctype == "multipart/form-data":
                    boundary = str(self.headers.get_param("boundary") or "")
                    if not boundary:
                        raise _Reject("400", "InvalidRequest", "multipart body without a boundary")
                    try:
                        fields, file_type = _multipart(self._blocks(), boundary.encode(), sink)
                    except ValueError as exc:
                        raise _Reject("400", "InvalidRequest", str(exc)) from exc
                    if file_type is None:
                        raise _Reject("400", "InvalidRequest", "no file part named 'file'")
                    mimetype = file_type
                    cache_control = _cache_control(fields.get("cacheControl", "no-cache"))
                else:
                    for block in self._blocks():
                        sink(block)
                    mimetype = self.headers.get("Content-Type") or "application/octet-stream"
                    cache_control = self.headers.get("cache-control") or "no-cache"
            if bucket.file_size_limit is not None and size > bucket.file_size_limit:
                raise _Reject(
                    "413",
                    "Payload too large",
                    "The object exceeded the maximum allowed size",
                    "EntityTooLarge",
                )
            obj = fake._commit(
                bucket_id,
                key,
                target,
                size=size,
                mimetype=mimetype,
                cache_control=cache_control,
                etag=f'"{md5.hexdigest()}"',
                must_be_new=method == "POST" and not upsert,
            )
        except BaseException:
            target.unlink(missing_ok=True)
            raise
        self._send(200, {"Id": obj.id, "Key": f"{bucket_id}/{key}"})

    def _download(self, bucket_id: str, key: str) -> None:
        self._send_object(self._object(bucket_id, key))

    def _download_public(self, bucket_id: str, key: str) -> None:
        if not self._bucket(bucket_id).public:
            raise _Reject("400", "InvalidRequest", "Bucket is not public")
        self._send_object(self._object(bucket_id, key))

    def _download_signed(self, bucket_id: str, key: str) -> None:
        token = (self._query.get("token") or [""])[0]
        with self.fake.lock:
            grant = self.fake.tokens.get(token)
        if grant is None or grant[:2] != (bucket_id, key) or grant[2] < time.time():
            raise _Reject("400", "InvalidJWT", "jwt expired", "InvalidJWT")
        self._send_object(self._object(bucket_id, key))

    def _sign(self, bucket_id: str, key: str) -> None:
        body = self._json_body()
        try:
            expires_in = int(body["expiresIn"])
        except (KeyError, TypeError, ValueError) as exc:
            raise _Reject("400", "InvalidRequest", "body must have required property 'expiresIn'") from exc
        self._object(bucket_id, key)
        token = secrets.token_urlsafe(24)
        with self.fake.lock:
            self.fake.tokens[token] = (bucket_id, key, time.time() + expires_in)
        path = quote(f"{bucket_id}/{key}")
        self._send(200, {"signedURL": f"/object/sign/{path}?token={token}"})

    def _info(self, bucket_id: str, key: str) -> None:
        obj = self._object(bucket_id, key)
        self._send(
            200,
            {
                "id": obj.id,
                "name": obj.key,
                "bucket_id": obj.bucket,
                "size": obj.size,
                "content_type": obj.mimetype,
                "cache_control": obj.cache_control,
                "etag": obj.etag,
                "metadata": obj.metadata(),
                "created_at": obj.created_at,
                "updated_at": obj.updated_at,
                "last_modified": obj.updated_at,
            },
        )

    def _list(self, bucket_id: str) -> None:
        self._bucket(bucket_id)
        body = self._json_body()
        prefix = str(body.get("prefix") or "").strip("/")
        limit = int(body.get("limit", 100))
        offset = int(body.get("offset", 0))
        search = str(body.get("search") or "")
        base = f"{prefix}/" if prefix else ""
        entries: dict[str, dict[str, Any]] = {}
        with self.fake.lock:
            objects = [o for (b, k), o in self.fake.objects.items() if b == bucket_id and k.startswith(base)]
        for obj in objects:
            rel = obj.key[len(base) :]
            name, _, below = rel.partition("/")
            if search and not name.startswith(search):
                continue
            if below:
                entries.setdefault(
                    name, {"name": name, "id": None, "metadata": None, "created_at": None, "updated_at": None}
                )
            else:
                entries[name] = {
                    "name": name,
                    "id": obj.id,
                    "metadata": obj.metadata(),
                    "created_at": obj.created_at,
                    "updated_at": obj.updated_at,
                    "last_accessed_at": obj.updated_at,
                }
        ordered = [entries[n] for n in sorted(entries)]
        self._send(200, ordered[offset : offset + limit])

    def _move(self) -> None:
        """POST /object/move {bucketId, sourceKey, destinationKey}: atomic here (one lock)."""
        body = self._json_body()
        bucket_id = str(body.get("bucketId") or "")
        source, dest = str(body.get("sourceKey") or ""), str(body.get("destinationKey") or "")
        self._bucket(bucket_id)
        with self.fake.lock:
            obj = self.fake.objects.pop((bucket_id, source), None)
            if obj is None:
                raise _not_found()
            self.fake.objects[(bucket_id, dest)] = dataclasses.replace(obj, key=dest)
        self._send(200, {"message": "Successfully moved"})

    def _remove(self, bucket_id: str) -> None:
        self._bucket(bucket_id)
        body = self._json_body()
        keys = body.get("prefixes") if isinstance(body, dict) else None
        if not isinstance(keys, list):
            raise _Reject("400", "InvalidRequest", "body must have required property 'prefixes'")
        removed: list[StoredObject] = []
        with self.fake.lock:
            for key in keys:
                obj = self.fake.objects.pop((bucket_id, str(key)), None)
                if obj is not None:
                    removed.append(obj)
        for obj in removed:
            obj.path.unlink(missing_ok=True)
        self._send(
            200,
            [{"name": o.key, "bucket_id": o.bucket, "id": o.id, "metadata": o.metadata()} for o in removed],
        )

    # ---- TUS -------------------------------------------------------------------------------------

    def _tus_headers(self) -> dict[str, str]:
        return {"Tus-Resumable": TUS_VERSION}

    def _tus_check_version(self) -> bool:
        if self.headers.get("Tus-Resumable") != TUS_VERSION:
            self._send(412, b"", {**self._tus_headers(), "Tus-Version": TUS_VERSION})
            return False
        return True

    def _tus_create(self) -> None:
        if not self._tus_check_version():
            return
        try:
            length = int(self.headers.get("Upload-Length") or "")
        except ValueError as exc:
            raise _Reject("400", "InvalidRequest", "Upload-Length is missing or not a number") from exc
        meta = _parse_tus_metadata(self.headers.get("Upload-Metadata") or "")
        bucket_id, key = meta.get("bucketName", ""), meta.get("objectName", "")
        if not key:
            raise _Reject("400", "InvalidRequest", "Upload-Metadata must name bucketName and objectName")
        self._bucket(bucket_id)
        upload = Upload(
            id=uuid.uuid4().hex,
            bucket=bucket_id,
            key=key,
            length=length,
            content_type=meta.get("contentType") or "application/octet-stream",
            cache_control=_cache_control(meta.get("cacheControl") or "3600"),
            upsert=self.headers.get("x-upsert", "").lower() == "true",
            path=self.fake._new_file(),
        )
        upload.path.touch()
        with self.fake.lock:
            self.fake.uploads[upload.id] = upload
        location = f"{self.fake.url}{PREFIX}/upload/resumable/{upload.id}"
        self._send(201, b"", {**self._tus_headers(), "Location": location})

    def _tus_upload(self, upload_id: str) -> Upload | None:
        with self.fake.lock:
            return self.fake.uploads.get(upload_id)

    def _tus_head(self, upload_id: str) -> None:
        upload = self._tus_upload(upload_id)
        if upload is None:
            self._send(404, b"", {**self._tus_headers(), "Cache-Control": "no-store"})
            return
        self._send(
            200,
            b"",
            {
                **self._tus_headers(),
                "Upload-Offset": str(upload.offset),
                "Upload-Length": str(upload.length),
                "Cache-Control": "no-store",
            },
        )

    def _tus_patch(self, upload_id: str) -> None:
        if not self._tus_check_version():
            return
        upload = self._tus_upload(upload_id)
        if upload is None:
            self._send(404, b"", self._tus_headers())
            return
        if self.headers.get("Content-Type") != "application/offset+octet-stream":
            self._send(415, b"", self._tus_headers())
            return
        try:
            offset = int(self.headers.get("Upload-Offset") or "")
        except ValueError:
            self._send(400, b"", self._tus_headers())
            return
        if offset != upload.offset:
            self._send(409, b"", self._tus_headers())
            return
        with open(upload.path, "ab") as out:
            for block in self._blocks(limit=upload.length - upload.offset):
                out.write(block)
                upload.offset += len(block)
        if not self._body_done:
            self._send(413, b"", self._tus_headers())  # more bytes than Upload-Length
            return
        if upload.offset == upload.length and not self._tus_finish(upload):
            return
        self._send(204, b"", {**self._tus_headers(), "Upload-Offset": str(upload.offset)})

    def _tus_finish(self, upload: Upload) -> bool:
        """Store the finished upload as an object; False (answered 409) if it may not overwrite."""
        md5 = hashlib.md5()  # noqa: S324 - an ETag
        with open(upload.path, "rb") as src:
            while block := src.read(BLOCK):
                md5.update(block)
        data = self.fake._new_file()
        upload.path.rename(data)
        upload.path = data
        try:
            self.fake._commit(
                upload.bucket,
                upload.key,
                data,
                size=upload.length,
                mimetype=upload.content_type,
                cache_control=upload.cache_control,
                etag=f'"{md5.hexdigest()}"',
                must_be_new=not upload.upsert,
            )
        except _Reject:
            upload.path.unlink(missing_ok=True)
            self._send(
                409,
                {
                    "statusCode": "409",
                    "code": "KeyAlreadyExists",
                    "error": "Duplicate",
                    "message": "The resource already exists",
                },
                self._tus_headers(),
            )
            return False
        return True


__all__ = [
    "OBJECT_ROUTES",
    "PREFIX",
    "ROUTES",
    "SERVICE_KEY",
    "Bucket",
    "FakeSupabaseStorage",
    "Fault",
    "Knobs",
    "RecordedRequest",
    "StoredObject",
    "Upload",
    "default_buckets",
]
