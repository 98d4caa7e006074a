"""The fakes' fault knobs and job record, driven over HTTP as a chaos suite in another process would:
``/_fake/jobs`` with stable payload digests, drawn faults (seeded, reproducible), lost submit answers
that castflow's clients report as an unknown outcome, retried transient errors, and the jobs file."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import subprocess
import sys
import time
import wave
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image
from pydantic import SecretStr

from castflow.providers.base import SubmitOutcomeUnknown, TransientError
from castflow.providers.fal import fake as fal
from castflow.providers.fal.client import FalClient
from castflow.providers.fal.fake import FakeFal
from castflow.providers.http import PollSchedule, RetryPolicy
from castflow.providers.wavespeed import fake as wavespeed
from castflow.providers.wavespeed.client import WaveSpeedClient
from castflow.providers.wavespeed.fake import FakeWaveSpeed, Outcome
from castflow.storage.supabase.backend import SupabaseStorage
from castflow.storage.supabase.fake import FakeSupabaseStorage

FAST = RetryPolicy(attempts=6, base_delay=0.01, max_delay=0.05, total_seconds=10)
POLL = PollSchedule(first=0.02, factor=2, cap=0.1)
TTS = "fal-ai/elevenlabs/tts/turbo-v2.5"
EDIT = "fal-ai/nano-banana/edit"
LIPSYNC = "wavespeed-ai/infinitetalk"
LOST = (httpx.RemoteProtocolError, httpx.ReadError)  # what a client sees when the fake hangs up


@pytest.fixture
def fal_fake() -> Iterator[FakeFal]:
    server = FakeFal()
    server.knobs.synthetic = True
    with server.running():
        yield server


@pytest.fixture
def ws_fake() -> Iterator[FakeWaveSpeed]:
    server = FakeWaveSpeed()
    server.knobs.synthetic = True
    with server.running():
        yield server
    server.cleanup()


@pytest.fixture
def sb_fake() -> Iterator[FakeSupabaseStorage]:
    with FakeSupabaseStorage().running() as server:
        yield server


def png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 96), (200, 120, 80)).save(buffer, "PNG")
    return buffer.getvalue()


def wav(seconds: float = 1.0) -> bytes:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(16_000)
        out.writeframes(b"\0\0" * int(16_000 * seconds))
    return buffer.getvalue()


def knobs(url: str, **values: Any) -> dict[str, Any]:
    resp = httpx.post(f"{url}/_fake/knobs", json=values, timeout=10)
    assert resp.status_code == 200, resp.text
    return dict(resp.json())


def jobs(url: str) -> list[dict[str, Any]]:
    return list(httpx.get(f"{url}/_fake/jobs", timeout=10).json())


def fal_client(fake: FakeFal, transport: httpx.AsyncBaseTransport | None = None) -> FalClient:
    key = SecretStr(fal.VALID_KEY)
    return FalClient(
        key,
        queue_url=fake.url,
        rest_url=fake.url,
        cdn_url=fake.url,
        policy=FAST,
        poll=POLL,
        transport=transport,
    )


def ws_client(fake: FakeWaveSpeed, transport: httpx.AsyncBaseTransport | None = None) -> WaveSpeedClient:
    key = SecretStr(wavespeed.VALID_KEY)
    return WaveSpeedClient(key, base_url=fake.url, policy=FAST, poll=POLL, transport=transport)


def fal_submit(fake: FakeFal, model: str, payload: dict[str, Any]) -> httpx.Response:
    headers = {"Authorization": f"Key {fal.VALID_KEY}"}
    return httpx.post(f"{fake.url}/{model}", json=payload, headers=headers, timeout=10)


def fal_upload(fake: FakeFal, data: bytes, name: str) -> str:
    headers = {"Authorization": "Bearer t", "Content-Type": "image/png", "X-Fal-File-Name": name}
    return str(httpx.post(f"{fake.url}/files/upload", content=data, headers=headers).json()["access_url"])


WS_AUTH = {"Authorization": f"Bearer {wavespeed.VALID_KEY}"}


def ws_submit(fake: FakeWaveSpeed, payload: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{fake.url}/api/v3/{LIPSYNC}", json=payload, headers=WS_AUTH, timeout=10)


def ws_upload(fake: FakeWaveSpeed, data: bytes, name: str, ctype: str) -> str:
    resp = httpx.post(
        f"{fake.url}/api/v3/media/upload/binary", files={"file": (name, data, ctype)}, headers=WS_AUTH
    )
    return str(resp.json()["data"]["download_url"])


def ws_upload_ticket(fake: FakeWaveSpeed, data: bytes, name: str, ctype: str) -> str:
    """The SDK's upload: a ticket, then the bytes PUT to its URL (the stored file is written late)."""
    ticket = httpx.post(
        f"{fake.url}/api/v3/media/uploads",
        json={"filename": name, "size": len(data), "content_type": ctype},
        headers=WS_AUTH,
    ).json()["data"]
    httpx.put(ticket["upload"]["url"], content=data, headers=ticket["upload"]["headers"]).raise_for_status()
    return str(ticket["download_url"])


