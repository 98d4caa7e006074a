"""A loopback fake of fal.ai's queue API and CDN, speaking the protocol of docs/providers/fal.md.

It returns real media made by the embedded providers, so QC runs on its outputs. Knobs set queue and
run times and inject faults (429/5xx answers, failed jobs, lost submit answers, latency), scripted or
drawn at random (see :class:`castflow.providers.loopback.FaultKnobs`), for the tests and benchmarks.

ElevenLabs speech asked for ``timestamps`` carries them, from the eSpeak word events of the audio it
returns (``Knobs.timestamps_shape``): by default as word objects ``{"text", "start", "end", "type"}`` with
``"spacing"`` entries between them, the shape of fal's own ElevenLabs word type (``TranscriptionWord`` of
``fal-ai/elevenlabs/speech-to-text``; fal types the TTS field only as a list), or as ElevenLabs' character
alignment (``{"characters", "character_start_times_seconds", "character_end_times_seconds"}``, in a list).

Webhooks (spec §1.10): each fake has its own Ed25519 key, published at ``/.well-known/jwks.json``. A
submit with ``?fal_webhook=<url>`` gets the signed ``{request_id, gateway_request_id, status, payload,
error?}`` POSTed to that URL when the job completes, retried on non-2xx; knobs corrupt the signature,
deliver twice or fail JWKS fetches. Every attempt is logged in ``FakeFal.deliveries``.
"""

from __future__ import annotations

import collections
import heapq
import io
import json
import re
import shutil
import tempfile
import threading
import time
import uuid
import wave
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import httpx
import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from PIL import Image, ImageDraw

from castflow.models import Voice
from castflow.portraits import RATIOS, hold_product, reframe
from castflow.providers.fal.jwks import public_jwk
from castflow.providers.fal.timestamps import WORD
from castflow.providers.fal.webhook import sign_fal
from castflow.providers.local import EspeakSpeech, LocalImageEditor
from castflow.providers.loopback import (
    Codes,
    FaultKnobs,
    JsonHandler,
    LoopbackServer,
    Rate,
    Submitted,
    file_sha256,
)

VALID_KEY = "fake-key-id:fake-key-secret"
EDIT_MODELS = ("fal-ai/nano-banana/edit",)
# nano-banana/edit's aspect_ratio enum (../shared/specs/fal.md)
ASPECT_RATIOS = ("auto", "21:9", "16:9", "3:2", "4:3", "5:4", "1:1", "4:5", "3:4", "2:3", "9:16")
TTS_MODELS = (
    "fal-ai/elevenlabs/tts/multilingual-v2",
    "fal-ai/elevenlabs/tts/turbo-v2.5",
    "fal-ai/elevenlabs/tts/eleven-v3",
    "fal-ai/minimax/speech-2.8-hd",
)
TIMESTAMP_SHAPES = ("words", "alignment", "none")
# fal voice names → eSpeak NG voices, so different fal voices sound different in the fake.
VOICES = {"Rachel": "en-us+f3", "Aria": "en-us+f4", "Roger": "en+m3", "Wise_Woman": "en-us+f2"}


@dataclass
class Knobs(FaultKnobs):
    queue_seconds: float = 0.0
    run_seconds: float = 0.0
    fail_jobs: list[tuple[str, str]] = field(default_factory=list)  # (error, error_type) for the next jobs
    status_errors: list[int] = field(default_factory=list)  # HTTP codes answered by the next status calls
    submit_errors: list[int] = field(default_factory=list)  # HTTP codes answered by the next submits
    jwks_errors: list[int] = field(default_factory=list)  # HTTP codes answered by the next JWKS fetches
    webhook_attempts: int = 4  # first delivery + retries on non-2xx or connection errors
    webhook_retry_delay_s: float = 0.05  # doubles after each failed attempt
    webhook_corrupt_signature: bool = False  # sign, then flip one hex digit of the signature
    webhook_deliver_twice: bool = False  # after a 2xx, send the identical request once more
    webhook_user_id: str = "fake-user-0001"
    concurrency: int = 0  # account cap on IN_PROGRESS requests (0: none); the rest wait IN_QUEUE, as on fal
    run_seconds_by_model: dict[str, float] = field(default_factory=dict)  # overrides run_seconds per model
    # Cheap outputs for benchmarks: the edit returns its input image, speech is a tone as long as the
    # text would take to say (~15 characters a second). Real media either way, so QC still applies.
    synthetic: bool = False
    latency: float = 0.0  # seconds added before every API answer (slow networks, client timeouts)
    status_error_rate: Rate = 0.0
    status_error_codes: Codes = field(default_factory=lambda: [500, 503])
    # How a job failed by fail_job_rate ends: (error, error_type); this type is one fal retries.
    fail_job_error: tuple[str, str] = ("Runner disconnected", "runner_disconnected")
    # How ElevenLabs speech asked for ``timestamps`` carries them (TIMESTAMP_SHAPES; "none": not at all).
    timestamps_shape: str = "words"


