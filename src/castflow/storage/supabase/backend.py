"""Supabase Storage backend: storage3 for the REST calls, our own TUS client (httpx) for large files.

Protocol: docs/providers/supabase-storage-and-postgres.md, sections 1 and 2. Buckets are chosen by the
key's media type; the object path inside the bucket is the key. Uploads stream from the file (never the
whole file in memory) and always overwrite (``x-upsert: true``): castflow's keys are deterministic.
Downloads stream too; ``local_path`` keeps a local copy of each object in the cache folder.

Errors: Storage answers HTTP 400 for almost everything, with the true status as a string in the body's
``statusCode``. 429/5xx and transport errors are retried here; what survives becomes a
:class:`TransientError`; other errors become a :class:`PermanentError` with the server's message. The
service-role key never appears in an error message or a log line.
"""

from __future__ import annotations

import base64
import logging
import mimetypes
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import BinaryIO, TypeVar
from urllib.parse import quote, urljoin, urlparse

import httpx
from storage3 import SyncStorageClient
from storage3.exceptions import StorageApiError
from storage3.types import FileOptions

from castflow.providers.base import PermanentError, TransientError
from castflow.providers.http import RetryCallState, Retrying, RetryPolicy, retry_after_seconds
from castflow.storage.local import InvalidKey
from castflow.storage.supabase.settings import SupabaseStorageSettings

T = TypeVar("T")

PROVIDER = "supabase"
CACHE_CONTROL = "3600"  # seconds; the server stores max-age=3600
TUS_VERSION = "1.0.0"
RETRYABLE_STATUS = frozenset({"408", "429", "500", "502", "503", "504"})
_BLOCK = 256 * 1024

log = logging.getLogger(__name__)


class BucketNotFound(PermanentError):
    """The bucket a key maps to does not exist on the project."""


class ObjectNotFound(PermanentError):
    """No object at this key."""


class _Failure(Exception):
    """An error answer from Storage, normalised: the true status (a string), error name and message."""

    def __init__(
        self,
        status: str,
        error: str,
        message: str,
        retry_after: float | None = None,
        *,
        retry: bool = False,
    ) -> None:
        super().__init__(f"{status} {error}: {message}")
        self.status = status
        self.error = error
        self.message = message
        self.retry_after = retry_after
        self.retry = retry

    @property
    def retryable(self) -> bool:
        return self.retry or self.status in RETRYABLE_STATUS

    @property
    def bucket_missing(self) -> bool:
        return self.status == "404" and "bucket" in f"{self.error} {self.message}".lower()


def _from_sdk(exc: StorageApiError) -> _Failure:
    """storage3's error (``status`` is the body's statusCode, or the HTTP status for non-JSON bodies)."""
    retry_after = None
    cause: BaseException | None = exc
    for _ in range(3):  # storage3 raises from httpx.HTTPStatusError, sometimes via a parse error
        cause = cause.__cause__ or cause.__context__ if cause is not None else None
        if isinstance(cause, httpx.HTTPStatusError):
            retry_after = retry_after_seconds(cause.response)
            break
    return _Failure(str(exc.status), str(exc.code), str(exc.message)[:300], retry_after)


def _from_response(resp: httpx.Response) -> _Failure:
    """An error answer of our own httpx calls (the body must have been read)."""
    retry_after = retry_after_seconds(resp)
    try:
        body = resp.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and "statusCode" in body:
        return _Failure(
            str(body["statusCode"]),
            str(body.get("error") or body.get("code") or ""),
            str(body.get("message") or ""),
            retry_after,
        )
    return _Failure(str(resp.status_code), resp.reason_phrase, resp.text[:300], retry_after)


def _retry_after(exc: BaseException) -> float | None:
    return exc.retry_after if isinstance(exc, _Failure) else None


def _retryable(exc: BaseException) -> bool:
    return isinstance(exc, httpx.TransportError) or (isinstance(exc, _Failure) and exc.retryable)