def ws_inputs(fake: FakeWaveSpeed) -> dict[str, Any]:
    return {
        "image": ws_upload(fake, png(), "face.png", "image/png"),
        "audio": ws_upload(fake, wav(), "line.wav", "audio/wav"),
        "resolution": "480p",
        "seed": 1,
    }


class Recording(httpx.AsyncHTTPTransport):
    """A transport that keeps the status code of every answer the client got."""

    def __init__(self) -> None:
        super().__init__()
        self.codes: list[int] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        resp = await super().handle_async_request(request)
        self.codes.append(resp.status_code)
        return resp


# ---- the job record ------------------------------------------------------------------------------------


def test_fal_jobs_digest_the_same_stage_the_same_whatever_its_upload_url(fal_fake: FakeFal) -> None:
    image = png()
    first, second = fal_upload(fal_fake, image, "a.png"), fal_upload(fal_fake, image, "b.png")
    assert first != second  # every upload gets a fresh URL: the digest cannot use it
    before = time.time()
    for url in (first, second):
        assert fal_submit(fal_fake, EDIT, {"prompt": "beach", "image_urls": [url]}).status_code == 200
    assert fal_submit(fal_fake, EDIT, {"prompt": "snow", "image_urls": [first]}).status_code == 200
    assert fal_submit(fal_fake, TTS, {"voice": "Rachel", "text": "hi"}).status_code == 200
    assert fal_submit(fal_fake, TTS, {"text": "hi", "voice": "Rachel"}).status_code == 200  # key order

    record = jobs(fal_fake.url)
    assert [job["id"] for job in record] == list(fal_fake.jobs)
    beach, beach_again, snow, tts, tts_again = record
    assert beach["payload_sha256"] == beach_again["payload_sha256"] != snow["payload_sha256"]
    assert tts["payload_sha256"] == tts_again["payload_sha256"]
    assert beach["input_sha256s"] == [hashlib.sha256(image).hexdigest()]
    assert tts["input_sha256s"] == []
    assert {job["model"] for job in record} == {EDIT, TTS}
    assert all(job["answered"] and before <= job["created"] <= time.time() for job in record)
    assert {job["status"] for job in record} <= {"queued", "running", "completed"}
    assert set(beach) == {
        "provider",
        "id",
        "model",
        "created",
        "payload_sha256",
        "input_sha256s",
        "status",
        "answered",
    }