class _InputUnavailable(Exception):
    """An input URL of a job could not be fetched."""


@dataclass
class Job:
    id: str
    model: str
    payload: dict[str, Any]
    created: float
    knobs_queue: float
    knobs_run: float
    submitted: Submitted
    error: tuple[str, str] | None = None
    output: dict[str, Any] | None = None
    cancelled: bool = False
    webhook_url: str | None = None
    started: float | None = None  # when it left the queue (set by the scheduler)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)


@dataclass(frozen=True)
class Delivery:
    """One webhook POST the fake made: its target, the job, and the answer (0: connection failed)."""

    url: str
    request_id: str
    status_code: int
    duplicate: bool = False


class FakeFal(LoopbackServer):
    """Start with :meth:`running`; ``url`` serves as queue, rest and CDN host at once."""

    def __init__(self) -> None:
        super().__init__()
        self.handler = _Handler
        self.knobs = Knobs()
        self.jobs: dict[str, Job] = {}
        self.files: dict[str, tuple[Path, str]] = {}  # URL path → (file on disk, content type)
        self.calls: dict[str, int] = {
            "file": 0,
            "submit": 0,
            "status": 0,
            "result": 0,
            "cancel": 0,
            "upload": 0,
            "token": 0,
            "jwks": 0,
        }
        self.lock = threading.Lock()
        self._pending: collections.deque[Job] = collections.deque()  # not started, in submit order
        self._ends: list[float] = []  # end times of started jobs (a heap), for the concurrency cap
        self.peak_in_progress = 0
        self.signing_key = Ed25519PrivateKey.generate()
        self.deliveries: list[Delivery] = []
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._work = Path(tempfile.mkdtemp(prefix="fake-fal-"))

    def stopped(self) -> None:
        self._stop.set()
        for t in list(self._threads):
            t.join(timeout=5)
        shutil.rmtree(self._work, ignore_errors=True)

    def job_records(self) -> list[dict[str, Any]]:
        """Every job created, in submit order, with its status now (``GET /_fake/jobs``)."""
        now = time.monotonic()
        with self.lock:
            self._advance(now)
            jobs = list(self.jobs.values())
        return [self._record(job, now) for job in jobs]

    def _record(self, job: Job, now: float) -> dict[str, Any]:
        phase = self._phase(job, now)
        status = {"IN_QUEUE": "queued", "IN_PROGRESS": "running"}.get(phase, "completed")
        if phase == "COMPLETED" and (job.error is not None or job.cancelled):
            status = "failed"
        return job.submitted.record("fal", job.id, job.model, status)

    # ---- webhooks -------------------------------------------------------------------------------

    def rotate_key(self) -> None:
        """Sign with a new key from now on; the JWKS publishes only the new key."""
        with self.lock:
            self.signing_key = Ed25519PrivateKey.generate()

    def jwks(self) -> dict[str, Any]:
        """The published key set: the current public key, with an unpadded base64url ``x``."""
        with self.lock:
            key = self.signing_key.public_key()
        return {"keys": [public_jwk(key, kid="fake-fal-1")]}

    def wait_for_deliveries(self, count: int, timeout: float = 10.0) -> list[Delivery]:
        """The delivery log once it holds ``count`` attempts (or at the timeout)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if len(self.deliveries) >= count:
                    return list(self.deliveries)
            time.sleep(0.01)
        with self.lock:
            return list(self.deliveries)

    def _start_webhook(self, job: Job) -> None:
        thread = threading.Thread(target=self._deliver, args=(job,), daemon=True)
        with self.lock:
            self._threads = [t for t in self._threads if t.is_alive()]  # finished deliveries
            self._threads.append(thread)
        thread.start()

    def _webhook_body(self, job: Job) -> bytes:
        if job.error is not None:
            doc: dict[str, Any] = {
                "request_id": job.id,
                "gateway_request_id": job.id,
                "status": "ERROR",
                "error": "Invalid status code: 422",
                "payload": {"detail": [{"loc": ["body"], "msg": job.error[0], "type": job.error[1]}]},
            }
        else:
            doc = {"request_id": job.id, "gateway_request_id": job.id, "status": "OK", "payload": job.output}
        return json.dumps(doc).encode()

    def _deliver(self, job: Job) -> None:
        """Wait for the job to complete, then POST its signed payload; retry on failure like fal."""
        while self._state(job) != "COMPLETED":
            if self._stop.wait(0.02):
                return
        try:
            self._finish(job)
        except Exception:  # the status route would report the same failure; nothing to deliver
            return
        assert job.webhook_url is not None
        body = self._webhook_body(job)
        knobs = self.knobs
        delay = knobs.webhook_retry_delay_s
        for attempt in range(max(1, knobs.webhook_attempts)):
            if attempt and self._stop.wait(delay):
                return
            if attempt:
                delay *= 2
            with self.lock:
                key = self.signing_key
            headers = sign_fal(key, job.id, knobs.webhook_user_id, int(time.time()), body)
            if knobs.webhook_corrupt_signature:
                sig = headers["X-Fal-Webhook-Signature"]
                headers["X-Fal-Webhook-Signature"] = ("1" if sig[0] == "0" else "0") + sig[1:]
            headers["Content-Type"] = "application/json"
            code = self._post(job, body, headers)
            if 200 <= code < 300:
                if knobs.webhook_deliver_twice:
                    self._post(job, body, headers, duplicate=True)
                return

    def _post(self, job: Job, body: bytes, headers: dict[str, str], *, duplicate: bool = False) -> int:
        assert job.webhook_url is not None
        try:
            code = httpx.post(job.webhook_url, content=body, headers=headers, timeout=15).status_code
        except httpx.HTTPError:
            code = 0
        with self.lock:
            self.deliveries.append(Delivery(job.webhook_url, job.id, code, duplicate))
        return code

    # ---- model execution ------------------------------------------------------------------------

    def _advance(self, now: float) -> None:
        """Start queued jobs, first in first out, as slots free up under the concurrency cap (lock held).

        A job starts when its queue time has passed and a slot is free, at the exact moment that
        happened (not when someone looked), so the simulated timeline does not depend on polling.
        """
        cap = self.knobs.concurrency or float("inf")
        while self._pending:
            job = self._pending[0]
            if job.cancelled:
                self._pending.popleft()
                continue
            ready = job.created + job.knobs_queue
            while self._ends and self._ends[0] <= ready:
                heapq.heappop(self._ends)
            start = ready if len(self._ends) < cap else max(ready, self._ends[0])
            if start > now:
                return
            if len(self._ends) >= cap:
                heapq.heappop(self._ends)
            job.started = start
            heapq.heappush(self._ends, start + job.knobs_run)
            self._pending.popleft()
            self.peak_in_progress = max(self.peak_in_progress, len(self._ends))

    def _state(self, job: Job) -> str:
        now = time.monotonic()
        if job.cancelled:
            return "COMPLETED"
        with self.lock:
            self._advance(now)
        return self._phase(job, now)

    @staticmethod
    def _phase(job: Job, now: float) -> str:
        """The job's status at ``now``, once the scheduler has advanced to it."""
        if job.cancelled:
            return "COMPLETED"
        if job.started is None:
            return "IN_QUEUE"
        if now < job.started + job.knobs_run:
            return "IN_PROGRESS"
        return "COMPLETED"

    def _finish(self, job: Job) -> None:
        with job.lock:  # the status route and the webhook thread may both get here
            self._finish_locked(job)

    def _finish_locked(self, job: Job) -> None:
        if job.output is not None or job.error is not None:
            return
        try:
            self._produce(job)
        except _InputUnavailable as exc:  # as fal does: the job fails, quoting the input it could not read
            job.error = (str(exc), "bad_request")

    def _produce(self, job: Job) -> None:
        if job.cancelled:
            job.error = ("Request was cancelled", "client_cancelled")
            return
        if self.knobs.synthetic:
            self._finish_synthetic(job)
            return
        work = Path(tempfile.mkdtemp(dir=self._work))
        if job.model in EDIT_MODELS:
            src = work / "input.png"
            src.write_bytes(self._download(job.payload["image_urls"][0]))
            product = None
            if len(job.payload["image_urls"]) > 1:  # a second image: the product to hold
                product = work / "product.png"
                product.write_bytes(self._download(job.payload["image_urls"][1]))
            out = LocalImageEditor().edit(
                src,
                str(job.payload["prompt"]),
                seed=int(job.payload.get("seed", 0)),
                workdir=work,
                ratio=_framed(job.payload),
                product=product,
            )
            url = self._store(out.path, "image/png", "output.png")
            job.output = {
                "images": [{"url": url, "content_type": "image/png", "file_name": "output.png"}],
                "description": "",
            }
        else:
            text = str(job.payload.get("text") or job.payload.get("prompt"))
            voice_name = job.payload.get("voice") or (job.payload.get("voice_setting") or {}).get(
                "voice_id", "Rachel"
            )
            voice = Voice(provider="local", model="espeak-ng", voice_id=VOICES.get(voice_name, "en-us"))
            out = EspeakSpeech().synthesize(text, voice, workdir=work)
            url = self._store(out.path, "audio/wav", "speech.wav")
            job.output = {"audio": {"url": url, "content_type": "audio/wav", "file_name": "speech.wav"}}
            if "minimax" in job.model:
                job.output["duration_ms"] = int((out.seconds or 0) * 1000)
            elif job.payload.get("timestamps") is True:
                stamps = timestamps(text, out.meta.get("words") or [], self.knobs.timestamps_shape)
                if stamps is not None:
                    job.output["timestamps"] = stamps
        shutil.rmtree(work, ignore_errors=True)

    def _finish_synthetic(self, job: Job) -> None:
        if job.model in EDIT_MODELS:
            # The edit: a small mark whose colour and place follow the prompt and seed, so every
            # (portrait, scene, seed) gives its own image (and content hash), as a real edit would.
            with Image.open(io.BytesIO(self._download(job.payload["image_urls"][0]))) as picture:
                edited = picture.convert("RGB")
            if (ratio := _framed(job.payload)) is not None:  # the frame asked for, the picture inside it
                canvas, place = reframe(edited.size, ratio)
                framed = Image.new("RGB", canvas, (120, 140, 160))
                framed.paste(edited, place)
                edited = framed
            if len(job.payload["image_urls"]) > 1:  # the product, held
                with Image.open(io.BytesIO(self._download(job.payload["image_urls"][1]))) as product:
                    edited = hold_product(edited, product.convert("RGBA"))
            mark = zlib.crc32(f"{job.payload.get('prompt')}|{job.payload.get('seed')}".encode())
            x, y = mark % max(1, edited.width - 8), (mark >> 12) % max(1, edited.height - 8)
            ImageDraw.Draw(edited).rectangle((x, y, x + 8, y + 8), fill=(mark & 255, (mark >> 8) & 255, 90))
            buffer = io.BytesIO()
            edited.save(buffer, "PNG", compress_level=1)
            url = self._store(buffer.getvalue(), "image/png", "output.png")
            job.output = {"images": [{"url": url, "content_type": "image/png", "file_name": "output.png"}]}
            return
        text = str(job.payload.get("text") or job.payload.get("prompt"))
        rate = 16_000
        t = np.arange(int(rate * max(0.5, len(text) / 15))) / rate
        pitch = 120 + zlib.crc32(text.encode()) % 160  # different texts sound (and hash) different
        tone = (np.sin(2 * np.pi * pitch * t) * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t)) * 9000).astype(
            "int16"
        )
        buffer = io.BytesIO()
        with wave.open(buffer, "wb") as out:
            out.setnchannels(1)
            out.setsampwidth(2)
            out.setframerate(rate)
            out.writeframes(tone.tobytes())
        url = self._store(buffer.getvalue(), "audio/wav", "speech.wav")
        job.output = {"audio": {"url": url, "content_type": "audio/wav", "file_name": "speech.wav"}}
        if "elevenlabs" in job.model and job.payload.get("timestamps") is True:
            # As a real ElevenLabs answer: timestamps with the audio, here the words spread evenly over it.
            count = len(WORD.findall(text))
            step = len(t) / rate / max(1, count)
            even = [{"start": i * step, "end": (i + 0.8) * step} for i in range(count)]
            stamps = timestamps(text, even, self.knobs.timestamps_shape)
            if stamps is not None:
                job.output["timestamps"] = stamps

    def _download(self, url: str) -> bytes:
        if url.startswith(self.url):
            return self.files[urlparse(url).path][0].read_bytes()
        try:
            resp = httpx.get(url, timeout=30)
            resp.raise_for_status()
        except httpx.HTTPError as exc:
            raise _InputUnavailable(f"Failed to download the file at {url}: {exc}") from None
        return resp.content

    def _store(self, data: bytes | Path, content_type: str, name: str) -> str:
        """Keep a file (on disk, not in memory) and return its CDN URL."""
        token = uuid.uuid4().hex
        dest = self._work / "files" / f"{token}-{name}"
        dest.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(data, Path):
            shutil.copyfile(data, dest)
        else:
            dest.write_bytes(data)
        path = f"/files/b/{token}/{name}"
        digest = file_sha256(dest)
        with self.lock:
            self.files[path] = (dest, content_type)
            self.sha256s[path] = digest
        return self.url + path


