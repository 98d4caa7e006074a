"""One HTTP retry policy for every provider: transport blips, 429 (Retry-After honoured) and 5xx.

Only requests that are safe to repeat are retried here (status, result, cancel, uploads of the same
bytes). A submit that may have reached the provider is never retried blindly: that could pay twice.
Failures that survive these retries surface as :class:`TransientError` for the task layer, which retries
the *job*; the same failure is never retried in both places because the task sees it only once this
layer has given up.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import email.utils
import functools
import random
import ssl
import threading
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import certifi
import httpx
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    stop_after_delay,
)

from castflow import interrupt
from castflow.expiring import ExpiringCache
from castflow.providers.base import PermanentError, ProviderError, SubmitOutcomeUnknown, TransientError
from castflow.settings import HttpSettings

T = TypeVar("T")

RETRYABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504})


class RetryableHTTPError(Exception):
    """An HTTP answer worth another try; carries the response for Retry-After."""

    def __init__(self, response: httpx.Response) -> None:
        super().__init__(f"HTTP {response.status_code}")
        self.response = response


@dataclass(frozen=True)
class RetryPolicy:
    """The HTTP layer's one retry policy (providers, storage, callbacks): at most ``attempts`` tries
    within ``total_seconds``, exponential backoff with full-range jitter from ``base_delay`` up to
    ``max_delay``, a server's Retry-After honoured (capped at ``max_delay``)."""

    attempts: int = 5
    base_delay: float = 0.5
    max_delay: float = 30.0
    total_seconds: float = 120.0

    @classmethod
    def from_settings(cls, http: HttpSettings) -> RetryPolicy:
        return cls(
            attempts=http.attempts,
            base_delay=http.base_delay_s,
            max_delay=http.max_delay_s,
            total_seconds=http.total_s,
        )

    def delay(self, attempt: int, hinted: float | None = None) -> float:
        """Seconds before retry number ``attempt`` (1 = the first retry): the server's hint when it
        gave one, else jittered exponential backoff."""
        if hinted is not None:
            return min(hinted, self.max_delay)
        backoff = min(self.max_delay, self.base_delay * 2 ** (attempt - 1))
        return random.uniform(backoff / 2, backoff)  # noqa: S311 - jitter, not security

    def retrying(
        self,
        retryable: Callable[[BaseException], bool],
        *,
        hint: Callable[[BaseException], float | None] = lambda _exc: None,
        before_sleep: Callable[[RetryCallState], None] | None = None,
        first_done: bool = False,
    ) -> Retrying:
        """A tenacity controller of this policy for a blocking call (storage, callbacks).
        ``first_done``: the first try was made already (the caller tried once without a controller)."""
        tries = self.attempts - 1 if first_done else self.attempts
        return Retrying(
            retry=retry_if_exception(retryable),
            stop=stop_after_attempt(max(tries, 1)) | stop_after_delay(self.total_seconds),
            wait=self._wait(hint, first_done),
            reraise=True,
            before_sleep=before_sleep,
        )

    def async_retrying(
        self,
        retryable: Callable[[BaseException], bool],
        *,
        hint: Callable[[BaseException], float | None] = lambda _exc: None,
        first_done: bool = False,
    ) -> AsyncRetrying:
        """The same controller for a coroutine (the providers' requests)."""
        tries = self.attempts - 1 if first_done else self.attempts
        return AsyncRetrying(
            retry=retry_if_exception(retryable),
            stop=stop_after_attempt(max(tries, 1)) | stop_after_delay(self.total_seconds),
            wait=self._wait(hint, first_done),
            reraise=True,
        )

    def _wait(
        self, hint: Callable[[BaseException], float | None], first_done: bool
    ) -> Callable[[RetryCallState], float]:
        def wait(state: RetryCallState) -> float:
            exc = state.outcome.exception() if state.outcome else None
            attempt = state.attempt_number + (1 if first_done else 0)
            return self.delay(attempt, hint(exc) if exc is not None else None)

        return wait


@dataclass(frozen=True)
class PollSchedule:
    """Exponential polling delays: first, first x factor, ... capped (fal: 1, 2, 4, 8, 16, 16, ... s,
    at most 8 status calls for a 60 s job)."""

    first: float = 1.0
    factor: float = 2.0
    cap: float = 16.0

    def delays(self) -> Iterator[float]:
        delay = self.first
        while True:
            yield delay
            delay = min(self.cap, delay * self.factor)


@functools.cache
def tls_context() -> ssl.SSLContext:
    """One TLS context for every client: building one loads the CA bundle (~20 ms of CPU), which per
    request would cost more than the request itself."""
    return ssl.create_default_context(cafile=certifi.where())


def async_client(
    *,
    transport: httpx.AsyncBaseTransport | None,
    timeout: httpx.Timeout,
    headers: dict[str, str] | None = None,
    limits: httpx.Limits | None = None,
) -> httpx.AsyncClient:
    """An httpx client sharing the process's TLS context."""
    return httpx.AsyncClient(
        transport=transport,
        timeout=timeout,
        headers=headers,
        verify=tls_context(),
        # httpcore checks every pooled connection on each request: a few idle ones are plenty when
        # every request is short, and keep that check cheap when many rows are in flight.
        limits=limits or httpx.Limits(max_connections=100, max_keepalive_connections=8),
    )