def test_wavespeed_jobs_digest_uploads_by_content_and_signed_urls_without_their_token(
    ws_fake: FakeWaveSpeed,
) -> None:
    knobs(ws_fake.url, fail_job_rate=1.0)  # the tasks end at once: this test is about their record
    image, audio = png(), wav()
    by_binary = {
        "image": ws_upload(ws_fake, image, "face.png", "image/png"),
        "audio": ws_upload(ws_fake, audio, "line.wav", "audio/wav"),
        "resolution": "480p",
    }
    by_ticket = {
        "resolution": "480p",
        "audio": ws_upload_ticket(ws_fake, audio, "line.wav", "audio/wav"),
        "image": ws_upload_ticket(ws_fake, image, "face.png", "image/png"),
    }
    signed = "http://127.0.0.1:1/storage/v1/object/sign/ugc-images/face.png?token="
    by_storage = [
        {"image": signed + token, "audio": "http://127.0.0.1:1/a.wav", "resolution": "480p"}
        for token in ("one", "two")
    ]
    for payload in (by_binary, by_ticket, *by_storage):
        assert ws_submit(ws_fake, payload).status_code == 200

    binary, ticket, storage, storage_again = jobs(ws_fake.url)
    assert binary["payload_sha256"] == ticket["payload_sha256"]
    assert binary["input_sha256s"] == [hashlib.sha256(image).hexdigest(), hashlib.sha256(audio).hexdigest()]
    assert ticket["input_sha256s"] == [hashlib.sha256(audio).hexdigest(), hashlib.sha256(image).hexdigest()]
    assert storage["payload_sha256"] == storage_again["payload_sha256"] != binary["payload_sha256"]
    assert binary["provider"] == "wavespeed"
    assert binary["model"] == LIPSYNC


def test_job_status_follows_the_job(fal_fake: FakeFal, ws_fake: FakeWaveSpeed) -> None:
    knobs(fal_fake.url, queue_seconds=1.5, run_seconds=1.5)
    sent = time.monotonic()
    assert fal_submit(fal_fake, TTS, {"text": "hi"}).status_code == 200
    assert jobs(fal_fake.url)[0]["status"] == "queued"  # well inside its 1.5 s in the queue
    time.sleep(max(0.0, sent + 2.2 - time.monotonic()))  # the margins allow for a loaded machine
    assert jobs(fal_fake.url)[0]["status"] == "running"
    time.sleep(max(0.0, sent + 3.6 - time.monotonic()))
    assert jobs(fal_fake.url)[0]["status"] == "completed"

    assert ws_submit(ws_fake, ws_inputs(ws_fake)).status_code == 200
    asyncio.run(ws_client(ws_fake).wait(jobs(ws_fake.url)[0]["id"], deadline_s=30))
    assert jobs(ws_fake.url)[0]["status"] == "completed"


# ---- knobs over HTTP -----------------------------------------------------------------------------------


def test_knobs_read_and_set_over_http_all_or_nothing(fal_fake: FakeFal, ws_fake: FakeWaveSpeed) -> None:
    shown = httpx.get(f"{fal_fake.url}/_fake/knobs").json()
    assert shown["submit_error_codes"] == [429, 503]  # fal's ingress answers: nothing was queued
    assert shown["status_error_codes"] == shown["result_error_codes"] == [500, 503]
    assert shown["synthetic"] is True  # the existing knobs are there too
    assert httpx.get(f"{ws_fake.url}/_fake/knobs").json()["submit_error_codes"] == [429]

    for bad in ({"lost_answer_rate": 0.5, "submit_error_rate": 1.5}, {"no_such_knob": 1}, [1]):
        resp = httpx.post(f"{fal_fake.url}/_fake/knobs", json=bad)
        assert resp.status_code == 400
    assert fal_fake.knobs.lost_answer_rate == 0.0  # the valid half of a bad request is not applied
    # WaveSpeed has no status call (its poll is the result call): the knob does not exist there.
    assert httpx.post(f"{ws_fake.url}/_fake/knobs", json={"status_error_rate": 0.1}).status_code == 400

    shown = knobs(fal_fake.url, fail_jobs=[["Unsafe", "content_policy_violation"]], latency_spike_s=0.5)
    assert fal_fake.knobs.fail_jobs == [("Unsafe", "content_policy_violation")]
    assert shown["latency_spike_s"] == 0.5
    knobs(ws_fake.url, fail_jobs=[{"status": "timeout", "code": 5004, "error": "slow"}])
    assert ws_fake.knobs.fail_jobs == [Outcome("timeout", 5004, "slow")]


