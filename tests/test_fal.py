"""The fal client against the loopback fake: the queue protocol, CDN upload, errors and retries."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image
from pydantic import SecretStr

from castflow import media
from castflow.portraits import SAMPLE_LOOKS, draw_portrait
from castflow.providers.base import PermanentError, SubmitOutcomeUnknown, TransientError
from castflow.providers.fal.client import FalClient, app_path
from castflow.providers.fal.fake import VALID_KEY, FakeFal
from castflow.providers.http import PollSchedule, RetryPolicy

FAST = RetryPolicy(attempts=4, base_delay=0.01, max_delay=0.05, total_seconds=10)


@pytest.fixture
def fake() -> Iterator[FakeFal]:
    with FakeFal().running() as server:
        yield server


def client(fake: FakeFal, key: str = VALID_KEY) -> FalClient:
    return FalClient(
        SecretStr(key),
        queue_url=fake.url,
        rest_url=fake.url,
        cdn_url=fake.url,
        policy=FAST,
        poll=PollSchedule(first=0.05, factor=2, cap=0.2),
    )


def test_poll_schedule_needs_at_most_eight_calls_for_a_minute() -> None:
    elapsed, calls = 0.0, 0
    for delay in PollSchedule().delays():
        calls += 1  # a status call, then sleep
        if elapsed >= 60:
            break
        elapsed += delay
    assert calls <= 8


def test_app_path_drops_the_sub_path() -> None:
    assert app_path("fal-ai/nano-banana/edit") == "fal-ai/nano-banana"
    assert app_path("fal-ai/elevenlabs/tts/multilingual-v2") == "fal-ai/elevenlabs"
    assert app_path("workflows/me/my-app/x") == "workflows/me/my-app"


def test_upload_submit_poll_result_for_an_image_edit(fake: FakeFal, tmp_path: Path) -> None:
    fake.knobs.queue_seconds, fake.knobs.run_seconds = 0.1, 0.2
    portrait = tmp_path / "p.png"
    draw_portrait(SAMPLE_LOOKS["leo"]).save(portrait)

    async def go() -> dict[str, object]:
        fal = client(fake)
        url = await fal.upload_file(portrait)
        handle = await fal.submit(
            "fal-ai/nano-banana/edit",
            {"prompt": "beach", "image_urls": [url], "output_format": "png", "aspect_ratio": "9:16"},
        )
        assert handle.status_url.endswith(f"/fal-ai/nano-banana/requests/{handle.request_id}/status")
        output, headers, status = await fal.wait(handle, deadline_s=10)
        assert headers["x-fal-request-id"] == handle.request_id
        assert status.status == "COMPLETED"
        return output

    output = asyncio.run(go())
    images = output["images"]
    assert isinstance(images, list)
    import httpx

    data = httpx.get(images[0]["url"]).content
    (tmp_path / "out.png").write_bytes(data)
    with Image.open(tmp_path / "out.png") as img:
        assert img.size == (720, 1280)
    assert 2 <= fake.calls["status"] <= 8
    assert fake.calls["submit"] == 1


def test_tts_returns_real_audio(fake: FakeFal, tmp_path: Path) -> None:
    async def go() -> dict[str, object]:
        fal = client(fake)
        handle = await fal.submit(
            "fal-ai/elevenlabs/tts/multilingual-v2", {"text": "Hello there.", "voice": "Aria"}
        )
        output, _, _ = await fal.wait(handle, deadline_s=10)
        return output

    output = asyncio.run(go())
    import httpx

    audio = output["audio"]
    assert isinstance(audio, dict)
    (tmp_path / "a.wav").write_bytes(httpx.get(audio["url"]).content)
    assert media.decode_audio(tmp_path / "a.wav").seconds > 0.5


def test_validation_errors_are_permanent_and_name_the_field(fake: FakeFal) -> None:
    with pytest.raises(PermanentError, match=r"prompt: Field required \[missing\]"):
        asyncio.run(client(fake).submit("fal-ai/nano-banana/edit", {"image_urls": ["x"]}))
    with pytest.raises(PermanentError, match="output_format: Input should be"):
        asyncio.run(
            client(fake).submit(
                "fal-ai/nano-banana/edit", {"prompt": "p", "image_urls": ["x"], "output_format": "PNG"}
            )
        )


def test_bad_key_is_permanent_and_never_echoed(fake: FakeFal) -> None:
    with pytest.raises(PermanentError) as info:
        asyncio.run(
            client(fake, key="id:wrong-secret-value").submit(
                "fal-ai/elevenlabs/tts/multilingual-v2", {"text": "hi"}
            )
        )
    assert "401" in str(info.value)
    assert "wrong-secret-value" not in str(info.value)


def test_status_blips_are_retried_in_the_http_layer(fake: FakeFal) -> None:
    fake.knobs.status_errors = [503, 500, 429]

    async def go() -> None:
        fal = client(fake)
        handle = await fal.submit("fal-ai/elevenlabs/tts/multilingual-v2", {"text": "hi"})
        await fal.wait(handle, deadline_s=10)

    asyncio.run(go())
    assert fake.calls["status"] >= 4


def test_submit_overload_is_retried_but_persistent_failure_is_transient(fake: FakeFal) -> None:
    fake.knobs.submit_errors = [503]
    asyncio.run(client(fake).submit("fal-ai/elevenlabs/tts/multilingual-v2", {"text": "hi"}))
    assert fake.calls["submit"] == 2
    fake.knobs.submit_errors = [503] * 10
    with pytest.raises(TransientError, match="HTTP 503 after retries"):
        asyncio.run(client(fake).submit("fal-ai/elevenlabs/tts/multilingual-v2", {"text": "hi"}))


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (("Unsafe content detected", "content_policy_violation"), PermanentError),
        (("Runner disconnected", "runner_disconnected"), TransientError),
    ],
)
def test_failed_jobs_map_onto_the_error_tree(fake: FakeFal, error: tuple[str, str], expected: type) -> None:
    fake.knobs.fail_jobs = [error]

    async def go() -> None:
        fal = client(fake)
        handle = await fal.submit("fal-ai/elevenlabs/tts/multilingual-v2", {"text": "hi"})
        await fal.wait(handle, deadline_s=10)

    with pytest.raises(expected, match=error[0]) as info:
        asyncio.run(go())
    assert info.value.request_id  # the failing request is identified


def test_cancel_and_reattach_by_request_id(fake: FakeFal) -> None:
    fake.knobs.queue_seconds = 5

    async def go() -> None:
        fal = client(fake)
        handle = await fal.submit("fal-ai/elevenlabs/tts/multilingual-v2", {"text": "hi"})
        again = fal.handle_for("fal-ai/elevenlabs/tts/multilingual-v2", handle.request_id)
        assert again == handle  # the documented URLs are the ones submit returned
        assert (await fal.status(again)).status == "IN_QUEUE"
        assert await fal.cancel(again) is True
        status = await fal.status(again)
        assert status.status == "COMPLETED"
        assert status.error_type == "client_cancelled"
        assert await fal.cancel(again) is False

    asyncio.run(go())


def test_wait_gives_up_at_the_deadline(fake: FakeFal) -> None:
    fake.knobs.queue_seconds = 30

    async def go() -> None:
        fal = client(fake)
        handle = await fal.submit("fal-ai/elevenlabs/tts/multilingual-v2", {"text": "hi"})
        await fal.wait(handle, deadline_s=0.3)

    with pytest.raises(TransientError, match="not done after"):
        asyncio.run(go())
    assert fake.calls["status"] <= 4


def test_fake_account_concurrency_cap_keeps_the_rest_in_queue(fake: FakeFal) -> None:
    """fal's concurrency limit: at most N requests IN_PROGRESS, the others wait IN_QUEUE (never refused)."""
    fal = client(fake)
    fake.knobs.concurrency = 2
    fake.knobs.run_seconds = 1.5  # long enough that a loaded machine still sees the first wave running

    async def go() -> list[str]:
        handles = [
            await fal.submit("fal-ai/elevenlabs/tts/multilingual-v2", {"text": f"Line {i}.", "voice": "Aria"})
            for i in range(4)
        ]
        first = [(await fal.status(h)).status for h in handles]
        await asyncio.gather(*(fal.wait(h, deadline_s=30) for h in handles))
        return first

    started = time.monotonic()
    states = asyncio.run(go())
    assert sorted(states) == ["IN_PROGRESS", "IN_PROGRESS", "IN_QUEUE", "IN_QUEUE"]
    assert fake.peak_in_progress == 2
    assert time.monotonic() - started >= 3.0  # two waves of 1.5 s