def _framed(payload: dict[str, Any]) -> str | None:
    """The edit's frame: ``aspect_ratio`` as the model takes it; ``auto`` (the default) and ratios the
    embedded editor does not draw keep the input's frame, as ``auto`` does."""
    ratio = payload.get("aspect_ratio", "auto")
    return ratio if ratio in RATIOS and ratio != "9:16" else None


def timestamps(text: str, words: list[dict[str, Any]], shape: str) -> list[dict[str, Any]] | None:
    """The ``timestamps`` of an ElevenLabs output saying ``text``, from eSpeak's ``words`` (``{"word",
    "start", "end"}`` of each word of ``text``, in order), in ``shape`` (TIMESTAMP_SHAPES)."""
    spans = [(m.start(), m.end()) for m in WORD.finditer(text)]
    if shape == "none" or not words or len(spans) != len(words):
        return None
    times = [(float(w["start"]), float(w["end"])) for w in words]
    if shape == "alignment":
        starts: list[float] = []
        ends: list[float] = []
        n = 0  # the word at or after the character
        for i in range(len(text)):
            while n < len(spans) and spans[n][1] <= i:
                n += 1
            if n < len(spans) and spans[n][0] <= i:
                (a, b), (t0, t1) = spans[n], times[n]
                starts.append(round(t0 + (t1 - t0) * (i - a) / (b - a), 3))
                ends.append(round(t0 + (t1 - t0) * (i + 1 - a) / (b - a), 3))
            else:  # between words: the gap from the word before to the next
                before = times[n - 1][1] if n > 0 else 0.0
                after = times[n][0] if n < len(times) else before
                starts.append(round(before, 3))
                ends.append(round(max(before, after), 3))
        return [
            {
                "characters": list(text),
                "character_start_times_seconds": starts,
                "character_end_times_seconds": ends,
            }
        ]
    # Words as ElevenLabs' speech-to-text writes them: punctuation kept, spacing entries between.
    entries: list[dict[str, Any]] = []
    n = 0
    for chunk in re.finditer(r"\S+", text):
        inside = [k for k in range(n, len(spans)) if spans[k][0] < chunk.end()]
        if not inside:
            continue
        n = inside[-1] + 1
        start, end = times[inside[0]][0], times[inside[-1]][1]
        if entries:
            gap = entries[-1]["end"]
            entries.append({"text": " ", "start": gap, "end": max(gap, start), "type": "spacing"})
        entries.append({"text": chunk.group(), "start": start, "end": end, "type": "word"})
    return entries