def test_seeded_draws_repeat(fal_fake: FakeFal, ws_fake: FakeWaveSpeed) -> None:
    def fal_run(seed: int) -> list[int]:
        knobs(fal_fake.url, seed=seed, submit_error_rate=0.5)
        return [fal_submit(fal_fake, TTS, {"text": "hi"}).status_code for _ in range(24)]

    first = fal_run(42)
    assert {200, 429, 503} <= set(first)
    assert fal_run(42) == first
    assert fal_run(7) != first

    def ws_run(seed: int) -> list[int]:
        knobs(ws_fake.url, seed=seed, submit_error_rate=0.5, fail_job_rate=1.0)
        return [ws_submit(ws_fake, {"image": "x", "audio": "y"}).status_code for _ in range(24)]

    assert ws_run(3) == ws_run(3)
    assert set(ws_run(3)) == {200, 429}

    fal_fake.knobs.seed = 42  # a seed set in Python restarts the draws too
    fal_fake.knobs.submit_error_rate = 0.5
    assert [fal_submit(fal_fake, TTS, {"text": "hi"}).status_code for _ in range(24)] == first


def test_latency_spikes_delay_api_answers(fal_fake: FakeFal) -> None:
    knobs(fal_fake.url, latency_spike_rate=1.0, latency_spike_s=0.3)
    started = time.monotonic()
    assert fal_submit(fal_fake, TTS, {"text": "hi"}).status_code == 200
    assert time.monotonic() - started >= 0.3
    started = time.monotonic()
    jobs(fal_fake.url)  # the fake's own routes answer at once
    assert time.monotonic() - started < 0.3


# ---- faults --------------------------------------------------------------------------------------------


def test_fal_lost_answer_creates_the_job_and_the_client_reports_an_unknown_outcome(fal_fake: FakeFal) -> None:
    knobs(fal_fake.url, lost_answer_rate=1.0)
    with pytest.raises(LOST):
        fal_submit(fal_fake, TTS, {"text": "lost"})
    client = fal_client(fal_fake)
    with pytest.raises(SubmitOutcomeUnknown):
        asyncio.run(client.submit(TTS, {"text": "lost again"}))
    assert fal_fake.calls["submit"] == 2  # never resent by the client
    record = jobs(fal_fake.url)
    assert [job["answered"] for job in record] == [False, False]

    knobs(fal_fake.url, lost_answer_rate=0.0)  # the jobs run and finish all the same
    for job in record:
        handle = client.documented_handle(TTS, job["id"])
        output, _headers, _status = asyncio.run(client.wait(handle, deadline_s=10))
        assert output["audio"]["url"]
    assert [job["status"] for job in jobs(fal_fake.url)] == ["completed", "completed"]


def test_wavespeed_lost_answer_creates_the_task_and_the_client_reports_an_unknown_outcome(
    ws_fake: FakeWaveSpeed,
) -> None:
    payload = ws_inputs(ws_fake)
    knobs(ws_fake.url, lost_answer_rate=1.0)
    with pytest.raises(LOST):
        ws_submit(ws_fake, payload)
    client = ws_client(ws_fake)
    with pytest.raises(SubmitOutcomeUnknown):
        asyncio.run(client.submit(LIPSYNC, payload))
    assert ws_fake.calls["submit"] == 2
    record = jobs(ws_fake.url)
    assert [job["answered"] for job in record] == [False, False]
    assert record[0]["payload_sha256"] == record[1]["payload_sha256"]
    for job in record:
        assert asyncio.run(client.wait(job["id"], deadline_s=30)).status == "completed"


@pytest.mark.parametrize("codes", [[503], [429]])
def test_fal_submit_errors_create_no_job_and_are_retried(fal_fake: FakeFal, codes: list[int]) -> None:
    knobs(fal_fake.url, submit_error_rate=1.0, submit_error_codes=codes)
    resp = fal_submit(fal_fake, TTS, {"text": "hi"})
    assert resp.status_code == codes[0]
    assert "x-fal-request-id" not in resp.headers  # an ingress answer: nothing was queued
    with pytest.raises(TransientError, match="after retries"):
        asyncio.run(fal_client(fal_fake).submit(TTS, {"text": "hi"}))
    assert fal_fake.calls["submit"] == 1 + FAST.attempts  # safe to resend: resent
    assert jobs(fal_fake.url) == []

    knobs(fal_fake.url, seed=1, submit_error_rate=0.5)
    asyncio.run(fal_client(fal_fake).submit(TTS, {"text": "hi"}))
    assert len(jobs(fal_fake.url)) == 1  # however many errors came first, one job