def test_fake_latency_makes_a_read_timeout(fake: FakeFal) -> None:
    impatient = FalClient(
        SecretStr(VALID_KEY),
        queue_url=fake.url,
        rest_url=fake.url,
        cdn_url=fake.url,
        timeout=0.2,
        policy=RetryPolicy(attempts=2, base_delay=0.01, max_delay=0.02, total_seconds=5),
    )
    fake.knobs.latency = 0.5
    with pytest.raises(SubmitOutcomeUnknown):
        asyncio.run(
            impatient.submit("fal-ai/elevenlabs/tts/multilingual-v2", {"text": "Hi.", "voice": "Aria"})
        )


@pytest.mark.parametrize(
    ("status", "headers"),
    [(500, {}), (503, {"x-fal-request-id": "abc"}), (429, {"x-fal-request-id": "abc"}), (200, {})],
)
def test_a_submit_fal_itself_answered_is_never_resent(status: int, headers: dict[str, str]) -> None:
    """Only fal's ingress (429/5xx without a request id) means "not queued"; anything else from fal may
    have queued a billed request: one POST, and the stage fails saying the outcome is unknown."""
    import httpx

    posts = []

    def answer(request: httpx.Request) -> httpx.Response:
        posts.append(request)
        body = b"<html>oops</html>" if status == 200 else b'{"detail": "boom"}'
        return httpx.Response(status, headers=headers, content=body)

    fal = FalClient(
        SecretStr(VALID_KEY), queue_url="http://fal.test", transport=httpx.MockTransport(answer), policy=FAST
    )
    with pytest.raises(SubmitOutcomeUnknown):
        asyncio.run(fal.submit("fal-ai/nano-banana/edit", {"prompt": "x", "image_urls": ["u"]}))
    assert len(posts) == 1