def _validate(model: str, payload: dict[str, Any]) -> list[dict[str, Any]]:
    errors: list[dict[str, Any]] = []

    def missing(name: str) -> None:
        errors.append({"loc": ["body", name], "msg": "Field required", "type": "missing"})

    if model in EDIT_MODELS:
        if not payload.get("prompt"):
            missing("prompt")
        if not payload.get("image_urls"):
            missing("image_urls")
        ratio = payload.get("aspect_ratio", "auto")
        if ratio not in ASPECT_RATIOS:
            errors.append(
                {
                    "loc": ["body", "aspect_ratio"],
                    "msg": "Input should be " + ", ".join(f"'{r}'" for r in ASPECT_RATIOS),
                    "type": "literal_error",
                    "input": ratio,
                }
            )
        fmt = payload.get("output_format", "png")
        if fmt not in ("jpeg", "png", "webp"):
            errors.append(
                {
                    "loc": ["body", "output_format"],
                    "msg": "Input should be 'jpeg', 'png' or 'webp'",
                    "type": "literal_error",
                    "input": fmt,
                }
            )
    elif "minimax" in model:
        if not payload.get("prompt"):
            missing("prompt")
    elif not payload.get("text"):
        missing("text")
    if "elevenlabs" in model and not isinstance(payload.get("timestamps", False), bool):
        errors.append(
            {
                "loc": ["body", "timestamps"],
                "msg": "Input should be a valid boolean",
                "type": "bool_type",
                "input": payload["timestamps"],
            }
        )
    return errors