class ClientPool:
    """One open httpx client per event loop, reused by every request made on that loop.

    Creating a client costs far more CPU than a request (environment and proxy lookup, pools), and a
    reused client keeps connections alive. Clients of loops that are gone are dropped with them.
    """

    def __init__(
        self,
        *,
        transport: httpx.AsyncBaseTransport | None,
        timeout: httpx.Timeout,
        headers: dict[str, str] | None = None,
        keep_alive: bool = True,
    ) -> None:
        self._transport = transport
        self._timeout = timeout
        self._headers = headers
        self._limits = None if keep_alive else httpx.Limits(max_keepalive_connections=0)
        self._clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, httpx.AsyncClient] = (
            weakref.WeakKeyDictionary()
        )

    @contextlib.asynccontextmanager
    async def get(self) -> AsyncIterator[httpx.AsyncClient]:
        loop = asyncio.get_running_loop()
        client = self._clients.get(loop)
        if client is None or client.is_closed:
            client = async_client(
                transport=self._transport, timeout=self._timeout, headers=self._headers, limits=self._limits
            )
            self._clients[loop] = client
        yield client


class UploadCache:
    """Provider URLs of files already uploaded in this process (the same portrait or variant is the
    input of many jobs). Keyed by path, size and modification time; entries expire after ``ttl_s``."""

    def __init__(self, ttl_s: float = 3600.0, size: int = 4096) -> None:
        self._urls: ExpiringCache[tuple[str, int, int], str] = ExpiringCache(ttl_s, size)
        self._pending: dict[tuple[str, int, int], asyncio.Future[str]] = {}
        self._lock = threading.Lock()

    @staticmethod
    def _key(path: Path) -> tuple[str, int, int]:
        stat = path.stat()
        return str(path), stat.st_size, stat.st_mtime_ns

    async def fetch(self, path: Path, upload: Callable[[], Awaitable[str]]) -> str:
        """The file's provider URL: cached, or uploaded once however many jobs ask at the same time
        (the others wait for that upload; if it fails, each tries its own)."""
        key = self._key(path)
        hit = self._urls.get(key)
        if hit:
            return hit
        loop = asyncio.get_running_loop()
        with self._lock:
            pending = self._pending.get(key)
            mine = pending is None or pending.get_loop() is not loop
            if mine:
                pending = self._pending[key] = loop.create_future()
        assert pending is not None
        if not mine:
            try:
                return await asyncio.shield(pending)
            except Exception:
                return self._urls.put(key, await upload())
        try:
            url = self._urls.put(key, await upload())
            pending.set_result(url)
            return url
        except BaseException as exc:
            pending.set_exception(exc)
            pending.exception()  # retrieved here: nobody may be waiting
            raise
        finally:
            with self._lock:
                if self._pending.get(key) is pending:
                    del self._pending[key]


def retry_after_seconds(response: httpx.Response) -> float | None:
    """The Retry-After header as seconds (delta or HTTP date), if present and sane."""
    value = response.headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        parsed = email.utils.parsedate_to_datetime(value) if value else None
        if parsed is None:
            return None
        return max(0.0, parsed.timestamp() - time.time())


def _is_retryable(exc: BaseException) -> bool:
    return isinstance(exc, RetryableHTTPError | httpx.TransportError)


def _hint(exc: BaseException) -> float | None:
    return retry_after_seconds(exc.response) if isinstance(exc, RetryableHTTPError) else None


async def with_retries(call: Callable[[], Awaitable[T]], policy: RetryPolicy, *, provider: str) -> T:
    """Run an idempotent request with retries; what still fails becomes a TransientError."""
    try:  # the usual case, without building a retry controller
        return await call()
    except (RetryableHTTPError, httpx.TransportError) as exc:
        failure: BaseException = exc
    if policy.attempts > 1:
        await asyncio.sleep(policy.delay(1, _hint(failure)))
        retrying = policy.async_retrying(_is_retryable, hint=_hint, first_done=True)
        try:
            async for attempt in retrying:
                with attempt:
                    return await call()
        except (RetryableHTTPError, httpx.TransportError) as exc:
            failure = exc
    if isinstance(failure, RetryableHTTPError):
        raise TransientError(
            f"{provider}: HTTP {failure.response.status_code} after retries: {short_body(failure.response)}",
            provider=provider,
        ) from failure
    # ``from None``: transport errors may quote request headers (an Authorization value).
    raise TransientError(f"{provider}: {type(failure).__name__} after retries", provider=provider) from None