def test_wavespeed_submit_errors_create_no_job_and_are_retried(ws_fake: FakeWaveSpeed) -> None:
    payload = ws_inputs(ws_fake)
    knobs(ws_fake.url, submit_error_rate=1.0)
    assert ws_submit(ws_fake, payload).status_code == 429
    with pytest.raises(TransientError, match="after retries"):
        asyncio.run(ws_client(ws_fake).submit(LIPSYNC, payload))
    assert ws_fake.calls["submit"] == 1 + FAST.attempts
    assert jobs(ws_fake.url) == []

    knobs(ws_fake.url, seed=1, submit_error_rate=0.5)
    asyncio.run(ws_client(ws_fake).submit(LIPSYNC, payload))
    assert len(jobs(ws_fake.url)) == 1


def test_fal_status_and_result_errors_fail_raw_calls_and_the_client_retries(fal_fake: FakeFal) -> None:
    submitted = fal_submit(fal_fake, TTS, {"text": "hi"}).json()
    headers = {"Authorization": f"Key {fal.VALID_KEY}"}
    knobs(fal_fake.url, status_error_rate=1.0, result_error_rate=1.0)
    assert httpx.get(submitted["status_url"], headers=headers).status_code in (500, 503)
    assert httpx.get(submitted["response_url"], headers=headers).status_code in (500, 503)

    knobs(fal_fake.url, seed=3, status_error_rate=0.4, result_error_rate=0.4)
    recording = Recording()
    client = fal_client(fal_fake, recording)

    async def three() -> None:  # one event loop: the client's pooled connections belong to it
        for text in ("one", "two", "three"):
            handle = await client.submit(TTS, {"text": text})
            output, _headers, status = await client.wait(handle, deadline_s=10)
            assert status.status == "COMPLETED"
            assert output["audio"]["url"]

    asyncio.run(three())
    assert {500, 503} & set(recording.codes)  # errors were answered, and retried past


def test_wavespeed_result_errors_fail_raw_calls_and_the_client_retries(ws_fake: FakeWaveSpeed) -> None:
    payload = ws_inputs(ws_fake)
    task = ws_submit(ws_fake, payload).json()["data"]
    knobs(ws_fake.url, result_error_rate=1.0)
    assert httpx.get(task["urls"]["get"], headers=WS_AUTH).status_code in (500, 503)

    knobs(ws_fake.url, seed=3, result_error_rate=0.4)
    recording = Recording()
    client = ws_client(ws_fake, recording)

    async def four() -> None:  # one event loop: the client's pooled connections belong to it
        assert (await client.wait(task["id"], deadline_s=30)).status == "completed"
        for _ in range(3):
            rid = (await client.submit(LIPSYNC, payload)).id
            assert (await client.wait(rid, deadline_s=30)).status == "completed"

    asyncio.run(four())
    assert {500, 503} & set(recording.codes)


def test_fail_job_rate_ends_jobs_failed(fal_fake: FakeFal, ws_fake: FakeWaveSpeed) -> None:
    knobs(fal_fake.url, fail_job_rate=1.0)
    client = fal_client(fal_fake)
    handle = asyncio.run(client.submit(TTS, {"text": "hi"}))
    with pytest.raises(TransientError, match="runner_disconnected") as failed:
        asyncio.run(client.wait(handle, deadline_s=10))
    assert failed.value.job_failed  # a new submit is needed, not a re-attach
    assert jobs(fal_fake.url)[0]["status"] == "failed"

    knobs(ws_fake.url, fail_job_rate=1.0)
    ws = ws_client(ws_fake)
    rid = asyncio.run(ws.submit(LIPSYNC, ws_inputs(ws_fake))).id
    with pytest.raises(TransientError, match="5003") as failed:
        asyncio.run(ws.wait(rid, deadline_s=10))
    assert failed.value.job_failed
    assert jobs(ws_fake.url)[0]["status"] == "failed"


# ---- Supabase Storage ----------------------------------------------------------------------------------


