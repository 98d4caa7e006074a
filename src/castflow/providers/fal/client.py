"""fal.ai's queue API client: submit, status, result, cancel, CDN upload (the roles built on it are in
``castflow.providers.fal.roles``).

Protocol: docs/providers/fal.md. Hosts and model ids are configurable, so the same code talks to the
loopback fake in tests.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import mimetypes
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
from pydantic import SecretStr

from castflow.providers.base import (
    PermanentError,
    RequestNotFound,
    SubmitOutcomeUnknown,
    TransientError,
)
from castflow.providers.http import (
    PollSchedule,
    RetryableHTTPError,
    RetryPolicy,
    UploadCache,
    download,
    file_chunks,
    nap,
    post_submit,
    provider_pools,
    raise_for_status,
    short_body,
    sleep_or_hint,
    with_retries,
)

PROVIDER = "fal"
AUDIO_SUFFIXES = {"audio/wav": ".wav", "audio/x-wav": ".wav", "audio/mpeg": ".mp3", "audio/mp3": ".mp3"}


@dataclass(frozen=True)
class FalHandle:
    """A submitted request: its id and the URLs the submit returned (or the documented ones)."""

    model_id: str
    request_id: str
    status_url: str
    response_url: str
    cancel_url: str


@dataclass(frozen=True)
class FalStatus:
    status: str  # IN_QUEUE | IN_PROGRESS | COMPLETED
    queue_position: int | None = None
    error: str | None = None
    error_type: str | None = None
    inference_time: float | None = None


def app_path(model_id: str) -> str:
    """``owner/app`` of a model id: status, result and cancel live there, not under the sub-path."""
    parts = model_id.strip("/").split("/")
    keep = 3 if parts[0] in ("workflows", "comfy") else 2
    return "/".join(parts[:keep])


class FalClient:
    """fal's queue API over httpx; the transport is injectable (tests use the loopback fake)."""

    def __init__(
        self,
        key: SecretStr,
        *,
        queue_url: str = "https://queue.fal.run",
        rest_url: str = "https://rest.fal.ai",
        cdn_url: str = "https://v3.fal.media",
        transport: httpx.AsyncBaseTransport | None = None,
        policy: RetryPolicy | None = None,
        poll: PollSchedule | None = None,
        timeout: float = 60.0,
        webhook_url: str | None = None,
        hint: Callable[[str], object | None] | None = None,
    ) -> None:
        """``webhook_url`` is sent with every submit; ``hint(request_id)`` looks up a delivered webhook."""
        self._key = key
        self.webhook_url = webhook_url
        self.hint = hint
        self._handles: dict[str, FalHandle] = {}  # request id → the URLs its submit returned
        self.uploads = UploadCache()
        self._ran: dict[str, collections.deque[float]] = {}  # model → recent inference times (s)
        self.queue_url = queue_url.rstrip("/")
        self.rest_url = rest_url.rstrip("/")
        self.cdn_url = cdn_url.rstrip("/")
        self._transport = transport
        self.policy = policy or RetryPolicy()
        self.poll = poll or PollSchedule()
        self._timeout = timeout
        self._pool, self._plain, self._submits = provider_pools(
            transport, timeout, f"Key {key.get_secret_value()}"
        )
        self._cdn_token: tuple[str, str, float] | None = None  # (token, base_url, expires_at)

    def _client(self) -> contextlib.AbstractAsyncContextManager[httpx.AsyncClient]:
        """The pooled client with the API key (kept open; connections are reused)."""
        return self._pool.get()

    # ---- queue ------------------------------------------------------------------------------------

    async def submit(
        self, model_id: str, payload: dict[str, Any], *, webhook_url: str | None = None
    ) -> FalHandle:
        """Queue a request. Retried only when fal surely did not take it (connect errors, ingress 429/5xx)."""
        url = f"{self.queue_url}/{model_id.strip('/')}"
        webhook_url = webhook_url or self.webhook_url
        if webhook_url:
            url += f"?fal_webhook={quote(webhook_url, safe='')}"

        async def call() -> FalHandle:
            async with self._submits.get() as client:
                resp = await post_submit(client, url, payload, PROVIDER)
            if resp.status_code in (429, 502, 503, 504) and "x-fal-request-id" not in resp.headers:
                raise RetryableHTTPError(resp)  # fal's ingress answered: nothing was queued
            if resp.status_code in (408, 429) or resp.status_code >= 500:
                # fal itself answered: the request may be queued (and billed), so never resent.
                raise SubmitOutcomeUnknown(PROVIDER, f"HTTP {resp.status_code}")
            _check(resp)
            try:
                body = resp.json()
            except ValueError:
                raise SubmitOutcomeUnknown(PROVIDER, "the answer is not JSON") from None
            request_id = str(body["request_id"])
            documented = self.documented_handle(model_id, request_id)
            handle = FalHandle(
                model_id=model_id,
                request_id=request_id,
                status_url=body.get("status_url") or documented.status_url,
                response_url=body.get("response_url") or documented.response_url,
                cancel_url=body.get("cancel_url") or documented.cancel_url,
            )
            self._handles[request_id] = handle
            return handle

        return await with_retries(call, self.policy, provider=PROVIDER)

    def typical_seconds(self, model_id: str) -> float:
        """0.9 x the median inference time of the model's last requests (0 until five are known)."""
        seen = sorted(self._ran.get(model_id, ()))
        return 0.9 * seen[len(seen) // 2] if len(seen) >= 5 else 0.0

    def handle_for(self, model_id: str, request_id: str) -> FalHandle:
        """The URLs the submit returned (fal.md 1.2: follow them), or the documented ones for a request
        recorded by another process (re-attaching after a crash)."""
        return self._handles.get(request_id) or self.documented_handle(model_id, request_id)

    def documented_handle(self, model_id: str, request_id: str) -> FalHandle:
        base = f"{self.queue_url}/{app_path(model_id)}/requests/{request_id}"
        return FalHandle(model_id, request_id, f"{base}/status", base, f"{base}/cancel")

    async def status(self, handle: FalHandle) -> FalStatus:
        async def call() -> FalStatus:
            async with self._client() as client:
                resp = await client.get(handle.status_url, params={"logs": "0"})
            _check(resp, not_found=f"fal: request {handle.request_id} not found")
            body = resp.json()
            metrics = body.get("metrics") or {}
            return FalStatus(
                status=str(body.get("status")),
                queue_position=body.get("queue_position"),
                error=body.get("error"),
                error_type=body.get("error_type"),
                inference_time=metrics.get("inference_time") if isinstance(metrics, dict) else None,
            )

        return await with_retries(call, self.policy, provider=PROVIDER)

    async def result(self, handle: FalHandle) -> tuple[dict[str, Any], dict[str, str]]:
        """The model output and the response headers (billable units, request id)."""

        async def call() -> tuple[dict[str, Any], dict[str, str]]:
            async with self._client() as client:
                resp = await client.get(handle.response_url)
            _check(resp)
            return resp.json(), dict(resp.headers)

        return await with_retries(call, self.policy, provider=PROVIDER)

    async def cancel(self, handle: FalHandle) -> bool:
        """Ask fal to cancel; False when it had already completed."""

        async def call() -> bool:
            async with self._client() as client:
                resp = await client.put(handle.cancel_url)
            if resp.status_code == 400 and "ALREADY_COMPLETED" in resp.text:
                return False
            _check(resp)
            return True

        return await with_retries(call, self.policy, provider=PROVIDER)

    async def wait(
        self,
        handle: FalHandle,
        *,
        deadline_s: float,
        sleep: Callable[[float], Any] = nap,
        hint: Callable[[], object | None] | None = None,
    ) -> tuple[dict[str, Any], dict[str, str], FalStatus]:
        """Poll with exponential backoff until COMPLETED or the deadline; returns result, headers, status.

        ``hint`` (a webhook record lookup) is asked while sleeping: a delivered completion ends the wait
        with one status and one result call instead of more polling.
        """
        if hint is None and self.hint is not None:
            hint = functools.partial(self.hint, handle.request_id)
        started = time.monotonic()
        delays = self.poll.delays()
        # A request is not done the moment it is queued: the first look waits the first delay, or
        # about as long as this model's recent requests ran (fal reports their inference time).
        first = max(next(delays), self.typical_seconds(handle.model_id))
        if await sleep_or_hint(min(first, deadline_s), sleep, hint):
            hint = None
        for delay in delays:
            status = await self.status(handle)
            if status.status == "COMPLETED":
                if status.inference_time:
                    self._ran.setdefault(handle.model_id, collections.deque(maxlen=50)).append(
                        status.inference_time
                    )
                if status.error:
                    raise _job_error(status, handle)
                output, headers = await self.result(handle)
                return output, headers, status
            if status.status not in ("IN_QUEUE", "IN_PROGRESS"):
                raise PermanentError(
                    f"fal: unexpected status {status.status!r}",
                    provider=PROVIDER,
                    request_id=handle.request_id,
                )
            left = deadline_s - (time.monotonic() - started)
            if left <= 0:
                raise TransientError(
                    f"fal: request {handle.request_id} not done after {deadline_s:.0f} s (status {status.status})",
                    provider=PROVIDER,
                    request_id=handle.request_id,
                )
            if await sleep_or_hint(min(delay, left), sleep, hint):
                hint = None  # woken by the webhook: from now on, the normal schedule
        raise AssertionError("unreachable")  # pragma: no cover

    async def download(self, url: str, dest: Path) -> Path:
        """Fetch an output file (fal's result URLs expire: copy them promptly)."""
        return await download(url, dest, pool=self._plain, policy=self.policy, provider=PROVIDER)

    # ---- CDN upload -------------------------------------------------------------------------------

    async def _token(self) -> tuple[str, str]:
        if self._cdn_token and self._cdn_token[2] > time.time() + 60:
            return self._cdn_token[0], self._cdn_token[1]

        async def call() -> tuple[str, str, float]:
            async with self._client() as client:
                resp = await client.post(
                    f"{self.rest_url}/storage/auth/token", params={"storage_type": "fal-cdn-v3"}, json={}
                )
            _check(resp)
            body = resp.json()
            expires = body.get("expires_at")
            from datetime import datetime

            exp = datetime.fromisoformat(expires).timestamp() if expires else time.time() + 3600
            return str(body["token"]), str(body.get("base_url") or self.cdn_url), exp

        self._cdn_token = await with_retries(call, self.policy, provider=PROVIDER)
        return self._cdn_token[0], self._cdn_token[1]

    async def upload_file(self, path: Path) -> str:
        """Upload a local file to fal's CDN (v3 token flow); returns its public URL. Streams the file.
        A file already uploaded by this process in the last hour is not uploaded again."""
        return await self.uploads.fetch(path, lambda: self._upload_file(path))

    async def _upload_file(self, path: Path) -> str:
        token, _base = await self._token()
        content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"

        async def call() -> str:
            async with self._plain.get() as c:
                with open(path, "rb") as fh:
                    resp = await c.post(
                        f"{self.cdn_url}/files/upload",
                        content=file_chunks(fh),
                        headers={
                            "Authorization": f"Bearer {token}",
                            "Content-Type": content_type,
                            "X-Fal-File-Name": path.name,
                        },
                    )
            _check(resp)
            return str(resp.json()["access_url"])

        return await with_retries(call, self.policy, provider=PROVIDER)


def _check(resp: httpx.Response, *, not_found: str | None = None) -> None:
    """fal's error bodies onto castflow's errors (validation and content policy are permanent)."""
    if resp.is_success:
        return
    if resp.status_code == 404 and not_found:
        raise RequestNotFound(not_found, provider=PROVIDER)
    if resp.status_code == 401:
        raise PermanentError("fal: the API key was refused (401)", provider=PROVIDER)
    if resp.headers.get("x-fal-needs-retry") == "1" or resp.headers.get("x-fal-retryable") == "true":
        raise RetryableHTTPError(resp)
    raise_for_status(
        resp, provider=PROVIDER, permanent_message=f"fal: HTTP {resp.status_code}: {_detail(resp)}"
    )


def _detail(resp: httpx.Response) -> str:
    try:
        body = resp.json()
    except ValueError:
        return short_body(resp)
    detail = body.get("detail") if isinstance(body, dict) else None
    if isinstance(detail, list):
        parts = []
        for item in detail:
            if isinstance(item, dict):
                loc = ".".join(str(p) for p in item.get("loc", []) if p != "body")
                kind = f" [{item['type']}]" if item.get("type") else ""
                parts.append(f"{loc}: {item.get('msg')}{kind}" if loc else f"{item.get('msg')}{kind}")
        return "; ".join(parts) or short_body(resp)
    if isinstance(detail, str):
        return detail
    return short_body(resp)


_TRANSIENT_ERROR_TYPES = {
    "request_timeout",
    "startup_timeout",
    "runner_scheduling_failure",
    "runner_connection_timeout",
    "runner_disconnected",
    "runner_connection_refused",
    "runner_connection_error",
    "runner_incomplete_response",
    "runner_server_error",
    "internal_error",
}


def _job_error(status: FalStatus, handle: FalHandle) -> Exception:
    message = f"fal: request {handle.request_id} failed: {status.error} ({status.error_type or 'no type'})"
    if status.error_type in _TRANSIENT_ERROR_TYPES:
        return TransientError(message, provider=PROVIDER, request_id=handle.request_id, job_failed=True)
    return PermanentError(message, provider=PROVIDER, request_id=handle.request_id, job_failed=True)


# ---- castflow roles on fal -------------------------------------------------------------------------