async def sleep_or_hint(
    seconds: float, sleep: Callable[[float], Any], hint: Callable[[], object | None] | None
) -> bool:
    """Sleep ``seconds``; with a webhook hint, wake early (checked every second) once it has news.

    Returns True when the hint woke it: the caller polls once and then stops asking the hint (a status
    that lags behind the webhook must not turn the wait into a busy loop).
    """
    # A stop asked for (Ctrl-C) ends the wait: the job's id is recorded, and the rerun re-attaches to it.
    interrupt.check("waiting on a provider's job")
    if hint is None:
        await sleep(seconds)
        return False
    end = time.monotonic() + seconds
    while (left := end - time.monotonic()) > 0:
        if hint() is not None:
            return True
        await sleep(min(1.0, left))
        interrupt.check("waiting on a provider's job")
    return False


async def nap(seconds: float) -> None:
    """asyncio.sleep that a stop request (Ctrl-C) cuts short, within a quarter of a second: the
    provider clients' default sleep between polls."""
    end = time.monotonic() + seconds
    while (left := end - time.monotonic()) > 0:
        interrupt.check("waiting on a provider's job")
        await asyncio.sleep(min(0.25, left))


async def file_chunks(fh: Any, size: int = 1 << 20) -> AsyncIterator[bytes]:
    """A file's bytes as an async stream of blocks (request bodies that are never held whole)."""
    while block := fh.read(size):
        yield block


def provider_pools(
    transport: httpx.AsyncBaseTransport | None, timeout: float, authorization: str
) -> tuple[ClientPool, ClientPool, ClientPool]:
    """A provider client's three pools: API calls with the key, key-less downloads and uploads to
    pre-signed URLs, and submits. Submits go over a new connection each: a kept-alive one the server
    has just closed would turn a request that was never read into a lost answer."""
    headers = {"Authorization": authorization, "User-Agent": "castflow"}
    api_timeout = httpx.Timeout(timeout, connect=10.0)
    return (
        ClientPool(transport=transport, timeout=api_timeout, headers=headers),
        ClientPool(transport=transport, timeout=httpx.Timeout(300, connect=10)),
        ClientPool(transport=transport, timeout=api_timeout, headers=headers, keep_alive=False),
    )


async def download(
    url: str,
    dest: Path,
    *,
    pool: ClientPool,
    policy: RetryPolicy,
    provider: str,
    check: Callable[[httpx.Response], None] | None = None,
) -> Path:
    """Stream a provider's output URL to ``dest`` with retries (result URLs expire: copy promptly).
    ``pool`` holds clients without credentials: output URLs are public or pre-signed."""

    async def call() -> Path:
        async with pool.get() as client, client.stream("GET", url) as resp:
            if not resp.is_success:
                await resp.aread()
                (check or functools.partial(raise_for_status, provider=provider))(resp)
            with open(dest, "wb") as fh:
                async for chunk in resp.aiter_bytes(1 << 20):
                    fh.write(chunk)
        return dest

    return await with_retries(call, policy, provider=provider)


# Called (in a worker thread) just before each submit is sent: the pipeline records its intent there,
# in the database, so that a job whose answer never arrives is known to exist. A context variable, so
# every provider's submit honours it without a parameter threaded through each layer.
BEFORE_SEND: contextvars.ContextVar[Callable[[], None] | None] = contextvars.ContextVar(
    "castflow_before_send", default=None
)


async def post_submit(
    client: httpx.AsyncClient, url: str, payload: dict[str, Any], provider: str
) -> httpx.Response:
    """POST a job submission. A connection that failed before sending raises as is (safe to retry);
    any later transport failure is :class:`SubmitOutcomeUnknown` (the job may exist: never resent).
    The hook in :data:`BEFORE_SEND`, if any, runs first; an error in it means nothing was sent."""
    hook = BEFORE_SEND.get()
    if hook is not None:
        await asyncio.to_thread(hook)
    try:
        return await client.post(url, json=payload)
    except (httpx.ConnectError, httpx.ConnectTimeout):
        raise
    except httpx.TransportError as exc:
        raise SubmitOutcomeUnknown(provider, type(exc).__name__) from None


def short_body(response: httpx.Response, limit: int = 300) -> str:
    """A response body for an error message, trimmed (never includes request headers)."""
    try:
        text = response.text
    except httpx.ResponseNotRead:
        return ""
    return text[:limit]


def raise_for_status(
    response: httpx.Response, *, provider: str, permanent_message: str | None = None
) -> None:
    """Map an HTTP answer onto castflow's errors: retryable statuses raise RetryableHTTPError."""
    if response.is_success:
        return
    if response.status_code in RETRYABLE_STATUS:
        raise RetryableHTTPError(response)
    message = permanent_message or f"{provider}: HTTP {response.status_code}: {short_body(response)}"
    raise PermanentError(message, provider=provider)


__all__ = [
    "ClientPool",
    "PermanentError",
    "PollSchedule",
    "ProviderError",
    "RetryCallState",
    "RetryPolicy",
    "RetryableHTTPError",
    "Retrying",
    "TransientError",
    "UploadCache",
    "raise_for_status",
    "retry_after_seconds",
    "sleep_or_hint",
    "with_retries",
]
