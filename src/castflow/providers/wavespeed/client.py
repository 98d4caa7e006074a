"""WaveSpeed's prediction API client: submit, result polling, media upload (the lip-sync role built on it
is ``castflow.providers.wavespeed.lipsync``).

Protocol: docs/providers/wavespeed.md. Two points the spec marks as uncertain are settings, and both
forms are tested against the fake: the result path (``/predictions/{id}/result`` or ``/predictions/{id}``)
and the media upload (documented multipart ``/media/upload/binary`` or the Python SDK's ticket + PUT).

Retry rules follow the official SDK: a submit is never retried once it may have reached WaveSpeed (a
POST that timed out may still have created a billed task); result GETs are retried on 429/5xx and
connection errors.
"""

from __future__ import annotations

import contextlib
import functools
import math
import mimetypes
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote

import httpx
from pydantic import SecretStr

from castflow.providers.base import (
    PermanentError,
    ProviderError,
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
    short_body,
    sleep_or_hint,
    with_retries,
)

PROVIDER = "wavespeed"
TERMINAL = frozenset({"completed", "failed", "cancelled", "timeout", "deleted"})
# data.code of failed tasks (wavespeed.md section 3.4): 5xxx are worth another try, 1xxx are not.
TRANSIENT_TASK_CODES = frozenset({5000, 5003, 5004})
# Pixel area of InfiniteTalk's resolution buckets (section 9): about 640x640 and 960x960.
BUCKET_AREA = {"480p": 640 * 640, "720p": 960 * 960}


@dataclass(frozen=True)
class Prediction:
    """The ``data`` of WaveSpeed's envelope (or a webhook's flat body)."""

    id: str
    status: str
    model: str = ""
    outputs: list[str] = field(default_factory=list)
    error: str = ""
    code: int | None = None
    execution_ms: int | None = None
    result_url: str | None = None

    @classmethod
    def parse(cls, data: dict[str, Any]) -> Prediction:
        timings = data.get("timings") or {}
        ms = data.get("executionTime")
        if ms is None and isinstance(timings, dict):
            ms = timings.get("inference")
        urls = data.get("urls") or {}
        code = data.get("code")
        return cls(
            id=str(data.get("id", "")),
            status=str(data.get("status", "")),
            model=str(data.get("model") or ""),
            outputs=[str(u) for u in (data.get("outputs") or [])],
            error=str(data.get("error") or ""),
            code=int(code) if isinstance(code, int) else None,
            execution_ms=int(ms) if isinstance(ms, int | float) else None,
            result_url=urls.get("get") if isinstance(urls, dict) else None,
        )