class _Handler(JsonHandler):
    fake: FakeFal

    def _injected(
        self,
        call: str,
        error_type: str,
        *,
        scripted: list[int] | None = None,
        rate: float = 0.0,
        codes: list[int] | None = None,
    ) -> bool:
        return self.counted(
            call,
            lambda _code: {"detail": "injected", "error_type": error_type},
            scripted=scripted,
            rate=rate,
            codes=codes or (),
        )

    def _authorised(self) -> bool:
        if self.headers.get("Authorization") != f"Key {VALID_KEY}":
            self.send(401, {"detail": "No user found for Key ID and Secret"})
            return False
        return True

    def do_GET(self) -> None:
        fake = self.fake
        if self.answered_fake():
            return
        self.delay()
        path = urlparse(self.path).path
        if path == "/.well-known/jwks.json":
            if not self._injected("jwks", "internal_error", scripted=fake.knobs.jwks_errors):
                self.send(200, fake.jwks())
            return
        if path.startswith("/files/"):
            item = fake.files.get(path)
            with fake.lock:
                fake.calls["file"] += 1
            if item is None:
                self.send(404, {"detail": "Not found"})
                return
            self.send(200, item[0].read_bytes(), {"Content-Type": item[1]})
            return
        if not self._authorised():
            return
        parts = path.strip("/").split("/")
        if len(parts) >= 4 and parts[2] == "requests":
            job = fake.jobs.get(parts[3])
            if job is None or "/".join(parts[:2]) != "/".join(job.model.split("/")[:2]):
                self.send(404, {"detail": "Request not found"})
                return
            if len(parts) == 5 and parts[4] == "status":
                self._status(job)
                return
            if len(parts) == 4:
                self._result(job)
                return
        self.send(405 if "requests" in parts else 404, {"detail": f"Path {path} not found"})

    def _status(self, job: Job) -> None:
        fake = self.fake
        knobs = fake.knobs
        if self._injected(
            "status",
            "internal_error",
            scripted=knobs.status_errors,
            rate=knobs.status_error_rate,
            codes=knobs.status_error_codes,
        ):
            return
        state = fake._state(job)
        base = {
            "status": state,
            "request_id": job.id,
            "response_url": f"{fake.url}/{_app(job.model)}/requests/{job.id}",
        }
        if state == "IN_QUEUE":
            self.send(202, {**base, "queue_position": 0})
        elif state == "IN_PROGRESS":
            self.send(202, {**base, "logs": []})
        else:
            fake._finish(job)
            body = {**base, "logs": [], "metrics": {"inference_time": job.knobs_run}}
            if job.error:
                body.update(error=job.error[0], error_type=job.error[1])
            self.send(200, body)

    def _result(self, job: Job) -> None:
        fake = self.fake
        knobs = fake.knobs
        if self._injected(
            "result", "internal_error", rate=knobs.result_error_rate, codes=knobs.result_error_codes
        ):
            return
        if fake._state(job) != "COMPLETED":
            self.send(400, {"detail": "Request is still in progress"})
            return
        fake._finish(job)
        if job.error:
            self.send(422, {"detail": [{"loc": ["body"], "msg": job.error[0], "type": job.error[1]}]})
            return
        self.send(200, job.output, {"x-fal-request-id": job.id, "x-fal-billable-units": "1"})

    def do_PUT(self) -> None:
        fake = self.fake
        self.delay()
        if not self._authorised():
            return
        parts = urlparse(self.path).path.strip("/").split("/")
        if len(parts) == 5 and parts[2] == "requests" and parts[4] == "cancel":
            job = fake.jobs.get(parts[3])
            with fake.lock:
                fake.calls["cancel"] += 1
            if job is None:
                self.send(404, {"status": "NOT_FOUND"})
            elif fake._state(job) == "COMPLETED":
                self.send(400, {"status": "ALREADY_COMPLETED"})
            else:
                job.cancelled = True
                self.send(202, {"status": "CANCELLATION_REQUESTED"})
            return
        self.send(404, {"detail": "Not found"})

    def do_POST(self) -> None:
        fake = self.fake
        if self.answered_fake():
            return
        self.delay()
        url = urlparse(self.path)
        path = url.path
        body = self.body()
        if path == "/storage/auth/token":
            if not self._authorised():
                return
            with fake.lock:
                fake.calls["token"] += 1
            self.send(
                200,
                {
                    "token": uuid.uuid4().hex,
                    "token_type": "Bearer",
                    "base_url": fake.url,
                    "created_at": "2026-01-01T00:00:00+00:00",
                    "expires_at": "2099-01-01T00:00:00+00:00",
                },
            )
            return
        if path == "/files/upload":
            if not (self.headers.get("Authorization") or "").startswith("Bearer "):
                self.send(401, {"detail": "Unauthorized"})
                return
            with fake.lock:
                fake.calls["upload"] += 1
            name = self.headers.get("X-Fal-File-Name") or "file.bin"
            self.send(
                200,
                {
                    "access_url": fake._store(body, self.headers.get("Content-Type", ""), name),
                    "uploaded": True,
                },
            )
            return
        if not self._authorised():
            return
        model = path.strip("/")
        if model not in EDIT_MODELS + TTS_MODELS:
            self.send(404, {"detail": f"Path {path} not found"})
            return
        knobs = fake.knobs
        # Without x-fal-request-id, as fal's ingress answers: nothing was queued, the client may resend.
        if self._injected(
            "submit",
            "runner_scheduling_failure",
            scripted=knobs.submit_errors,
            rate=knobs.submit_error_rate,
            codes=knobs.submit_error_codes,
        ):
            return
        try:
            payload = json.loads(body or b"{}")
        except ValueError:
            self.send(422, {"detail": "Invalid JSON"})
            return
        errors = _validate(model, payload)
        if errors:
            self.send(422, {"detail": errors}, {"x-fal-billable-units": "0"})
            return
        answered = not fake.draws.chance(knobs.lost_answer_rate)
        job = Job(
            uuid.uuid4().hex,
            model,
            payload,
            time.monotonic(),
            knobs.queue_seconds,
            knobs.run_seconds_by_model.get(model, knobs.run_seconds),
            fake.submitted(payload, answered=answered),
        )
        webhook = parse_qs(url.query).get("fal_webhook")
        if webhook:
            job.webhook_url = webhook[0]
        with fake.lock:
            if knobs.fail_jobs:
                job.error = knobs.fail_jobs.pop(0)
            elif fake.draws.chance(knobs.fail_job_rate):
                job.error = knobs.fail_job_error
            fake.jobs[job.id] = job
            fake._pending.append(job)
        fake.log_job(job.submitted.record("fal", job.id, model, "queued"))
        if job.webhook_url:
            fake._start_webhook(job)
        if not answered:
            self.hang_up()
            return
        base = f"{fake.url}/{_app(model)}/requests/{job.id}"
        self.send(
            200,
            {
                "status": "IN_QUEUE",
                "request_id": job.id,
                "gateway_request_id": job.id,
                "response_url": base,
                "status_url": f"{base}/status",
                "cancel_url": f"{base}/cancel",
                "queue_position": 0,
            },
        )


def _app(model: str) -> str:
    return "/".join(model.split("/")[:2])
