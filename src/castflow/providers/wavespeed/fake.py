"""A loopback fake of WaveSpeed's v3 API, speaking the protocol of docs/providers/wavespeed.md section 8.

Submit (``POST /api/v3/{model}``, optional ``?webhook=``), result (``/predictions/{id}/result`` and the
bare ``/predictions/{id}``), media upload (multipart ``/media/upload/binary`` and the SDK's ticket +
PUT), the webhook secret, and signed webhook deliveries. Renders are real MP4s made by the embedded
preview renderer at InfiniteTalk's portrait bucket sizes, so QC runs on them.

Knobs: time in queue, processing time per second of audio, an account concurrency cap (tasks beyond it
wait in ``created``, as on WaveSpeed), failed/cancelled/timed-out jobs, injected HTTP errors on submit
and result, lost submit answers, latency and webhook tampering; faults scripted or drawn at random (see
:class:`castflow.providers.loopback.FaultKnobs`). WaveSpeed has no status call: polling is the result call.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import shutil
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import av
import httpx
import numpy as np
from PIL import Image

from castflow import media
from castflow.providers.local import PreviewLipSync
from castflow.providers.loopback import (
    Codes,
    FaultKnobs,
    JsonHandler,
    LoopbackServer,
    Submitted,
    multipart_file,
)

VALID_KEY = "fake-wavespeed-key"
MODELS = ("wavespeed-ai/infinitetalk", "wavespeed-ai/infinitetalk-fast")
# InfiniteTalk's 9:16 buckets as (width, height) (spec section 9).
SIZES = {"480p": (448, 832), "720p": (704, 1280)}
BUCKETS = {"480p": 640 * 640, "720p": 960 * 960}  # InfiniteTalk's pixel area per resolution


def bucket_size(resolution: str, image: tuple[int, int]) -> tuple[int, int]:
    """The frame InfiniteTalk renders for an image of this size: its portrait bucket for a 9:16 image,
    else the image's ratio at the resolution's pixel area, sides a multiple of 16 (the spec's 16:9 and
    1:1 buckets: 896x448 and 640x640 at 480p; WaveSpeed's exact sizes are unverified)."""
    portrait = SIZES.get(resolution, SIZES["480p"])
    w, h = image
    if abs((w / h) / (9 / 16) - 1) <= 0.05:
        return portrait
    area = BUCKETS.get(resolution, BUCKETS["480p"])
    width = (area * w / h) ** 0.5
    if abs(w / h - 16 / 9) <= 0.05:  # the spec's landscape bucket is 2:1
        width = (area * 2) ** 0.5
    height = area / width
    return 16 * round(width / 16), 16 * round(height / 16)


class _BucketLipSync(PreviewLipSync):
    """The preview renderer at InfiniteTalk's bucket sizes."""

    def frame_size(self, resolution: str, image: tuple[int, int]) -> tuple[int, int]:
        return bucket_size(resolution, image)


@dataclass
class Outcome:
    """How a scripted job ends instead of completing."""

    status: str = "failed"  # failed | cancelled | timeout
    code: int = 1403
    error: str = "Task execution failed"


@dataclass
class Knobs(FaultKnobs):
    queue_seconds: float = 0.0
    seconds_per_audio_second: float = 0.0
    concurrency: int = 0  # 0: no account cap
    latency: float = 0.0  # seconds added before every API answer (slow networks, client timeouts)
    fail_jobs: list[Outcome] = field(default_factory=list)
    submit_errors: list[int] = field(default_factory=list)
    result_errors: list[int] = field(default_factory=list)
    webhook_tamper: bool = False  # sign deliveries with a wrong secret
    webhook_repeat: int = 1  # deliver each webhook this many times (idempotency tests)
    submit_answer_delay: float = 0.0  # the task is created, then the answer comes this late (lost answers)
    # Benchmarks: encode one still-frame video per (length in frames, resolution) and hand out copies.
    # It lasts as long as the audio and passes QC; its picture and sound are those of the first such job.
    synthetic: bool = False
    # A 429 is the only submit error WaveSpeed's clients resend: a 5xx may have created a billed task.
    submit_error_codes: Codes = field(default_factory=lambda: [429])
    # How a task failed by fail_job_rate ends; code 5003 is one castflow submits again.
    fail_job_outcome: Outcome = field(default_factory=lambda: Outcome("failed", 5003, "Service unavailable"))
    # The failed task's error quotes its image URL (signed URLs carry their token: castflow must redact it).
    fail_job_quotes_input: bool = False


@dataclass
class Task:
    id: str
    model: str
    payload: dict[str, Any]
    created_at: str
    submitted: Submitted
    webhook: str | None = None
    status: str = "created"
    outputs: list[str] = field(default_factory=list)
    error: str = ""
    code: int | None = None
    execution_ms: int = 0
    outcome: Outcome | None = None


class FakeWaveSpeed(LoopbackServer):
    """Start with :meth:`running`; ``url`` is the API base, file host and upload host at once."""

    def __init__(self, knobs: Knobs | None = None) -> None:
        super().__init__()
        self.handler = _Handler
        self.knobs = knobs or Knobs()
        self.tasks: dict[str, Task] = {}
        self.calls: dict[str, int] = {
            "file": 0,
            "submit": 0,
            "result": 0,
            "upload": 0,
            "ticket": 0,
            "put": 0,
            "webhook": 0,
        }
        self.webhook_secret = "whsec_" + secrets.token_urlsafe(24)
        self.lock = threading.Lock()
        self.running_now = 0
        self.peak_running = 0
        self._dir = Path(tempfile.mkdtemp(prefix="fake-wavespeed-"))
        self._files: dict[str, tuple[Path, str]] = {}
        self._tickets: dict[str, tuple[str, str, str]] = {}  # token → (file path, content type, URL path)
        self._pool: ThreadPoolExecutor | None = None
        self._rendered: dict[tuple[int, str, tuple[int, int]], bytes] = {}
        self._render_locks: dict[tuple[int, str, tuple[int, int]], threading.Lock] = {}

    def stopped(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
        self.cleanup()

    def cleanup(self) -> None:
        shutil.rmtree(self._dir, ignore_errors=True)

    def job_records(self) -> list[dict[str, Any]]:
        """Every task created, in submit order, with its status now (``GET /_fake/jobs``)."""
        with self.lock:
            tasks = list(self.tasks.values())
        return [self._record(task) for task in tasks]

    @staticmethod
    def _record(task: Task) -> dict[str, Any]:
        status = {"created": "queued", "processing": "running", "completed": "completed"}
        return task.submitted.record("wavespeed", task.id, task.model, status.get(task.status, "failed"))

    # ---- files ----------------------------------------------------------------------------------

    def store(self, data: bytes, content_type: str, name: str) -> str:
        token = uuid.uuid4().hex
        path = self._dir / f"{token}-{Path(name).name}"
        path.write_bytes(data)
        url_path = f"/files/{token}/{Path(name).name}"
        with self.lock:
            self._files[url_path] = (path, content_type)
            self.sha256s[url_path] = hashlib.sha256(data).hexdigest()
        return self.url + url_path

    def _fetch(self, url: str, dest: Path) -> Path:
        local = self._local(url)
        if local is not None:
            shutil.copyfile(local, dest)
        else:
            with httpx.stream("GET", url, timeout=60) as resp:
                resp.raise_for_status()
                with open(dest, "wb") as fh:
                    for chunk in resp.iter_bytes(1 << 20):
                        fh.write(chunk)
        return dest

    # ---- jobs -----------------------------------------------------------------------------------

    def _start(self, task: Task) -> None:
        with self.lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(
                    max_workers=self.knobs.concurrency or 64, thread_name_prefix="fake-ws"
                )
            pool = self._pool
        pool.submit(self._run, task)

    def _run(self, task: Task) -> None:
        started = time.monotonic()
        with self.lock:
            self.running_now += 1
            self.peak_running = max(self.peak_running, self.running_now)
        try:
            while time.monotonic() - started < self.knobs.queue_seconds:  # re-read: tests may shorten it
                time.sleep(0.02)
            task.status = "processing"
            if task.outcome is not None:
                task.status, task.code, task.error = (
                    task.outcome.status,
                    task.outcome.code,
                    task.outcome.error,
                )
                return
            try:
                seconds = self._render(task)
            except Exception as exc:  # the model failing on its input is a failed task, not a crash
                task.status, task.code, task.error = "failed", 1402, f"Failed to process media: {exc}"
                return
            left = self.knobs.seconds_per_audio_second * seconds - (time.monotonic() - started)
            if left > 0:
                time.sleep(left)
            task.execution_ms = int((time.monotonic() - started) * 1000)
            task.status = "completed"
        finally:
            with self.lock:
                self.running_now -= 1
            if task.webhook:
                self._deliver(task)

    def _local(self, url: str) -> Path | None:
        """The stored file behind one of this fake's own URLs (no copy needed), or None."""
        item = self._files.get(urlparse(url).path) if url.startswith(self.url) else None
        return item[0] if item is not None else None

    def _render(self, task: Task) -> float:
        work = Path(tempfile.mkdtemp(dir=self._dir))
        try:
            return self._render_in(task, work)
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def _render_in(self, task: Task, work: Path) -> float:
        resolution = str(task.payload.get("resolution", "480p"))
        if self.knobs.synthetic:
            # Benchmarks: read the length from the WAV header, encode once per (frames, resolution).
            audio = self._local(str(task.payload["audio"])) or self._fetch(
                str(task.payload["audio"]), work / "audio.wav"
            )
            seconds = media.audio_seconds(audio)
            image = self._local(str(task.payload["image"])) or self._fetch(
                str(task.payload["image"]), work / "image.png"
            )
            with Image.open(image) as picture:
                size = bucket_size(resolution, picture.size)
            key = (media.frame_count(seconds, 25), resolution, size)
            with self._render_locks.setdefault(key, threading.Lock()):
                rendered = self._rendered.get(key)
                if rendered is None:  # a still frame for the whole length: cheap to encode
                    with Image.open(image) as picture:
                        still = np.asarray(picture.convert("RGB").resize(size), dtype=np.uint8)
                    # One picture, converted once, under H.264 tuned for a still image on one thread
                    # (a benchmark's fake should not eat its CPU).
                    frame = av.VideoFrame.from_ndarray(still, format="rgb24").reformat(format="yuv420p")
                    still_mp4 = work / "still.mp4"
                    media.encode_video(
                        still_mp4,
                        (frame for _ in range(key[0])),
                        size=size,
                        fps=25,
                        audio=media.decode_audio(audio),
                        options={"preset": "ultrafast", "tune": "stillimage", "threads": "1"},
                    )
                    rendered = self._rendered[key] = still_mp4.read_bytes()
            task.outputs = [self.store(rendered, "video/mp4", f"{task.id}.mp4")]
            return seconds
        image = self._fetch(str(task.payload["image"]), work / "image.png")
        audio = self._fetch(str(task.payload["audio"]), work / "audio.wav")
        seconds = media.decode_audio(audio).seconds
        out = _BucketLipSync(sizes=SIZES).render(
            image, audio, resolution=resolution, seed=0, mouth=None, workdir=work
        )
        task.outputs = [self.store(out.path.read_bytes(), "video/mp4", f"{task.id}.mp4")]
        return seconds

    def data(self, task: Task) -> dict[str, Any]:
        """The prediction as the envelope's ``data`` (and, flat, as the webhook body)."""
        body: dict[str, Any] = {
            "id": task.id,
            "model": task.model,
            "outputs": task.outputs if task.status == "completed" else [],
            "urls": {"get": f"{self.url}/api/v3/predictions/{task.id}/result"},
            "has_nsfw_contents": [False] if task.status == "completed" else [],
            "status": task.status,
            "created_at": task.created_at,
            "error": task.error,
            "executionTime": task.execution_ms,
            "timings": {"inference": task.execution_ms},
        }
        if task.code is not None:
            body["code"] = task.code
        return body

    def _deliver(self, task: Task) -> None:
        """POST the flat prediction, signed; up to 3 attempts with backoff on non-2xx (as WaveSpeed)."""
        from castflow.providers.wavespeed.webhook import sign_wavespeed

        body = json.dumps({**self.data(task), "input": task.payload}).encode()
        secret = "whsec_wrong" if self.knobs.webhook_tamper else self.webhook_secret
        for _ in range(max(1, self.knobs.webhook_repeat)):
            for attempt in range(3):
                headers = sign_wavespeed(secret, task.id, int(time.time()), body)
                headers["Content-Type"] = "application/json"
                with self.lock:
                    self.calls["webhook"] += 1
                try:
                    resp = httpx.post(str(task.webhook), content=body, headers=headers, timeout=10)
                    if resp.is_success:
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(0.05 * 2**attempt)


def _error(code: int, message: str) -> dict[str, Any]:
    return {"code": code, "message": message, "data": None}


def _injected_error(code: int) -> dict[str, Any]:
    return _error(code, "injected error")


def validate(payload: dict[str, Any]) -> str | None:
    """The first problem of an InfiniteTalk body, worded like the live API (spec section 2.1)."""
    for name in ("audio", "image"):
        if not payload.get(name):
            return f'field "{name}" is required'
    if payload.get("resolution", "480p") not in ("480p", "720p"):
        return 'field "resolution" must be one of 480p, 720p'
    seed = payload.get("seed", -1)
    if not isinstance(seed, int) or not -1 <= seed <= 2_147_483_647:
        return 'field "seed" must be an integer between -1 and 2147483647'
    return None


class _Handler(JsonHandler):
    fake: FakeWaveSpeed

    def _authorised(self) -> bool:
        if self.headers.get("Authorization") != f"Bearer {VALID_KEY}":
            self.send(401, _error(401, "Unauthorized: invalid API key"))
            return False
        return True

    def do_GET(self) -> None:
        fake = self.fake
        if self.answered_fake():
            return
        self.delay()
        path = urlparse(self.path).path
        if path.startswith("/files/"):
            item = fake._files.get(path)
            with fake.lock:
                fake.calls["file"] += 1
            if item is None:
                self.send(404, _error(404, "not found"))
            else:
                self.send(200, item[0].read_bytes(), {"Content-Type": item[1]})
            return
        if not self._authorised():
            return
        parts = path.strip("/").split("/")
        if path == "/api/v3/webhook/secret":
            self.send(200, {"code": 200, "message": "success", "data": {"secret": fake.webhook_secret}})
            return
        if path == "/api/v3/balance":
            self.send(200, {"code": 200, "message": "success", "data": {"balance": 100.0}})
            return
        if parts[:3] == ["api", "v3", "predictions"] and (
            len(parts) == 4 or (len(parts) == 5 and parts[4] == "result")
        ):
            if self.counted(
                "result",
                _injected_error,
                scripted=fake.knobs.result_errors,
                rate=fake.knobs.result_error_rate,
                codes=fake.knobs.result_error_codes,
            ):
                return
            task = fake.tasks.get(parts[3])
            if task is None:
                self.send(404, _error(404, "prediction not found"))
                return
            self.send(200, {"code": 200, "message": "success", "data": fake.data(task)})
            return
        self.send(404, _error(404, f"no route {path}"))

    def do_PUT(self) -> None:
        fake = self.fake
        self.delay()
        path = urlparse(self.path).path
        ticket = (
            fake._tickets.pop(path.removeprefix("/upload/"), None) if path.startswith("/upload/") else None
        )
        if ticket is None:
            self.send(403, b"<Error>SignatureDoesNotMatch</Error>", {"Content-Type": "application/xml"})
            return
        if self.headers.get("Authorization"):
            self.send(400, b"<Error>Only one auth mechanism allowed</Error>")
            return
        if self.headers.get("Content-Type") != ticket[1]:
            self.send(403, b"<Error>SignatureDoesNotMatch</Error>")
            return
        data = self.body()
        target = Path(ticket[0])
        target.write_bytes(data)
        with fake.lock:
            fake.calls["put"] += 1
            fake.sha256s[ticket[2]] = hashlib.sha256(data).hexdigest()
        self.send(200, b"")

    def do_POST(self) -> None:
        fake = self.fake
        if self.answered_fake():
            return
        self.delay()
        url = urlparse(self.path)
        body = self.body()
        if not self._authorised():
            return
        if url.path == "/api/v3/media/upload/binary":
            self._upload_binary(body)
            return
        if url.path == "/api/v3/media/uploads":
            self._upload_ticket(body)
            return
        model = url.path.removeprefix("/api/v3/").strip("/")
        if model not in MODELS:
            self.send(404, _error(404, f"model {model} not found"))
            return
        knobs = fake.knobs
        if self.counted(
            "submit",
            _injected_error,
            scripted=knobs.submit_errors,
            rate=knobs.submit_error_rate,
            codes=knobs.submit_error_codes,
        ):
            return
        try:
            payload = json.loads(body or b"{}")
        except ValueError:
            self.send(400, _error(400, "invalid JSON body"))
            return
        problem = validate(payload) if isinstance(payload, dict) else "body must be a JSON object"
        if problem:
            self.send(400, _error(400, problem))
            return
        webhook = parse_qs(url.query).get("webhook", [None])[0]
        answered = not fake.draws.chance(knobs.lost_answer_rate)
        submitted = fake.submitted(payload, answered=answered)
        task = Task(
            id=uuid.uuid4().hex,
            model=model,
            payload=payload,
            created_at=datetime.fromtimestamp(submitted.created, UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            submitted=submitted,
            webhook=webhook,
        )
        with fake.lock:
            if knobs.fail_jobs:
                task.outcome = knobs.fail_jobs.pop(0)
            elif fake.draws.chance(knobs.fail_job_rate):
                task.outcome = knobs.fail_job_outcome
                if knobs.fail_job_quotes_input:  # as providers do: "failed to download <the input URL>"
                    error = f"{task.outcome.error}: failed to download {payload.get('image')}"
                    task.outcome = Outcome(task.outcome.status, task.outcome.code, error)
            fake.tasks[task.id] = task
        answer = {"code": 200, "message": "success", "data": fake.data(task)}
        fake.log_job(submitted.record("wavespeed", task.id, model, "queued"))
        fake._start(task)
        if not answered:
            self.hang_up()
            return
        time.sleep(knobs.submit_answer_delay)
        self.send(200, answer)

    def _upload_binary(self, body: bytes) -> None:
        fake = self.fake
        with fake.lock:
            fake.calls["upload"] += 1
        item = multipart_file(body, self.headers.get("Content-Type", ""))
        if item is None:
            self.send(400, _error(400, 'field "file" is required'))
            return
        name, ctype, data = item
        url = fake.store(data, ctype, name)
        kind = ctype.split("/")[0] if ctype.split("/")[0] in ("image", "audio", "video") else "image"
        self.send(
            200,
            {
                "code": 200,
                "message": "success",
                "data": {"type": kind, "download_url": url, "filename": name, "size": len(data)},
            },
        )

    def _upload_ticket(self, body: bytes) -> None:
        fake = self.fake
        with fake.lock:
            fake.calls["ticket"] += 1
        try:
            req = json.loads(body)
            name, size = str(req["filename"]), int(req["size"])
        except (ValueError, KeyError, TypeError):
            self.send(400, _error(400, "filename and size are required"))
            return
        ctype = str(req.get("content_type") or "application/octet-stream")
        download_url = fake.store(b"", ctype, name)
        token = uuid.uuid4().hex
        with fake.lock:
            url_path = urlparse(download_url).path
            fake._tickets[token] = (str(fake._files[url_path][0]), ctype, url_path)
        kind = (
            ctype.split("/", maxsplit=1)[0]
            if ctype.split("/", maxsplit=1)[0] in ("image", "audio", "video")
            else "image"
        )
        self.send(
            200,
            {
                "code": 200,
                "message": "success",
                "data": {
                    "type": kind,
                    "download_url": download_url,
                    "filename": name,
                    "size": size,
                    "upload": {
                        "method": "PUT",
                        "url": f"{fake.url}/upload/{token}",
                        "headers": {"Content-Type": ctype},
                    },
                },
            },
        )