def check_key(key: str) -> PurePosixPath:
    """A storage key as a relative POSIX path; raises InvalidKey for anything else."""
    pure = PurePosixPath(key)
    if not key or pure.is_absolute() or any(part in ("", ".", "..") for part in key.split("/")):
        raise InvalidKey(f"invalid storage key {key!r}")
    return pure


class SupabaseStorage:
    """castflow's storage on Supabase Storage; the httpx client (or its transport) is injectable."""

    def __init__(
        self,
        settings: SupabaseStorageSettings,
        cache_dir: Path,
        *,
        http_client: httpx.Client | None = None,
        transport: httpx.BaseTransport | None = None,
        policy: RetryPolicy | None = None,
    ) -> None:
        if not settings.url or settings.service_role_key is None:
            raise ValueError(
                "Supabase storage needs storage.supabase.url and storage.supabase.service_role_key"
            )
        self.settings = settings
        self.policy = policy or RetryPolicy()
        self.base_url = settings.url.rstrip("/") + "/storage/v1/"
        host = urlparse(settings.url).netloc or "supabase"
        self.host = host
        self.cache_dir = cache_dir / "supabase" / host.replace(":", "_")
        self._key = settings.service_role_key.get_secret_value()
        self._auth = {"apikey": self._key, "Authorization": f"Bearer {self._key}"}
        self._owns_http = http_client is None
        self._http = http_client or httpx.Client(
            timeout=httpx.Timeout(settings.timeout_s, connect=10), transport=transport
        )
        self._sdk = SyncStorageClient(self.base_url, dict(self._auth), http_client=self._http)
        self._cache_lock = threading.Lock()
        self._cache_bytes: int | None = None  # measured on first use

    shares_urls = True  # public or signed HTTPS URLs: providers fetch inputs straight from storage

    @property
    def url_kind(self) -> str:
        return self.settings.url_mode  # "public" or "signed"

    @property
    def url_ttl_s(self) -> int | None:
        return self.settings.signed_url_ttl_s if self.settings.url_mode == "signed" else None

    @property
    def location(self) -> str:
        return f"{self.base_url} (Supabase Storage)"

    def __repr__(self) -> str:
        return f"SupabaseStorage({self.base_url!r})"

    def close(self) -> None:
        """Close the HTTP client if this object created it."""
        if self._owns_http:
            self._http.close()

    def __enter__(self) -> SupabaseStorage:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- the Storage protocol --------------------------------------------------------------------

    def bucket_for(self, key: str) -> str:
        """The bucket of a key, from its media type (audio, video, image, anything else)."""
        mime = mimetypes.guess_type(key, strict=False)[0] or ""
        major = mime.split("/", 1)[0]
        s = self.settings
        return {"audio": s.audio_bucket, "video": s.video_bucket, "image": s.image_bucket}.get(
            major, s.other_bucket
        )

    def put_file(self, key: str, source: Path, content_type: str) -> str:
        """Upload ``source`` to ``key`` (overwriting), streaming; TUS above the threshold. Returns url(key)."""
        check_key(key)
        bucket = self.bucket_for(key)
        size = source.stat().st_size
        if size > self.settings.tus_threshold_bytes:
            self._tus_upload(bucket, key, source, content_type, size)
        else:
            options: FileOptions = {
                "content-type": content_type,
                "cache-control": CACHE_CONTROL,
                "upsert": "true",
            }
            try:
                # A path, not bytes: storage3 opens it per attempt and httpx streams it.
                self._run(
                    lambda: self._sdk.from_(bucket).upload(key, source, options),
                    op="upload",
                    bucket=bucket,
                    key=key,
                )
            except PermanentError as exc:
                if not isinstance(exc.__cause__, _Failure) or exc.__cause__.status != "409":
                    raise
                log.info("supabase: %s/%s already exists", bucket, key)  # only without upsert
        self._seed_cache(bucket, key, source)
        return self.url(key)

    def exists(self, key: str) -> bool:
        check_key(key)
        bucket = self.bucket_for(key)
        return self._run(lambda: self._sdk.from_(bucket).exists(key), op="exists", bucket=bucket, key=key)

    def url(self, key: str) -> str:
        """The public URL, or a signed URL valid for ``signed_url_ttl_s`` (one request each)."""
        check_key(key)
        bucket = self.bucket_for(key)
        if self.settings.url_mode == "public":
            return self._sdk.from_(bucket).get_public_url(key)
        ttl = self.settings.signed_url_ttl_s
        signed = self._run(
            lambda: self._sdk.from_(bucket).create_signed_url(key, ttl), op="sign", bucket=bucket, key=key
        )
        url = signed["signedURL"]
        if not url:
            raise PermanentError(
                f"supabase: sign {bucket}/{key}: no signed URL in the answer", provider=PROVIDER
            )
        return url

    def fetch(self, key: str, dest: Path) -> Path:
        """Download the object at ``key`` to ``dest``, streaming; ``dest`` appears complete or not at all."""
        parts = check_key(key).parts
        bucket = self.bucket_for(key)
        url = self.base_url + "object/" + "/".join(quote(p, safe="") for p in (bucket, *parts))
        dest.parent.mkdir(parents=True, exist_ok=True)

        def download() -> None:
            with self._http.stream("GET", url, headers=self._auth) as resp:
                if resp.status_code != 200:
                    resp.read()
                    raise _from_response(resp)
                with _atomic_writer(dest) as out:
                    for block in resp.iter_bytes(_BLOCK):
                        out.write(block)

        self._run(download, op="download", bucket=bucket, key=key)
        return dest

    def list_keys(self, prefix: str) -> list[str]:
        """Keys directly under ``prefix`` in the bucket of its media type (sheets: the files bucket)."""
        base = prefix.strip("/")
        bucket = self.bucket_for(f"{base}/x.csv")
        entries = self._run(
            lambda: self._sdk.from_(bucket).list(base, {"limit": 1000}), op="list", bucket=bucket, key=base
        )
        return sorted(f"{base}/{e['name']}" for e in entries if e.get("id"))

    def move(self, key: str, dest: str) -> bool:
        """Server-side move within the key's bucket; False when ``key`` no longer exists."""
        bucket = self.bucket_for(key)
        try:
            self._run(lambda: self._sdk.from_(bucket).move(key, dest), op="move", bucket=bucket, key=key)
        except ObjectNotFound:
            return False
        return True

    def local_path(self, key: str) -> Path:
        """A local copy of the object, downloaded into the cache on first use."""
        parts = check_key(key).parts
        path = self.cache_dir.joinpath(self.bucket_for(key), *parts)
        if path.is_file():
            os.utime(path)  # recently used: evicted last
            return path
        self.fetch(key, path)
        self._cached(path)
        return path

    def _cached(self, path: Path) -> None:
        """Count a new cache file; past ``cache_max_bytes`` drop the least recently used down to 80 %."""
        limit = self.settings.cache_max_bytes
        with self._cache_lock:
            if self._cache_bytes is None:
                self._cache_bytes = sum(f.stat().st_size for f in self._cache_files())
            else:
                self._cache_bytes += path.stat().st_size
            if self._cache_bytes <= limit:
                return
            files = sorted(self._cache_files(), key=lambda f: f.stat().st_mtime)
            total = sum(f.stat().st_size for f in files)
            for old in files:
                if total <= 0.8 * limit or old == path:
                    continue
                size = old.stat().st_size
                old.unlink(missing_ok=True)
                total -= size
            self._cache_bytes = total

    def _cache_files(self) -> list[Path]:
        return [f for f in self.cache_dir.rglob("*") if f.is_file() and not f.name.startswith(".")]

    # ---- health ----------------------------------------------------------------------------------

    def check(self) -> list[str]:
        """Problems that stop this backend from working (empty when all is well); one try, no retries."""
        try:
            buckets = {b.id: b for b in self._sdk.list_buckets()}
        except httpx.TransportError as exc:
            return [f"Supabase Storage at {self.host} is unreachable: {type(exc).__name__}"]
        except StorageApiError as exc:
            failure = _from_sdk(exc)
            text = self._scrub(f"{failure.status} {failure.error}: {failure.message}")
            if failure.status in ("401", "403") or "jwt" in f"{failure.error} {failure.message}".lower():
                return [f"Supabase Storage at {self.host} refused the service-role key ({text})"]
            return [f"Supabase Storage at {self.host}: listing buckets failed ({text})"]
        problems: list[str] = []
        for name in dict.fromkeys(self._buckets()):
            bucket = buckets.get(name)
            if bucket is None:
                problems.append(f"bucket {name!r} does not exist on {self.host}")
            elif self.settings.url_mode == "public" and not bucket.public:
                problems.append(
                    f"bucket {name!r} is private but url_mode is 'public': its URLs will not work"
                )
        return problems

    def _buckets(self) -> list[str]:
        s = self.settings
        return [s.audio_bucket, s.video_bucket, s.image_bucket, s.other_bucket]

    # ---- retries and errors ----------------------------------------------------------------------

    def _run(self, call: Callable[[], T], *, op: str, bucket: str, key: str) -> T:
        """Run a request that is safe to repeat, with retries; map what survives onto castflow's errors."""

        def attempt() -> T:
            try:
                return call()
            except StorageApiError as exc:
                raise _from_sdk(exc) from None

        try:
            return self._retrying()(attempt)
        except _Failure as exc:
            raise self._error(exc, op=op, bucket=bucket, key=key) from exc
        except httpx.TransportError as exc:
            raise TransientError(
                f"supabase: {op} {bucket}/{key}: {type(exc).__name__} after retries", provider=PROVIDER
            ) from None

    def _retrying(self) -> Retrying:
        return self.policy.retrying(_retryable, hint=_retry_after, before_sleep=self._log_retry)

    def _log_retry(self, state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        what = type(exc).__name__ if isinstance(exc, httpx.TransportError) else str(exc)
        log.warning("supabase: attempt %d failed (%s); retrying", state.attempt_number, self._scrub(what))

    def _scrub(self, text: str) -> str:
        return text.replace(self._key, "***") if self._key else text

    def _error(self, f: _Failure, *, op: str, bucket: str, key: str) -> PermanentError | TransientError:
        text = self._scrub(f"{f.status} {f.error}: {f.message}")
        where = f"{op} {bucket}/{key}"
        if f.retryable:
            return TransientError(f"supabase: {where}: {text} (after retries)", provider=PROVIDER)
        if f.bucket_missing:
            return BucketNotFound(
                f"supabase: bucket {bucket!r} does not exist on {self.host} (needed for {key!r}); "
                f"create it or change the storage.supabase bucket settings",
                provider=PROVIDER,
            )
        if f.status == "404":
            return ObjectNotFound(f"supabase: {where}: not found ({text})", provider=PROVIDER)
        if f.status in ("401", "403"):
            return PermanentError(
                f"supabase: {where}: access denied ({text}); check storage.supabase.service_role_key",
                provider=PROVIDER,
            )
        return PermanentError(f"supabase: {where}: {text}", provider=PROVIDER)

    # ---- TUS (resumable uploads; storage3 has none) ----------------------------------------------

    def _tus_headers(self) -> dict[str, str]:
        return {**self._auth, "Tus-Resumable": TUS_VERSION}

    def _tus_upload(self, bucket: str, key: str, source: Path, content_type: str, size: int) -> None:
        location = self._run(
            lambda: self._tus_create(bucket, key, content_type, size), op="upload", bucket=bucket, key=key
        )
        offset, failures = 0, 0
        with open(source, "rb") as fh:
            while offset < size:
                length = min(self.settings.tus_chunk_bytes, size - offset)
                try:
                    offset = self._tus_patch(location, fh, offset, length)
                    failures = 0
                    continue
                except (httpx.TransportError, _Failure) as exc:
                    if isinstance(exc, _Failure) and exc.error == "Duplicate":
                        log.info("supabase: %s/%s already exists", bucket, key)  # only without upsert
                        return
                    # 409 without a body: our offset is not the server's; HEAD tells where to go on.
                    if isinstance(exc, _Failure) and not (exc.retryable or exc.status == "409"):
                        raise self._error(exc, op="upload", bucket=bucket, key=key) from exc
                    failures += 1
                    what = exc.status if isinstance(exc, _Failure) else type(exc).__name__
                    if failures >= self.policy.attempts:
                        raise TransientError(
                            f"supabase: upload {bucket}/{key}: TUS PATCH at offset {offset} failed "
                            f"{failures} times ({what})",
                            provider=PROVIDER,
                        ) from None
                    log.warning(
                        "supabase: TUS PATCH %s/%s at %d failed (%s); resuming",
                        bucket,
                        key,
                        offset,
                        what,
                    )
                    time.sleep(self.policy.delay(failures, _retry_after(exc)))
                offset = self._run(lambda: self._tus_offset(location), op="upload", bucket=bucket, key=key)

    def _tus_create(self, bucket: str, key: str, content_type: str, size: int) -> str:
        meta = {
            "bucketName": bucket,
            "objectName": key,
            "contentType": content_type,
            "cacheControl": CACHE_CONTROL,
        }
        headers = {
            **self._tus_headers(),
            "Upload-Length": str(size),
            "Upload-Metadata": ",".join(
                f"{k} {base64.b64encode(v.encode()).decode()}" for k, v in meta.items()
            ),
            "x-upsert": "true",
        }
        endpoint = self.settings.tus_url or self.base_url + "upload/resumable"
        resp = self._http.post(endpoint, headers=headers)
        location = resp.headers.get("Location")
        if resp.status_code != 201 or not location:
            failure = _from_response(resp)
            failure.retry = failure.status == "409"  # another upload of this key holds the lock
            raise failure
        return urljoin(endpoint, str(location))

    def _tus_offset(self, location: str) -> int:
        resp = self._http.head(location, headers=self._tus_headers())
        if resp.status_code == 404:
            raise TransientError(
                "supabase: the TUS upload is gone (expired?); the next attempt starts it again",
                provider=PROVIDER,
            )
        offset = resp.headers.get("Upload-Offset")
        if resp.status_code != 200 or offset is None:
            raise _from_response(resp)
        return int(offset)

    def _tus_patch(self, location: str, fh: BinaryIO, offset: int, length: int) -> int:
        def body() -> Iterator[bytes]:
            fh.seek(offset)
            left = length
            while left > 0:
                block = fh.read(min(_BLOCK, left))
                if not block:
                    raise OSError("the source file shrank during the upload")
                left -= len(block)
                yield block

        headers = {
            **self._tus_headers(),
            "Upload-Offset": str(offset),
            "Content-Type": "application/offset+octet-stream",
            "Content-Length": str(length),  # with it, httpx streams the generator without chunking
        }
        resp = self._http.patch(location, headers=headers, content=body())
        new_offset = resp.headers.get("Upload-Offset")
        if resp.status_code != 204 or new_offset is None:
            raise _from_response(resp)
        return int(new_offset)

    # ---- cache -----------------------------------------------------------------------------------

    def _seed_cache(self, bucket: str, key: str, source: Path) -> None:
        """Copy a just-uploaded file into the cache, so local_path never downloads it again."""
        dest = self.cache_dir.joinpath(bucket, *check_key(key).parts)
        if dest.resolve() == source.resolve():
            return
        dest.parent.mkdir(parents=True, exist_ok=True)
        with _atomic_writer(dest) as out, open(source, "rb") as src:
            shutil.copyfileobj(src, out, _BLOCK)
        self._cached(dest)


@contextmanager
def _atomic_writer(dest: Path) -> Iterator[BinaryIO]:
    """Write to a temp file beside ``dest``; rename it over ``dest`` only if the block completes."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.")
    try:
        with os.fdopen(fd, "wb") as out:
            yield out
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