class WaveSpeedClient:
    """WaveSpeed's v3 API over httpx (async); the transport is injectable (tests use the loopback fake)."""

    def __init__(
        self,
        key: SecretStr,
        *,
        base_url: str = "https://api.wavespeed.ai",
        result_path: Literal["result", "bare"] = "result",
        upload_mode: Literal["binary", "ticket"] = "binary",
        transport: httpx.AsyncBaseTransport | None = None,
        policy: RetryPolicy | None = None,
        poll: PollSchedule | None = None,
        timeout: float = 60.0,
        webhook_url: str | None = None,
        hint: Callable[[str], object | None] | None = None,
    ) -> None:
        """``webhook_url`` is sent with every submit; ``hint(request_id)`` looks up a delivered webhook."""
        self._key = key
        self.uploads = UploadCache()
        self.webhook_url = webhook_url
        self.hint = hint
        self.base_url = base_url.rstrip("/")
        self.result_path = result_path
        self.upload_mode = upload_mode
        self.transport = transport
        self.policy = policy or RetryPolicy()
        self.poll = poll or PollSchedule(first=5.0, factor=2.0, cap=30.0)
        self._timeout = timeout
        self._pool, self._plain, self._submits = provider_pools(
            transport, timeout, f"Bearer {key.get_secret_value()}"
        )

    def _client(self) -> contextlib.AbstractAsyncContextManager[httpx.AsyncClient]:
        """The pooled client with the API key (kept open; connections are reused)."""
        return self._pool.get()

    async def submit(
        self, model_id: str, payload: dict[str, Any], *, webhook_url: str | None = None
    ) -> Prediction:
        """Create a prediction. Retried only when WaveSpeed surely did not take it (connect errors, 429)."""
        url = f"{self.base_url}/api/v3/{model_id.strip('/')}"
        webhook_url = webhook_url or self.webhook_url
        if webhook_url:
            url += f"?webhook={quote(webhook_url, safe='')}"

        async def call() -> Prediction:
            async with self._submits.get() as client:
                resp = await post_submit(client, url, payload, PROVIDER)
            if resp.status_code == 429:
                raise RetryableHTTPError(resp)  # rate limit: the task was not created
            if resp.status_code >= 500:
                # The SDK never retries a submit: a 5xx may still have created a billed task.
                raise SubmitOutcomeUnknown(PROVIDER, f"HTTP {resp.status_code}")
            try:
                return _prediction(resp)
            except TransientError as exc:  # a 2xx that is not JSON, or an envelope code >= 500
                raise SubmitOutcomeUnknown(PROVIDER, str(exc)) from None

        return await with_retries(call, self.policy, provider=PROVIDER)

    def result_url(self, request_id: str) -> str:
        base = f"{self.base_url}/api/v3/predictions/{request_id}"
        return f"{base}/result" if self.result_path == "result" else base

    async def result(self, request_id: str) -> Prediction:
        async def call() -> Prediction:
            async with self._client() as client:
                resp = await client.get(self.result_url(request_id), timeout=httpx.Timeout(30, connect=10))
            if resp.status_code == 404:
                raise RequestNotFound(
                    f"wavespeed: prediction {request_id} not found (results are kept 7 days)",
                    provider=PROVIDER,
                    request_id=request_id,
                )
            return _prediction(resp)

        return await with_retries(call, self.policy, provider=PROVIDER)

    async def wait(
        self,
        request_id: str,
        *,
        deadline_s: float,
        sleep: Callable[[float], Any] = nap,
        hint: Callable[[], object | None] | None = None,
        expected_s: float = 0.0,
    ) -> Prediction:
        """Poll with exponential backoff until a terminal status or the deadline.

        ``expected_s``: how long the job should take; the first poll waits that long (a render is not
        worth asking about before it can be done). ``hint`` (a webhook record lookup) is asked while
        waiting: a completion delivered by webhook ends the wait with one result call.
        """
        if hint is None and self.hint is not None:
            hint = functools.partial(self.hint, request_id)
        started = time.monotonic()
        if expected_s > 0 and await sleep_or_hint(min(expected_s, deadline_s), sleep, hint):
            hint = None
        for delay in self.poll.delays():
            pred = await self.result(request_id)
            if pred.status == "completed":
                if not pred.outputs:
                    raise PermanentError(
                        "wavespeed: completed without outputs", provider=PROVIDER, request_id=request_id
                    )
                return pred
            if pred.status in TERMINAL:
                raise task_error(pred, request_id)
            left = deadline_s - (time.monotonic() - started)
            if left <= 0:
                raise TransientError(
                    f"wavespeed: prediction {request_id} not done after {deadline_s:.0f} s "
                    f"(status {pred.status})",
                    provider=PROVIDER,
                    request_id=request_id,
                )
            if await sleep_or_hint(min(delay, left), sleep, hint):
                hint = None  # woken by the webhook: from now on, the normal schedule
        raise AssertionError("unreachable")  # pragma: no cover

    async def upload(self, path: Path) -> str:
        """Upload a local file (streamed); returns the ``download_url`` to pass as image/audio.
        A file already uploaded by this process in the last hour is not uploaded again."""
        return await self.uploads.fetch(path, lambda: self._upload(path))

    async def _upload(self, path: Path) -> str:
        if self.upload_mode == "ticket":
            return await self._upload_ticket(path)
        content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"

        async def call() -> str:
            async with self._client() as client:
                with open(path, "rb") as fh:
                    resp = await client.post(
                        f"{self.base_url}/api/v3/media/upload/binary",
                        files={"file": (path.name, fh, content_type)},
                        timeout=httpx.Timeout(300, connect=10),
                    )
            return _download_url(resp)

        return await with_retries(call, self.policy, provider=PROVIDER)

    async def _upload_ticket(self, path: Path) -> str:
        """The Python SDK's flow: ask for a ticket, PUT the bytes (no Authorization) to its URL."""
        size = path.stat().st_size
        ticket_body: dict[str, Any] = {"filename": path.name, "size": size}
        guessed = mimetypes.guess_type(path.name)[0]
        if guessed:
            ticket_body["content_type"] = guessed

        async def call() -> str:
            async with self._client() as client:
                resp = await client.post(f"{self.base_url}/api/v3/media/uploads", json=ticket_body)
            data = _envelope(resp)
            upload = data.get("upload") or {}
            if not upload.get("url") or not data.get("download_url"):
                raise PermanentError("wavespeed: upload ticket without a URL", provider=PROVIDER)
            headers = {str(k): str(v) for k, v in (upload.get("headers") or {}).items()}
            headers["Content-Length"] = str(size)
            async with self._plain.get() as plain:
                with open(path, "rb") as fh:
                    put = await plain.request(
                        str(upload.get("method") or "PUT"),
                        str(upload["url"]),
                        content=file_chunks(fh),
                        headers=headers,
                    )
            if not put.is_success:
                if put.status_code == 429 or put.status_code >= 500:
                    raise RetryableHTTPError(put)
                raise PermanentError(
                    f"wavespeed: upload PUT answered HTTP {put.status_code}: {short_body(put)}",
                    provider=PROVIDER,
                )
            return str(data["download_url"])

        return await with_retries(call, self.policy, provider=PROVIDER)

    async def download(self, url: str, dest: Path) -> Path:
        """Fetch an output to a local file, streaming (outputs are deleted after 7 days: copy promptly)."""
        return await download(
            url, dest, pool=self._plain, policy=self.policy, provider=PROVIDER, check=_raise_http
        )


