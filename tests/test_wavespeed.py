"""WaveSpeed InfiniteTalk: the client against the loopback fake (real HTTP), the official SDK against the
same fake, costs, polling, errors, and the lip-sync stage in the video DAG."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from pydantic import SecretStr

from castflow import media, pipeline
from castflow.actors import ensure_sample_actors
from castflow.db.tables import StageRun, StageStatus
from castflow.models import MediaRef, VideoRequest, Voice
from castflow.providers.base import PermanentError, SubmitOutcomeUnknown, TransientError
from castflow.providers.http import PollSchedule, RetryPolicy
from castflow.providers.local import EspeakSpeech, LocalImageEditor
from castflow.providers.wavespeed.client import WaveSpeedClient, billed_seconds
from castflow.providers.wavespeed.fake import VALID_KEY, FakeWaveSpeed, Outcome
from castflow.providers.wavespeed.lipsync import WaveSpeedLipSync
from castflow.runtime import Runtime, get_runtime
from castflow.settings import reset_settings

FAST_POLL = PollSchedule(first=0.05, factor=2, cap=0.3)
FAST_RETRY = RetryPolicy(attempts=4, base_delay=0.01, max_delay=0.05, total_seconds=10)


@pytest.fixture
def fake() -> Iterator[FakeWaveSpeed]:
    server = FakeWaveSpeed()
    with server.running():
        yield server
    server.cleanup()


def client_for(fake: FakeWaveSpeed, **kw: object) -> WaveSpeedClient:
    return WaveSpeedClient(
        SecretStr(VALID_KEY),
        base_url=fake.url,
        poll=FAST_POLL,
        policy=FAST_RETRY,
        **kw,  # type: ignore[arg-type]
    )


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, float]:
    """A portrait and ~1.5 s of speech made by the embedded providers."""
    work = tmp_path_factory.mktemp("ws-inputs")
    image = LocalImageEditor().edit(_portrait(work), "studio", seed=1, workdir=work).path
    speech = EspeakSpeech().synthesize(
        "Hello from castflow.", Voice(provider="local", model="espeak-ng", voice_id="en-us"), workdir=work
    )
    return image, speech.path, media.decode_audio(speech.path).seconds


def _portrait(work: Path) -> Path:
    from castflow.portraits import SAMPLE_LOOKS, draw_portrait

    path = work / "portrait.png"
    draw_portrait(SAMPLE_LOOKS["maya"]).save(path)
    return path


# ---- pure rules --------------------------------------------------------------------------------------


def test_billing_rounds_up_with_a_five_second_minimum_and_a_cap() -> None:
    assert billed_seconds(0.4) == 5
    assert billed_seconds(5.0) == 5
    assert billed_seconds(5.01) == 6
    assert billed_seconds(59.2) == 60
    assert billed_seconds(700) == 600
    assert billed_seconds(2.0, minimum=3) == 3  # the newer pages' 3 s minimum is a setting


def test_cost_per_resolution_and_deadline_grows_with_audio(fake: FakeWaveSpeed) -> None:
    syncer = WaveSpeedLipSync(
        client_for(fake),
        model="wavespeed-ai/infinitetalk",
        prices={"480p": 0.03, "720p": 0.06},
        min_seconds=5,
        deadline_base_s=600,
        deadline_per_audio_s=60,
    )
    assert syncer.cost(60, "480p") == (60, pytest.approx(1.80))  # the spec's "60 s costs $1.80"
    assert syncer.cost(12.3, "720p") == (13, pytest.approx(0.78))
    assert syncer.cost(2, "480p") == (5, pytest.approx(0.15))
    assert syncer.deadline(600) > syncer.deadline(10) > 600  # long audio waits longer than 10 min


def test_default_polling_makes_at_most_8_calls_for_a_60_s_job() -> None:
    schedule = PollSchedule(first=5, factor=2, cap=30)  # the settings' defaults
    t, calls = 0.0, 1  # one call right after submit
    for delay in schedule.delays():
        if t >= 60:
            break
        t += delay
        calls += 1
    assert calls <= 8
    assert next(iter(schedule.delays())) >= 5  # the docs ask for >= 5 s between checks


# ---- client against the fake --------------------------------------------------------------------------


@pytest.mark.parametrize("result_path", ["result", "bare"])
@pytest.mark.parametrize("upload_mode", ["binary", "ticket"])
def test_upload_submit_and_wait_both_protocol_forms(
    fake: FakeWaveSpeed, inputs: tuple[Path, Path, float], result_path: str, upload_mode: str
) -> None:
    image, audio, seconds = inputs
    client = client_for(fake, result_path=result_path, upload_mode=upload_mode)

    async def go() -> tuple[str, Path]:
        image_url, audio_url = await client.upload(image), await client.upload(audio)
        pred = await client.submit(
            "wavespeed-ai/infinitetalk", {"image": image_url, "audio": audio_url, "resolution": "480p"}
        )
        assert pred.status == "created"
        assert len(pred.id) == 32
        done = await client.wait(pred.id, deadline_s=30)
        return pred.id, await client.download(done.outputs[0], image.parent / f"{pred.id}.mp4")

    request_id, video = asyncio.run(go())
    info = media.probe(video)
    assert (info.width, info.height) == (448, 832)  # InfiniteTalk's 480p portrait bucket
    assert abs(info.duration - seconds) < 0.1
    assert fake.calls["upload" if upload_mode == "binary" else "put"] == 2
    assert fake.tasks[request_id].status == "completed"


def test_a_60_s_job_is_polled_at_most_8_times(fake: FakeWaveSpeed, inputs: tuple[Path, Path, float]) -> None:
    """The same job at 1/20 of real time: 3 s of processing, the default schedule (5 s doubling to 30 s)
    scaled by 1/20. (At 1/100 the fake's real render, 1-2 s on a slow day, outlasted the job.)"""
    image, audio, seconds = inputs
    fake.knobs.seconds_per_audio_second = 3.0 / seconds
    client = client_for(fake)
    client.poll = PollSchedule(first=0.25, factor=2, cap=1.5)

    async def go() -> None:
        pred = await client.submit(
            "wavespeed-ai/infinitetalk",
            {"image": await client.upload(image), "audio": await client.upload(audio)},
        )
        await client.wait(pred.id, deadline_s=30)

    asyncio.run(go())
    assert 2 <= fake.calls["result"] <= 8


def test_errors_are_mapped_and_carry_the_providers_message(
    fake: FakeWaveSpeed, inputs: tuple[Path, Path, float]
) -> None:
    image, audio, _ = inputs
    client = client_for(fake)

    async def submit(payload: dict[str, object]) -> str:
        return (await client.submit("wavespeed-ai/infinitetalk", payload)).id

    with pytest.raises(PermanentError, match='field "audio" is required'):
        asyncio.run(submit({"image": "https://x/y.png"}))
    bad = WaveSpeedClient(SecretStr("wrong-secret-key"), base_url=fake.url, policy=FAST_RETRY)
    with pytest.raises(PermanentError, match="top-up") as refused:
        asyncio.run(bad.submit("wavespeed-ai/infinitetalk", {"image": "a", "audio": "b"}))
    assert "wrong-secret-key" not in str(refused.value)
    with pytest.raises(PermanentError, match="not found"):
        asyncio.run(client.result("0" * 32))

    urls = asyncio.run(_upload_both(client, image, audio))
    fake.knobs.fail_jobs = [
        Outcome("failed", 1200, "Content moderation: the image was flagged"),
        Outcome("failed", 5003, "Service unavailable"),
        Outcome("timeout", 5004, "Task timed out"),
        Outcome("cancelled", 0, ""),
    ]
    expected = [
        (PermanentError, "Content moderation"),
        (TransientError, "Service unavailable"),
        (TransientError, "timeout"),
        (PermanentError, "cancelled"),
    ]
    for kind, text in expected:
        rid = asyncio.run(submit(urls))
        with pytest.raises(kind, match=text) as failed:
            asyncio.run(client.wait(rid, deadline_s=10))
        assert failed.value.job_failed
        assert failed.value.request_id == rid


async def _upload_both(client: WaveSpeedClient, image: Path, audio: Path) -> dict[str, object]:
    return {"image": await client.upload(image), "audio": await client.upload(audio)}


def test_http_retries_on_results_but_never_a_blind_resubmit(
    fake: FakeWaveSpeed, inputs: tuple[Path, Path, float]
) -> None:
    image, audio, _ = inputs
    client = client_for(fake)
    urls = asyncio.run(_upload_both(client, image, audio))
    fake.knobs.submit_errors = [429, 429]
    rid = asyncio.run(client.submit("wavespeed-ai/infinitetalk", urls)).id
    assert fake.calls["submit"] == 3  # a 429 means not taken: retried
    fake.knobs.result_errors = [503, 502, 500]
    assert asyncio.run(client.wait(rid, deadline_s=10)).status == "completed"

    fake.knobs.submit_errors = [503]
    before = fake.calls["submit"]
    with pytest.raises(SubmitOutcomeUnknown, match="HTTP 503"):
        asyncio.run(client.submit("wavespeed-ai/infinitetalk", urls))
    assert fake.calls["submit"] == before + 1  # a 5xx may have created a billed task: not retried

    fake.knobs.result_errors = [503] * 10
    with pytest.raises(TransientError, match="after retries"):
        asyncio.run(client.result(rid))


def test_a_lost_submit_answer_is_not_resubmitted(
    fake: FakeWaveSpeed, inputs: tuple[Path, Path, float]
) -> None:
    """A read timeout after the submit was sent: the job may exist, so no automatic retry anywhere."""
    image, audio, _ = inputs
    client = client_for(fake)
    urls = asyncio.run(_upload_both(client, image, audio))
    impatient = client_for(fake, timeout=0.3)
    fake.knobs.submit_answer_delay = 1.0
    with pytest.raises(SubmitOutcomeUnknown, match="not retried automatically") as lost:
        asyncio.run(impatient.submit("wavespeed-ai/infinitetalk", urls))
    assert not lost.value.transient  # the task layer will not retry it either
    assert fake.calls["submit"] == 1
    assert len(fake.tasks) == 1  # the job WaveSpeed created (and bills) despite the lost answer


def test_deadline_expiry_keeps_the_request(fake: FakeWaveSpeed, inputs: tuple[Path, Path, float]) -> None:
    image, audio, _ = inputs
    client = client_for(fake)
    urls = asyncio.run(_upload_both(client, image, audio))
    fake.knobs.queue_seconds = 5
    rid = asyncio.run(client.submit("wavespeed-ai/infinitetalk", urls)).id
    with pytest.raises(TransientError, match="not done") as late:
        asyncio.run(client.wait(rid, deadline_s=0.2))
    assert not late.value.job_failed
    assert late.value.request_id == rid


def test_account_concurrency_cap_holds_tasks_in_created(
    fake: FakeWaveSpeed, inputs: tuple[Path, Path, float]
) -> None:
    image, audio, _ = inputs
    fake.knobs.concurrency = 2
    fake.knobs.queue_seconds = 0.3
    client = client_for(fake)

    async def go() -> list[str]:
        urls = await _upload_both(client, image, audio)
        ids = [(await client.submit("wavespeed-ai/infinitetalk", urls)).id for _ in range(4)]
        await asyncio.sleep(0.1)
        states = [(await client.result(i)).status for i in ids]
        await asyncio.gather(*(client.wait(i, deadline_s=30) for i in ids))
        return states

    states = asyncio.run(go())
    assert states.count("created") >= 2
    assert fake.peak_running == 2


# ---- the official SDK against the fake (the fake speaks the real protocol) -----------------------------


def test_official_sdk_runs_against_the_fake(fake: FakeWaveSpeed, inputs: tuple[Path, Path, float]) -> None:
    import wavespeed

    image, audio, seconds = inputs
    sdk = wavespeed.Client(api_key=VALID_KEY, base_url=fake.url)
    image_url = sdk.upload(str(image))  # the SDK's ticket + PUT flow
    audio_url = sdk.upload(str(audio))
    out = sdk.run(
        "wavespeed-ai/infinitetalk",
        {"image": image_url, "audio": audio_url, "resolution": "720p", "seed": 7},
        poll_interval=0.05,
        timeout=60,
    )
    assert fake.calls["ticket"] == 2
    assert fake.calls["put"] == 2
    video = image.parent / "sdk.mp4"
    video.write_bytes(httpx.get(out["outputs"][0], timeout=30).content)
    info = media.probe(video)
    assert (info.width, info.height) == (704, 1280)
    assert abs(info.duration - seconds) < 0.1
    (task,) = fake.tasks.values()
    envelope = sdk.get_result(task.id)
    assert envelope["data"]["status"] == "completed"


# ---- the lip-sync stage in the DAG --------------------------------------------------------------------


class Crash(BaseException):
    """Stands for the process dying (not an Exception: nothing in castflow may catch it)."""


def crash_after_submit(rt: Runtime, syncer: WaveSpeedLipSync, image: MediaRef, audio: MediaRef) -> None:
    """Run the lip-sync stage so that the process 'dies' right after the submit was recorded."""
    real = syncer.collect

    def crash(*args: object, **kwargs: object) -> object:
        raise Crash

    syncer.collect = crash  # type: ignore[method-assign]
    try:
        with pytest.raises(Crash):
            pipeline.lipsync(rt, image, audio, resolution="480p", seed=0, mouth=None)
    finally:
        syncer.collect = real  # type: ignore[method-assign]


@pytest.fixture
def ws_rt(fake: FakeWaveSpeed, data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Runtime:
    monkeypatch.setenv("CASTFLOW_PROVIDERS__LIPSYNC", "wavespeed")
    monkeypatch.setenv("CASTFLOW_WAVESPEED__KEY", VALID_KEY)
    monkeypatch.setenv("CASTFLOW_WAVESPEED__BASE_URL", fake.url)
    monkeypatch.setenv("CASTFLOW_WAVESPEED__POLL_FIRST_S", "0.05")
    monkeypatch.setenv("CASTFLOW_WAVESPEED__EXPECTED_SECONDS_PER_AUDIO_SECOND", "0")
    monkeypatch.setenv("CASTFLOW_WAVESPEED__POLL_CAP_S", "0.3")
    reset_settings()
    rt = get_runtime()
    assert isinstance(rt.lipsync, WaveSpeedLipSync)
    rt.lipsync.client.policy = FAST_RETRY
    ensure_sample_actors(rt)
    return rt


def test_lipsync_stage_costs_passes_qc_and_is_reused(ws_rt: Runtime, fake: FakeWaveSpeed) -> None:
    actor = pipeline.actor_ref(ws_rt, "maya")
    speech = pipeline.speech(ws_rt, actor, "Short line.")
    video = pipeline.lipsync(ws_rt, actor.image, speech.output, resolution="720p", seed=3, mouth=None)
    assert speech.output.seconds is not None
    pipeline.quality_check(ws_rt, video, audio_seconds=speech.output.seconds, resolution="720p")
    assert video.cost_usd == pytest.approx(billed_seconds(speech.output.seconds) * 0.06)
    with ws_rt.session() as s:
        run = s.scalars(sa.select(StageRun).where(StageRun.stage == "lipsync")).one()
        assert (run.provider, run.model, run.unit) == ("wavespeed", "wavespeed-ai/infinitetalk", "seconds")
        assert run.billed_units == 5
        assert run.request_id in fake.tasks
    again = pipeline.lipsync(ws_rt, actor.image, speech.output, resolution="720p", seed=3, mouth=None)
    assert again.reused
    assert fake.calls["submit"] == 1


def test_a_crash_while_rendering_reattaches(ws_rt: Runtime, fake: FakeWaveSpeed) -> None:
    syncer = ws_rt.lipsync
    assert isinstance(syncer, WaveSpeedLipSync)
    actor = pipeline.actor_ref(ws_rt, "leo")
    speech = pipeline.speech(ws_rt, actor, "Crash test.")
    crash_after_submit(ws_rt, syncer, actor.image, speech.output)
    pipeline.lipsync(ws_rt, actor.image, speech.output, resolution="480p", seed=0, mouth=None)
    assert fake.calls["submit"] == 1
    with ws_rt.session() as s:
        run = s.scalars(sa.select(StageRun).where(StageRun.stage == "lipsync")).one()
        assert (run.status, run.attempts) == (StageStatus.succeeded, 2)


def test_a_failed_job_is_resubmitted_on_retry_not_reattached(ws_rt: Runtime, fake: FakeWaveSpeed) -> None:
    actor = pipeline.actor_ref(ws_rt, "ava")
    speech = pipeline.speech(ws_rt, actor, "Retry me.")
    fake.knobs.fail_jobs = [Outcome("failed", 5000, "Internal error")]
    with pytest.raises(TransientError, match="Internal error"):
        pipeline.lipsync(ws_rt, actor.image, speech.output, resolution="480p", seed=0, mouth=None)
    with ws_rt.session() as s:
        run = s.scalars(sa.select(StageRun).where(StageRun.stage == "lipsync")).one()
        assert run.status is StageStatus.failed
    pipeline.lipsync(ws_rt, actor.image, speech.output, resolution="480p", seed=0, mouth=None)
    assert fake.calls["submit"] == 2


def test_video_flow_on_wavespeed_with_faults(
    ws_rt: Runtime, fake: FakeWaveSpeed, prefect_server: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """429s on submit, 5xx on results, a slow queue and one failed job: same correct video as embedded."""
    from flows.generate_video import generate_video

    fake.knobs.submit_errors = [429]
    fake.knobs.result_errors = [503, 500]
    fake.knobs.queue_seconds = 0.4
    fake.knobs.fail_jobs = [Outcome("failed", 5003, "Service unavailable")]
    req = VideoRequest(actor="maya", script="Made on WaveSpeed.", scene="a sunny kitchen")
    result = generate_video(req)
    assert result.status == "succeeded", result.error
    assert result.video_key is not None
    assert result.audio_seconds is not None
    info = media.probe(ws_rt.storage.local_path(result.video_key))
    assert (info.width, info.height) == (448, 832)
    assert abs(info.duration - result.audio_seconds) < 0.1
    assert fake.calls["submit"] == 3  # one 429 retried at HTTP level, one failed job resubmitted by the task
    assert result.cost_usd == pytest.approx(billed_seconds(result.audio_seconds) * 0.03)
    again = generate_video(req)
    assert (again.status, again.cost_usd, again.reused_stages) == ("succeeded", 0, 4)
    assert fake.calls["submit"] == 3


def test_a_recorded_request_the_provider_forgot_is_replaced_once(ws_rt: Runtime, fake: FakeWaveSpeed) -> None:
    """Re-attaching to a request WaveSpeed no longer knows (deleted after 7 days): one new submit."""
    syncer = ws_rt.lipsync
    assert isinstance(syncer, WaveSpeedLipSync)
    actor = pipeline.actor_ref(ws_rt, "maya")
    speech = pipeline.speech(ws_rt, actor, "Forgotten.")
    crash_after_submit(ws_rt, syncer, actor.image, speech.output)
    fake.tasks.clear()  # the provider forgets the recorded request
    pipeline.lipsync(ws_rt, actor.image, speech.output, resolution="480p", seed=0, mouth=None)
    assert fake.calls["submit"] == 2
    with ws_rt.session() as s:
        run = s.scalars(sa.select(StageRun).where(StageRun.stage == "lipsync")).one()
        assert run.status is StageStatus.succeeded
        assert run.request_id in fake.tasks


def test_a_5xx_answer_to_a_submit_holds_the_stage_as_unknown_without_a_resubmit(
    ws_rt: Runtime, fake: FakeWaveSpeed
) -> None:
    actor = pipeline.actor_ref(ws_rt, "leo")
    speech = pipeline.speech(ws_rt, actor, "Ambiguous.")
    fake.knobs.submit_errors = [503]
    with pytest.raises(SubmitOutcomeUnknown) as failed:
        pipeline.lipsync(ws_rt, actor.image, speech.output, resolution="480p", seed=0, mouth=None)
    assert not failed.value.transient  # the task layer will not resubmit either
    assert fake.calls["submit"] == 1
    with ws_rt.session() as s:
        run = s.scalars(sa.select(StageRun).where(StageRun.stage == "lipsync")).one()
        assert run.status is StageStatus.unknown
        assert "outcome unknown" in (run.error or "")
    # Every later attempt (another row, a rerun) is refused without a submit until someone resolves it.
    ws_rt.finished_stages.clear()
    with pytest.raises(pipeline.StageOutcomeUnknown, match="castflow stages resolve"):
        pipeline.lipsync(ws_rt, actor.image, speech.output, resolution="480p", seed=0, mouth=None)
    assert fake.calls["submit"] == 1


def test_a_storage_failure_after_the_render_keeps_the_paid_job(
    ws_rt: Runtime, fake: FakeWaveSpeed, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The render finished but storing it failed (say a bucket limit): the next attempt re-attaches and
    fetches the same output instead of paying for a new render."""
    actor = pipeline.actor_ref(ws_rt, "ava")
    speech = pipeline.speech(ws_rt, actor, "Keep what was paid for.")
    real_put = ws_rt.storage.put_file

    def refuse_videos(key: str, source: Path, content_type: str) -> str:
        if content_type == "video/mp4":
            raise PermanentError("storage: Payload too large (413)")
        return real_put(key, source, content_type)

    monkeypatch.setattr(ws_rt.storage, "put_file", refuse_videos)
    with pytest.raises(PermanentError, match="too large"):
        pipeline.lipsync(ws_rt, actor.image, speech.output, resolution="480p", seed=0, mouth=None)
    with ws_rt.session() as s:
        run = s.scalars(sa.select(StageRun).where(StageRun.stage == "lipsync")).one()
        assert run.status is StageStatus.running
        assert run.request_id
    monkeypatch.setattr(ws_rt.storage, "put_file", real_put)
    pipeline.lipsync(ws_rt, actor.image, speech.output, resolution="480p", seed=0, mouth=None)
    assert fake.calls["submit"] == 1


def test_a_webhook_that_arrives_before_the_status_changes_wakes_the_wait_once(
    fake: FakeWaveSpeed, inputs: tuple[Path, Path, float]
) -> None:
    """The hint fires, but the result still says processing: one early poll, then the normal schedule
    (no busy loop)."""
    image, audio, _ = inputs
    client = client_for(fake)
    client.poll = PollSchedule(first=0.2, factor=1, cap=0.2)
    urls = asyncio.run(_upload_both(client, image, audio))
    fake.knobs.queue_seconds = 1.0
    rid = asyncio.run(client.submit("wavespeed-ai/infinitetalk", urls)).id
    asyncio.run(client.wait(rid, deadline_s=10, hint=lambda: "delivered early"))
    # Queue 1 s plus the fake's real render (0.3-2 s by the machine's day) at one poll per 0.2 s, plus
    # the early one: at most ~20; a busy loop would make thousands.
    assert fake.calls["result"] <= 40


def test_a_paid_render_that_fails_qc_is_not_paid_for_again(
    ws_rt: Runtime, fake: FakeWaveSpeed, monkeypatch: pytest.MonkeyPatch
) -> None:
    """QC failures of paid renders fail the video, not the paid stage: a rerun reports the same problem
    instead of paying for the same render again."""
    actor = pipeline.actor_ref(ws_rt, "leo")
    speech = pipeline.speech(ws_rt, actor, "Checked twice.")
    assert speech.output.seconds is not None
    video = pipeline.lipsync(ws_rt, actor.image, speech.output, resolution="480p", seed=0, mouth=None)
    with pytest.raises(pipeline.StageFailed, match="lasts"):
        pipeline.quality_check(ws_rt, video, audio_seconds=speech.output.seconds + 1, resolution="480p")
    again = pipeline.lipsync(ws_rt, actor.image, speech.output, resolution="480p", seed=0, mouth=None)
    assert again.reused
    assert fake.calls["submit"] == 1
    assert ws_rt.lipsync.size_problem(960, 960, "720p") is None  # a square portrait gives a square video
    assert ws_rt.lipsync.size_problem(480, 854, "720p") is not None


def test_the_first_poll_waits_for_the_expected_render_time_and_uploads_are_reused(
    fake: FakeWaveSpeed, inputs: tuple[Path, Path, float]
) -> None:
    image, audio, _ = inputs
    client = client_for(fake)
    fake.knobs.queue_seconds = 0.3
    rid = asyncio.run(
        client.submit("wavespeed-ai/infinitetalk", asyncio.run(_upload_both(client, image, audio)))
    ).id
    assert fake.calls["upload"] == 2
    asyncio.run(_upload_both(client, image, audio))
    assert fake.calls["upload"] == 2  # the same files: their URLs are reused
    # Expected past the queue and the fake's real render (1-2 s on a slow day): one look suffices.
    asyncio.run(client.wait(rid, deadline_s=20, expected_s=5.0))
    assert fake.calls["result"] == 1  # one look, once the render should be done


def test_jobs_asking_for_the_same_file_at_once_share_one_upload(
    fake: FakeWaveSpeed, inputs: tuple[Path, Path, float]
) -> None:
    """Rows that start together with the same variant or speech upload it once; a failed upload is not
    handed to the others: each then tries its own."""
    image, audio, _ = inputs
    client = client_for(fake)
    fake.knobs.latency = 0.2  # every answer late: all eight ask before the first upload is done

    async def many(path: Path) -> list[str]:
        return await asyncio.gather(*(client.upload(path) for _ in range(8)))

    urls = asyncio.run(many(image))
    assert len(set(urls)) == 1
    assert fake.calls["upload"] == 1

    client.uploads = type(client.uploads)()  # nothing cached
    real_upload = client._upload
    failures = [1]

    async def flaky(path: Path) -> str:
        if failures:
            failures.pop()
            await asyncio.sleep(0.1)
            raise TransientError("upload failed", provider="wavespeed")
        return await real_upload(path)

    client._upload = flaky  # type: ignore[method-assign]

    async def first_fails() -> list[str | BaseException]:
        return await asyncio.gather(*(client.upload(audio) for _ in range(4)), return_exceptions=True)

    outcomes = asyncio.run(first_fails())
    assert sum(isinstance(o, TransientError) for o in outcomes) == 1  # only the one that uploaded
    assert all(isinstance(o, str) for o in outcomes if not isinstance(o, TransientError))


def test_a_stage_another_worker_runs_is_waited_for_and_a_dead_workers_claim_taken_at_once(
    ws_rt: Runtime, fake: FakeWaveSpeed
) -> None:
    """Two workers, one new stage: the second waits while the first's claim holds, then (its lease
    lapsed: that worker stopped renewing) takes over and re-attaches to the job the first recorded.
    The claim of a dead process of this host is taken over at once, however long its lease."""
    import os
    import threading
    import uuid

    from castflow import claims
    from castflow.db import queries

    syncer = ws_rt.lipsync
    assert isinstance(syncer, WaveSpeedLipSync)
    actor = pipeline.actor_ref(ws_rt, "maya")
    speech = pipeline.speech(ws_rt, actor, "Two workers, one job.")
    key = pipeline.lipsync_key(ws_rt, actor.image, speech.output, "480p", 0)
    parent = os.getppid()  # a live process of this host: the other worker
    live = str(claims.Owner(claims.me().host, parent, claims._start_ticks(parent) or "0", "other"))
    assert not claims.is_dead(live)

    def claim(stage_key: str, owner: str, lease_s: float) -> None:
        with ws_rt.connection() as c:
            assert queries.claim_stage_run(
                c, stage_key=stage_key, stage="lipsync", provider="wavespeed", model=syncer.model,
                meta={}, owner=owner, lease_s=lease_s,
            ) is not None  # fmt: skip

    claim(key, live, 2.0)

    def other_worker_submits() -> None:
        time.sleep(0.5)
        rid = syncer.submit_render(
            ws_rt.storage.local_path(actor.image.key), ws_rt.storage.local_path(speech.output.key),
            resolution="480p", seed=0,
        )  # fmt: skip
        with ws_rt.connection() as c:
            queries.set_request_id(c, stage_key=key, request_id=rid)

    other = threading.Thread(target=other_worker_submits)
    other.start()
    started = time.monotonic()
    token = pipeline.PAYER.set(uuid.uuid4())  # this worker runs a campaign; the other paid the job
    try:
        outcome = pipeline.lipsync(ws_rt, actor.image, speech.output, resolution="480p", seed=0, mouth=None)
    finally:
        pipeline.PAYER.reset(token)
    other.join()
    assert time.monotonic() - started >= 2.0  # it waited out the live worker's lease
    assert fake.calls["submit"] == 1  # and re-attached to that worker's job
    assert outcome.reused  # another payer's job: not this call's spend
    assert ws_rt.storage.exists(outcome.output.key)

    free = next(pid for pid in range(4_000_000, 4_100_000) if not os.path.exists(f"/proc/{pid}"))
    dead = str(claims.Owner(claims.me().host, free, "1", "dead"))
    key2 = pipeline.lipsync_key(ws_rt, actor.image, speech.output, "720p", 0)
    claim(key2, dead, 3600.0)  # a claim nobody will finish, with an hour of lease left
    started = time.monotonic()
    pipeline.lipsync(ws_rt, actor.image, speech.output, resolution="720p", seed=0, mouth=None)
    assert time.monotonic() - started < 10
    assert fake.calls["submit"] == 2


def test_a_lost_submit_answer_holds_the_stage_until_resolved_then_the_found_job_is_fetched(
    ws_rt: Runtime, fake: FakeWaveSpeed
) -> None:
    """The fake creates the job and hangs up: the stage is 'unknown', other attempts do not submit,
    `castflow stages unknown` lists it, and resolving it with the job's id fetches that very job."""
    from typer.testing import CliRunner

    from castflow.cli import app

    actor = pipeline.actor_ref(ws_rt, "ava")
    speech = pipeline.speech(ws_rt, actor, "Lost answers cost money.")
    key = pipeline.lipsync_key(ws_rt, actor.image, speech.output, "480p", 0)
    fake.knobs.lost_answer_rate = 1.0
    with pytest.raises(SubmitOutcomeUnknown):
        pipeline.lipsync(ws_rt, actor.image, speech.output, resolution="480p", seed=0, mouth=None)
    fake.knobs.lost_answer_rate = 0.0
    for _ in range(2):  # another row, a rerun: refused without a submit
        ws_rt.finished_stages.clear()
        with pytest.raises(pipeline.StageOutcomeUnknown):
            pipeline.lipsync(ws_rt, actor.image, speech.output, resolution="480p", seed=0, mouth=None)
    jobs = fake.job_records()
    assert len(jobs) == 1
    assert not jobs[0]["answered"]

    runner = CliRunner()
    listed = runner.invoke(app, ["stages", "unknown"])
    assert listed.exit_code == 0, listed.output
    assert key in listed.output
    assert "--request-id" in listed.output
    both = runner.invoke(app, ["stages", "resolve", key, "--resubmit", "--request-id", "x"])
    assert both.exit_code == 2
    assert "not both" in both.output
    resolved = runner.invoke(app, ["stages", "resolve", key, "--request-id", jobs[0]["id"]])
    assert resolved.exit_code == 0, resolved.output
    outcome = pipeline.lipsync(ws_rt, actor.image, speech.output, resolution="480p", seed=0, mouth=None)
    assert ws_rt.storage.exists(outcome.output.key)
    assert len(fake.job_records()) == 1  # the lost job itself, paid once
    same = runner.invoke(app, ["stages", "resolve", key, "--request-id", jobs[0]["id"]])
    assert same.exit_code == 0, same.output  # said twice (or settled by the journal): nothing to do
    assert "already attached" in same.output
    again = runner.invoke(app, ["stages", "resolve", key, "--resubmit"])
    assert again.exit_code == 2  # nothing left to resolve
    assert "not waiting" in again.output
    assert "it is succeeded" in again.output


def test_a_request_id_the_database_could_not_take_is_kept_by_the_journal(
    ws_rt: Runtime, fake: FakeWaveSpeed, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The database refuses the request id after the submit (an outage past the retry window): the
    row fails naming the database, and the next attempt finds the id in the journal and re-attaches."""
    from castflow.db import queries
    from castflow.db.retry import DatabaseUnavailable

    actor = pipeline.actor_ref(ws_rt, "leo")
    speech = pipeline.speech(ws_rt, actor, "The journal remembers.")
    ws_rt.settings.database.retry_s = 0.3
    real = queries.set_request_id

    def outage(*_args: object, **_kw: object) -> None:
        raise sa.exc.OperationalError("UPDATE stage_run", {}, Exception("server closed the connection"))

    monkeypatch.setattr(queries, "set_request_id", outage)
    with pytest.raises(DatabaseUnavailable, match="unreachable"):
        pipeline.lipsync(ws_rt, actor.image, speech.output, resolution="480p", seed=0, mouth=None)
    monkeypatch.setattr(queries, "set_request_id", real)
    assert len(fake.job_records()) == 1
    outcome = pipeline.lipsync(ws_rt, actor.image, speech.output, resolution="480p", seed=0, mouth=None)
    assert ws_rt.storage.exists(outcome.output.key)
    assert len(fake.job_records()) == 1


def test_a_send_of_a_dead_process_with_no_journaled_id_is_held_as_unknown(
    ws_rt: Runtime, fake: FakeWaveSpeed
) -> None:
    import os

    from castflow import claims
    from castflow.db import queries

    actor = pipeline.actor_ref(ws_rt, "maya")
    speech = pipeline.speech(ws_rt, actor, "Killed mid-submit.")
    key = pipeline.lipsync_key(ws_rt, actor.image, speech.output, "480p", 0)
    free = next(pid for pid in range(4_000_000, 4_100_000) if not os.path.exists(f"/proc/{pid}"))
    dead = str(claims.Owner(claims.me().host, free, "1", "dead"))
    with ws_rt.connection() as c:
        assert queries.claim_stage_run(
            c,
            stage_key=key,
            stage="lipsync",
            provider="wavespeed",
            model="m",
            meta={},
            owner=dead,
            lease_s=3600,
        )
        queries.mark_sending(c, stage_key=key, owner=dead)
    with pytest.raises(pipeline.StageOutcomeUnknown, match="resolve"):
        pipeline.lipsync(ws_rt, actor.image, speech.output, resolution="480p", seed=0, mouth=None)
    assert fake.job_records() == []