def test_storage_error_rate_fails_object_calls_and_the_client_retries(
    sb_fake: FakeSupabaseStorage, tmp_path: Path
) -> None:
    assert httpx.get(f"{sb_fake.url}/_fake/knobs").json()["error_codes"] == [500, 503]
    assert httpx.post(f"{sb_fake.url}/_fake/knobs", json={"error_routes": ["nowhere"]}).status_code == 400
    source = tmp_path / "line.wav"
    source.write_bytes(wav())
    with SupabaseStorage(sb_fake.settings(), tmp_path / "cache", policy=FAST) as storage:
        storage.put_file("audio/line.wav", source, "audio/wav")
        knobs(sb_fake.url, error_rate=1.0, error_codes=[503])
        raw = httpx.get(
            f"{sb_fake.url}/storage/v1/object/ugc-audio/audio/line.wav",
            headers={"apikey": sb_fake.key, "Authorization": f"Bearer {sb_fake.key}"},
        )
        assert raw.json()["statusCode"] == "503"  # Storage's error shape
        with pytest.raises(TransientError, match="after retries"):
            storage.exists("audio/line.wav")
        buckets = httpx.get(
            f"{sb_fake.url}/storage/v1/bucket",
            headers={"apikey": sb_fake.key, "Authorization": f"Bearer {sb_fake.key}"},
        )
        assert buckets.status_code == 200  # not an object call

        knobs(sb_fake.url, seed=2, error_rate=0.4, error_codes=[500, 503])
        for n in range(4):
            storage.put_file(f"audio/line-{n}.wav", source, "audio/wav")
            assert storage.exists(f"audio/line-{n}.wav")
            assert "token=" in storage.url(f"audio/line-{n}.wav")
            assert storage.fetch(f"audio/line-{n}.wav", tmp_path / f"{n}.wav").read_bytes() == wav()
    calls = httpx.get(f"{sb_fake.url}/_fake/calls").json()
    assert calls["upload"] >= 5
    assert calls["info"] >= 5  # exists() asks for the object's info


# ---- serve.py ------------------------------------------------------------------------------------------


def test_serve_applies_the_fault_flags_and_writes_the_jobs_file(tmp_path: Path) -> None:
    jobs_file = tmp_path / "jobs.jsonl"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "castflow.fakes.serve",
            "--synthetic",
            "--seed",
            "9",
            "--lost-answer-rate",
            "1",
            "--status-error-codes",
            "502,504",
            "--storage-error-rate",
            "0.25",
            "--jobs-file",
            str(jobs_file),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        info = json.loads(proc.stdout.readline())
        fal_url, ws_url = info["fal"]["url"], info["wavespeed"]["url"]
        shown = httpx.get(f"{fal_url}/_fake/knobs").json()
        assert (shown["seed"], shown["lost_answer_rate"], shown["status_error_codes"]) == (9, 1.0, [502, 504])
        assert httpx.get(f"{ws_url}/_fake/knobs").json()["submit_error_codes"] == [429]
        sb_knobs = httpx.get(f"{info['supabase']['url']}/_fake/knobs").json()
        assert (sb_knobs["seed"], sb_knobs["error_rate"]) == (9, 0.25)
        with pytest.raises(LOST):
            httpx.post(
                f"{fal_url}/{TTS}", json={"text": "hi"}, headers={"Authorization": f"Key {fal.VALID_KEY}"}
            )
        with pytest.raises(LOST):
            httpx.post(f"{ws_url}/api/v3/{LIPSYNC}", json={"image": "x", "audio": "y"}, headers=WS_AUTH)
        served = jobs(fal_url) + jobs(ws_url)
    finally:
        proc.kill()  # no clean shutdown: the file must hold the jobs already
        proc.wait(timeout=10)
    written = [json.loads(line) for line in jobs_file.read_text().splitlines()]
    assert [job["provider"] for job in written] == ["fal", "wavespeed"]
    assert [job["id"] for job in written] == [job["id"] for job in served]
    assert all(job["status"] == "queued" and job["answered"] is False for job in written)
    assert [job["payload_sha256"] for job in written] == [job["payload_sha256"] for job in served]


def test_bad_fault_flags_are_refused() -> None:
    from castflow.fakes.serve import main

    with pytest.raises(SystemExit):
        main(["--lost-answer-rate", "2"])