async def given_or(url: str | None, upload: Callable[[Path], Awaitable[str]], path: Path) -> str:
    return url if url else await upload(path)


def _raise_http(resp: httpx.Response) -> None:
    """Non-2xx answers onto castflow's errors (the key is never part of a message)."""
    code = resp.status_code
    if code == 429 or code >= 500:
        raise RetryableHTTPError(resp)
    if code == 401:
        raise PermanentError(
            "wavespeed: the API key was refused (401); a key works only after the account's first top-up",
            provider=PROVIDER,
        )
    if code == 403:
        raise PermanentError(f"wavespeed: forbidden (403): {_message(resp)}", provider=PROVIDER)
    raise PermanentError(f"wavespeed: HTTP {code}: {_message(resp)}", provider=PROVIDER)


def _message(resp: httpx.Response) -> str:
    try:
        body = resp.json()
    except ValueError:
        return short_body(resp)
    if isinstance(body, dict) and body.get("message"):
        return str(body["message"])
    return short_body(resp)


def _envelope(resp: httpx.Response) -> dict[str, Any]:
    """The ``data`` of a ``{code, message, data}`` answer; errors mapped (HTTP status, then ``code``)."""
    if not resp.is_success:
        _raise_http(resp)
    try:
        body = resp.json()
    except ValueError as exc:
        raise TransientError(f"wavespeed: answer is not JSON: {short_body(resp)}", provider=PROVIDER) from exc
    if not isinstance(body, dict):
        raise PermanentError(f"wavespeed: unexpected answer {short_body(resp)}", provider=PROVIDER)
    code = body.get("code", 200)
    if code != 200:
        message = f"wavespeed: {body.get('message') or 'error'} (code {code})"
        if isinstance(code, int) and (code == 429 or code >= 500):
            raise TransientError(message, provider=PROVIDER)
        raise PermanentError(message, provider=PROVIDER)
    data = body.get("data")
    if not isinstance(data, dict):
        raise PermanentError(f"wavespeed: answer without data: {short_body(resp)}", provider=PROVIDER)
    return data


def _prediction(resp: httpx.Response) -> Prediction:
    return Prediction.parse(_envelope(resp))


def _download_url(resp: httpx.Response) -> str:
    data = _envelope(resp)
    if not data.get("download_url"):
        raise PermanentError("wavespeed: upload answer without download_url", provider=PROVIDER)
    return str(data["download_url"])


def task_error(pred: Prediction, request_id: str) -> ProviderError:
    """A failed/cancelled/timed-out task as a castflow error, carrying WaveSpeed's message."""
    detail = pred.error or "no error message"
    code = f", code {pred.code}" if pred.code is not None else ""
    message = f"wavespeed: prediction {request_id} {pred.status}: {detail}{code}"
    transient = pred.status == "timeout" or pred.code in TRANSIENT_TASK_CODES
    if transient:
        return TransientError(message, provider=PROVIDER, request_id=request_id, job_failed=True)
    return PermanentError(message, provider=PROVIDER, request_id=request_id, job_failed=True)


def billed_seconds(audio_seconds: float, *, minimum: float = 5.0, cap: float = 600.0) -> int:
    """InfiniteTalk bills the input audio length rounded up to whole seconds, 5 s minimum, 600 s cap."""
    return int(max(minimum, min(cap, math.ceil(round(audio_seconds, 6)))))
