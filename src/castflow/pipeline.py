"""The steps of one video as plain functions (no Prefect): validate, stages, QC, publish, record.

Every paid-type stage goes through :func:`run_stage`: the database decides whether the stage is already
done (by stage key), the provider is called only otherwise, and the outcome is recorded on the
``stage_run`` row of that key.
"""

from __future__ import annotations

import contextvars
import functools
import logging
import mimetypes
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from castflow import claims, media
from castflow.db import queries
from castflow.db.retry import DatabaseUnavailable
from castflow.db.tables import StageStatus, VideoStatus, utcnow
from castflow.journal import JournalError
from castflow.models import (
    ActorRef,
    MediaRef,
    Mouth,
    StageName,
    StageOutcome,
    VideoRequest,
    VideoResult,
    Voice,
)
from castflow.providers.base import (
    Billing,
    PermanentError,
    ProviderError,
    ProviderResult,
    QueueImageEditor,
    QueueLipSyncer,
    QueueSpeechSynth,
    RequestNotFound,
    SubmitOutcomeUnknown,
    TransientError,
)
from castflow.providers.http import BEFORE_SEND
from castflow.redact import redact
from castflow.runtime import Runtime, reconcile_journals
from castflow.stages import normalise_text, sha256_file, stage_key

log = logging.getLogger(__name__)


class UserError(Exception):
    """Bad input: reported in one line, nothing written, no money spent."""


class StageFailed(Exception):
    """A stage of a video failed; carries the stage name for the record."""

    def __init__(self, stage: str, message: str) -> None:
        message = redact(message)
        super().__init__(f"{stage}: {message}")
        self.stage = stage
        self.message = message


_EXT = {
    "image/png": ".png",
    "image/jpeg": ".jpg",
    "audio/wav": ".wav",
    "audio/mpeg": ".mp3",
    "video/mp4": ".mp4",
}


def _ext(content_type: str) -> str:
    return _EXT.get(content_type) or mimetypes.guess_extension(content_type) or ".bin"


# ---- inputs -------------------------------------------------------------------------------------------


def actor_ref(rt: Runtime, key: str) -> ActorRef:
    """The actor with ``key`` as the pipeline sees it; a UserError when there is none."""

    def read(s: Session) -> tuple[Any, str]:
        found = queries.get_actor(s, key=key)
        known = "" if found is not None else ", ".join(a.key for a in queries.list_actors(s))
        return found, known

    actor, known = rt.db_session(read, what="reading an actor")
    if actor is None:
        raise UserError(f"unknown actor {key!r} (known: {known or 'none imported'})")
    if not rt.storage.exists(actor.image_key):
        raise UserError(f"actor {key!r}: portrait {actor.image_key} is missing from storage")
    return ActorRef(
        key=actor.key,
        name=actor.name,
        image=MediaRef(
            key=actor.image_key, sha256=actor.image_hash, content_type=_image_type(actor.image_key)
        ),
        voice=Voice(provider=actor.voice_provider, model=actor.voice_model, voice_id=actor.voice_id),
        mouth=Mouth.model_validate(actor.mouth) if actor.mouth else None,
    )


def _image_type(key: str) -> str:
    return mimetypes.guess_type(key)[0] or "image/png"


@dataclass(frozen=True)
class PreparedVideo:
    """A validated request with everything resolved that the DAG needs."""

    request: VideoRequest
    request_key: str
    actor: ActorRef
    script: str | None
    audio_path: Path | None
    audio_sha256: str | None
    variant: MediaRef | None  # an existing image variant to reuse


def prepare_video(rt: Runtime, req: VideoRequest, *, actor: ActorRef | None = None) -> PreparedVideo:
    """Validate a request before any spend; raises UserError naming what is wrong. ``actor``: the
    request's actor when the caller already looked it up (a campaign looks each actor up once)."""
    cfg = rt.settings.pipeline
    if actor is None or actor.key != req.actor:
        actor = actor_ref(rt, req.actor)
    script = None
    audio_path = None
    audio_sha = None
    if req.script is not None and req.script.strip():
        script = normalise_text(req.script)
        limit = rt.settings.script_limit(actor.voice.model)
        if len(script) > limit:
            raise UserError(
                f"script is {len(script)} characters long; {actor.voice.model} takes at most {limit}"
            )
        if actor.voice.provider not in rt.speech:
            raise UserError(
                f"actor {actor.key!r} speaks with provider {actor.voice.provider!r}, which is not configured "
                f"(configured: {', '.join(sorted(rt.speech))})"
            )
    else:
        audio_path = req.audio_path
        assert audio_path is not None  # the model guarantees one source
        if not audio_path.is_file():
            raise UserError(f"audio file {audio_path} does not exist")
        try:
            info = media.decode_audio(audio_path, max_seconds=cfg.max_audio_seconds)
        except media.MediaError as exc:
            raise UserError(f"audio file {audio_path.name}: {exc}") from exc
        if info.seconds < 0.2:
            raise UserError(f"audio file {audio_path.name} is too short ({info.seconds:.2f} s)")
        audio_sha = sha256_file(audio_path)
    variant = None
    if req.image_variant_id:
        variant_id = req.image_variant_id

        def read_variant(s: Session) -> tuple[Any, Any]:
            return queries.get_image_variant(s, variant_id=variant_id), queries.get_actor(s, key=actor.key)

        row, owner = rt.db_session(read_variant, what="reading an image variant")
        if row is None:
            raise UserError(f"unknown image variant {req.image_variant_id!r}")
        if owner is None or row.actor_id != owner.id:
            raise UserError(f"image variant {req.image_variant_id} belongs to another actor")
        variant = MediaRef(key=row.image_key, sha256=row.image_hash, content_type=_image_type(row.image_key))
    request_key = "video:" + stage_key(
        "video",
        provider="-",
        model="-",
        actor=actor.key,
        script=script,
        audio=audio_sha,
        scene=normalise_text(req.scene) if req.scene else None,
        variant=req.image_variant_id,
        resolution=req.resolution,
        seed=req.seed,
        **({"captions": True} if req.captions else {}),  # absent: keys of plain videos stay as they were
    )
    return PreparedVideo(req, request_key, actor, script, audio_path, audio_sha, variant)


# ---- stages -------------------------------------------------------------------------------------------


def run_stage(
    rt: Runtime,
    *,
    stage: StageName,
    key: str,
    provider: str,
    model: str,
    call: Callable[[Path], ProviderResult] | None = None,
    submit: Callable[[], str] | None = None,
    collect: Callable[[str, Path], ProviderResult] | None = None,
    meta: dict[str, object] | None = None,
) -> StageOutcome:
    """Run one stage once per stage key: reuse a finished run, otherwise call the provider and record it.

    Synchronous providers give ``call``. Queue providers give ``submit`` (returns the provider's request
    id, recorded before any waiting) and ``collect``: a run that finds its stage still running with a
    recorded request id re-attaches to that request instead of submitting (and paying) again.
    """
    assert (call is None) != (submit is None and collect is None), "give call, or submit and collect"
    seen = rt.finished_stages.get(key)  # finished moments ago for another row: nothing to look up
    if seen is not None:
        return seen
    # One run per stage key at a time in this process: rows that share a stage wait, then reuse it.
    with rt.stage_locks.hold(key):
        seen = rt.finished_stages.get(key)
        if seen is not None:
            return seen
        return _run_stage_locked(rt, stage, key, provider, model, call, submit, collect, meta)


class StageOutcomeUnknown(PermanentError):
    """A submit of this stage went out and its answer was lost: a job may exist (and be billed) whose
    request id nobody has. The stage is held until a person resolves it; no row submits it again."""

    def __init__(self, stage: str, key: str, provider: str, detail: str | None) -> None:
        super().__init__(
            f"{stage}: outcome of a submit unknown (a {provider} job may exist and be billed): find its "
            f"request id in the provider's dashboard and run `castflow stages resolve {key} --request-id "
            f"ID`, or `castflow stages resolve {key} --resubmit` to pay again"
            + (f" [{detail[:300]}]" if detail else ""),
            provider=provider,
        )


# The campaign whose row runs in this context: it is recorded as the payer of each job submitted, and
# only the payer counts a job's cost (castflow.campaigns sets it around each row).
PAYER: contextvars.ContextVar[uuid.UUID | None] = contextvars.ContextVar("castflow_payer", default=None)

_CLAIM_POLL_S = 0.5


def _job_ended_badly(exc: BaseException) -> bool:
    """The provider says the recorded job itself failed (or refused it): only then is it forgotten and
    a new job submitted."""
    if isinstance(exc, TransientError):
        return exc.job_failed
    return isinstance(exc, PermanentError)


def _sending(run: Any) -> bool:
    """A submit went out (or was about to) and no request id is on record."""
    return (
        run is not None
        and run.status is StageStatus.running
        and run.sending_at is not None
        and not run.request_id
    )


def _lease_lapsed(run: Any, grace_s: float = 0.0) -> bool:
    return bool(run.lease_until is None or run.lease_until + timedelta(seconds=grace_s) < utcnow())


def _held_by_other(run: Any, me: str) -> bool:
    """Another process runs this stage now (it owns the claim and its lease holds)."""
    return bool(
        run is not None
        and run.status is StageStatus.running
        and run.owner is not None
        and run.owner != me
        and not _lease_lapsed(run)
    )


def _run_stage_locked(
    rt: Runtime,
    stage: StageName,
    key: str,
    provider: str,
    model: str,
    call: Callable[[Path], ProviderResult] | None,
    submit: Callable[[], str] | None,
    collect: Callable[[str, Path], ProviderResult] | None,
    meta: dict[str, object] | None,
) -> StageOutcome:
    """Reuse, wait for, or claim and run the stage. A claim is taken only with a provider slot in hand
    (so it never goes stale while queued for one), in one atomic statement; another process's claim is
    waited for while its owner lives, and taken over at once when its owner is a dead process of this
    host, or when its lease has lapsed."""
    me = str(claims.me())
    waiting_for: str | None = None
    while True:
        done = rt.db(lambda c: queries.stage_run_state(c, stage_key=key), what=f"reading stage {stage}")
        output = finished_output(done)
        if output is not None and rt.storage.exists(output.key):
            reused = StageOutcome(
                stage=stage, stage_key=key, reused=True, cost_usd=done.cost_usd, output=output
            )
            rt.finished_stages.put(key, reused)
            return reused
        if done is not None and done.status is StageStatus.unknown:
            if _recover_request_id(rt, key, done, me):
                continue  # a journal had the id after all: re-attach to that job
            raise StageOutcomeUnknown(stage, key, provider, done.error)
        stale: str | None = None
        if _sending(done):
            if _recover_request_id(rt, key, done, me):
                continue  # the id was found (journal): the claim below re-attaches to it
            if _send_abandoned(rt, done, me):
                error = (
                    "a submit was sent and its answer never recorded (its process died or lost the database)"
                )
                if not rt.db(functools.partial(queries.mark_stage_unknown, stage_key=key, error=error)):
                    time.sleep(_CLAIM_POLL_S)  # the owner recorded the id meanwhile: read it again
                continue  # raised as unknown above, unless the owner recorded the id meanwhile
            time.sleep(_CLAIM_POLL_S)  # a live owner is sending it right now: wait for its request id
            continue
        if _held_by_other(done, me):
            if not claims.is_dead(done.owner):
                if waiting_for != done.owner:
                    waiting_for = done.owner
                    log.info(
                        "%s %s is run by another process (%s): waiting for it", stage, key[:12], done.owner
                    )
                time.sleep(_CLAIM_POLL_S)
                continue
            stale = done.owner  # a dead process of this host: take over now, not when its lease ends
        with rt.provider_slot(provider):
            claim = rt.db(
                functools.partial(
                    queries.claim_stage_run,
                    stage_key=key,
                    stage=stage,
                    provider=provider,
                    model=model,
                    meta=dict(meta or {}),
                    owner=me,
                    lease_s=rt.settings.pipeline.claim_lease_s,
                    stale_owner=stale,
                    rerun_succeeded=done is not None and done.status is StageStatus.succeeded,
                ),
                what=f"claiming stage {stage}",
            )
            if claim is None:  # another process claimed it between our read and our claim
                continue
            assert rt.leases is not None
            try:
                with rt.leases.hold(key):
                    return _run_claimed(
                        rt, stage, key, provider, call, submit, collect, meta, claim.request_id, done
                    )
            except queries.ClaimLost:
                continue  # our lease lapsed and another process runs the stage now: wait for it


def _send_abandoned(rt: Runtime, run: Any, me: str) -> bool:
    """Nobody will record the request id of this send: its owner is this process (whose attempt ended
    without it), a dead process of this host, or (another machine's) lapsed past the database retry
    window. A live owner of this host is waited for: it holds the id, or will mark the stage itself."""
    if run.owner == me or claims.is_dead(run.owner):
        return True
    owner = claims.Owner.parse(run.owner)
    same_host = owner is not None and owner.host == claims.me().host
    return not same_host and _lease_lapsed(run, rt.settings.database.retry_s)


def _recover_request_id(rt: Runtime, key: str, run: Any, me: str) -> bool:
    """A send with no request id in the database: look for the id in this process's journal, or (its
    owner dead) in the dead owners' journals of this host; write it to the database if found."""
    assert rt.journal is not None
    sent = run.sending_at.timestamp() if run.sending_at is not None else 0.0
    found = rt.journal.find(key, since=sent) if run.owner == me else None
    if found is not None:
        rt.db(lambda c: queries.set_request_id(c, stage_key=key, request_id=found))
        rt.journal.forget(key)
        return True
    if run.owner != me and claims.is_dead(run.owner):
        reconcile_journals(rt.settings, rt.engine)
        again = rt.db(lambda c: queries.stage_run_state(c, stage_key=key))
        return again is not None and bool(again.request_id)
    return False


def _run_claimed(
    rt: Runtime,
    stage: StageName,
    key: str,
    provider: str,
    call: Callable[[Path], ProviderResult] | None,
    submit: Callable[[], str] | None,
    collect: Callable[[str, Path], ProviderResult] | None,
    meta: dict[str, object] | None,
    in_flight: str | None,
    seen: Any,
) -> StageOutcome:
    """The claimed stage: call the provider (or re-attach to the recorded job), store, record."""
    me = str(claims.me())
    started = time.monotonic()
    collected = False  # a paid job whose output we hold: a later failure must not lose it
    job = {"recorded": in_flight is not None, "submitted": False}
    payer = PAYER.get()
    try:
        with tempfile.TemporaryDirectory(prefix=f"castflow-{stage}-", dir=rt.temp_root()) as tmp:
            if call is not None:
                result = call(Path(tmp))
            else:
                assert submit is not None
                assert collect is not None
                result = _submit_or_reattach(rt, key, provider, in_flight, submit, collect, Path(tmp), job)
                collected = True
            digest = sha256_file(result.path)
            out_key = f"stages/{stage}/{key[:2]}/{key}{_ext(result.content_type)}"
            rt.storage.put_file(out_key, result.path, result.content_type)
    except Exception as exc:
        if isinstance(exc, DatabaseUnavailable | queries.ClaimLost) or (
            job["submitted"] and not job["recorded"]
        ):
            # Nothing can be written, the stage is another process's now, or a job was sent whose id
            # only the journal holds: the row stays as it is and the rules above settle it next time.
            raise
        message = redact(str(exc) if isinstance(exc, ProviderError) else f"{type(exc).__name__}: {exc}")
        if isinstance(exc, SubmitOutcomeUnknown):
            rt.db(lambda c: queries.mark_stage_unknown(c, stage_key=key, error=message))
        elif collected or (job["recorded"] and not _job_ended_badly(exc)):
            # The provider's job finished (or may still): keep the stage running with its request id,
            # so the next attempt re-attaches and fetches the output instead of paying again (a full
            # disk while downloading it, a storage error, a timeout: none of them calls for a new job).
            rt.db(lambda c: queries.note_stage_error(c, stage_key=key, error=message, owner=me))
        else:  # nothing paid is pending: the next attempt submits anew
            rt.db(lambda c: queries.fail_stage_run(c, stage_key=key, error=message, owner=me))
        raise
    elapsed = time.monotonic() - started
    # Paid here: by this call, or a job an earlier run of the same payer submitted and never finished.
    paid = call is not None or job["submitted"] or (seen is not None and seen.campaign_id == payer)
    out_meta = {**(meta or {}), **result.meta, "content_type": result.content_type, "seconds": result.seconds}
    rt.db(
        lambda c: queries.finish_stage_run(
            c,
            stage_key=key,
            output_key=out_key,
            output_hash=digest,
            billed_units=result.billing.units,
            unit=result.billing.unit,
            cost_usd=result.billing.cost_usd,
            run_seconds=elapsed,
            request_id=result.request_id,
            meta=out_meta,
            campaign_id=payer if call is not None else None,
        ),
        what=f"recording stage {stage}",
    )
    outcome = StageOutcome(
        stage=stage,
        stage_key=key,
        reused=not paid,
        produced=True,
        cost_usd=result.billing.cost_usd,
        output=MediaRef(key=out_key, sha256=digest, content_type=result.content_type, seconds=result.seconds),
    )
    rt.finished_stages.put(key, outcome.model_copy(update={"reused": True, "produced": False}))
    return outcome


def _submit_or_reattach(
    rt: Runtime,
    key: str,
    provider: str,
    in_flight: str | None,
    submit: Callable[[], str],
    collect: Callable[[str, Path], ProviderResult],
    workdir: Path,
    job: dict[str, bool],
) -> ProviderResult:
    """Wait on the recorded request if there is one, else submit (journaling the id, then recording it,
    before waiting).

    A recorded request the provider no longer knows (expired, deleted) cannot deliver its output any
    more: it is replaced by one new submit. The submit's intent is in the database before it is sent
    (``sending_at``), so a lost answer or a crash after sending is never mistaken for "nothing sent".
    """
    if in_flight is not None:
        try:
            return collect(in_flight, workdir)
        except RequestNotFound:
            job["recorded"] = False  # that job is gone: what follows is a new submit's story
    assert rt.journal is not None
    rt.journal.check()  # no submit unless its request id can be kept
    me = str(claims.me())
    payer = PAYER.get()
    marked = threading.Event()

    def intent() -> None:
        if not marked.is_set():
            rt.db(
                lambda c: queries.mark_sending(c, stage_key=key, owner=me, campaign_id=payer),
                what="recording a submit",
            )
            marked.set()

    token = BEFORE_SEND.set(intent)
    try:
        request_id = submit()
    finally:
        BEFORE_SEND.reset(token)
    if not request_id:  # an answer without an id: a job may exist that nothing can name
        raise SubmitOutcomeUnknown(provider, "the answer carries no request id")
    job["submitted"] = True
    try:
        rt.journal.record(stage_key=key, request_id=request_id, provider=provider)
    except JournalError as exc:  # the database may still take it; if not, the stage ends unknown
        log.warning("%s (stage %s, request %s)", exc, key[:12], request_id)
    rt.db(
        lambda c: queries.set_request_id(c, stage_key=key, request_id=request_id, campaign_id=payer),
        what="recording a request id",
    )
    rt.journal.forget(key)
    job["recorded"] = True
    return collect(request_id, workdir)


def finished_output(run: Any) -> MediaRef | None:
    """The output of a stage run that succeeded (a row of ``queries.stage_run_state``), else None."""
    if run is None or run.status is not StageStatus.succeeded or not run.output_key or not run.output_hash:
        return None
    return MediaRef(
        key=run.output_key,
        sha256=run.output_hash,
        content_type=str(run.meta.get("content_type", "application/octet-stream")),
        seconds=_float_or_none(run.meta.get("seconds")),
    )


def _float_or_none(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) else None


def scene_variant_key(rt: Runtime, image: MediaRef, prompt: str, seed: int) -> str:
    return stage_key(
        "scene_variant",
        provider=rt.image.name,
        model=rt.image.model,
        image=image.sha256,
        prompt=normalise_text(prompt),
        seed=seed,
    )


def scene_variant(rt: Runtime, actor: ActorRef, prompt: str, seed: int) -> StageOutcome:
    """The actor's portrait edited into the scene ``prompt`` (also recorded as an image variant)."""
    key = scene_variant_key(rt, actor.image, prompt, seed)
    text = normalise_text(prompt)

    def source() -> Path:  # only fetched when the stage runs (a reused stage needs no local copy)
        return rt.storage.local_path(actor.image.key)

    editor = rt.image
    stage = functools.partial(
        run_stage,
        rt,
        stage="scene_variant",
        key=key,
        provider=editor.name,
        model=editor.model,
        meta={"actor": actor.key},
    )
    if isinstance(editor, QueueImageEditor):
        outcome = stage(
            submit=lambda: editor.submit_edit(
                source(),
                text,
                seed=seed,
                image_url=rt.storage.url(actor.image.key) if rt.storage.shares_urls else None,
            ),
            collect=lambda rid, wd: editor.collect(rid, workdir=wd),
        )
    else:
        outcome = stage(call=lambda wd: editor.edit(source(), text, seed=seed, workdir=wd))
    if not outcome.produced:
        return outcome  # its image variant was recorded when the stage ran

    def record(s: Session) -> None:
        db_actor = queries.get_actor(s, key=actor.key)
        assert db_actor is not None
        queries.record_image_variant(
            s,
            actor_id=db_actor.id,
            prompt=text,
            seed=seed,
            provider=editor.name,
            model=editor.model,
            stage_key=key,
            image_key=outcome.output.key,
            image_hash=outcome.output.sha256,
            cost_usd=outcome.cost_usd,
        )

    rt.db_session(record, what="recording an image variant")
    return outcome


def speech_key(voice: Voice, text: str) -> str:
    return stage_key(
        "speech", provider=voice.provider, model=voice.model, voice=voice.voice_id, text=normalise_text(text)
    )


def speech(rt: Runtime, actor: ActorRef, script: str) -> StageOutcome:
    """The script spoken in the actor's voice."""
    synth = rt.speech.get(actor.voice.provider)
    if synth is None:
        raise PermanentError(f"speech provider {actor.voice.provider!r} is not configured")
    text = normalise_text(script)
    voice = actor.voice
    stage = functools.partial(
        run_stage,
        rt,
        stage="speech",
        key=speech_key(voice, text),
        provider=voice.provider,
        model=voice.model,
        meta={"actor": actor.key, "characters": len(text)},
    )
    if isinstance(synth, QueueSpeechSynth):
        return stage(
            submit=lambda: synth.submit_speech(text, voice),
            collect=lambda rid, wd: synth.collect(rid, text, voice, workdir=wd),
        )
    return stage(call=lambda wd: synth.synthesize(text, voice, workdir=wd))


def audio_ingest_key(sha256: str) -> str:
    return stage_key("audio_ingest", provider="upload", model="-", audio=sha256)


def ingest_audio(rt: Runtime, path: Path, sha256: str) -> StageOutcome:
    """A given audio file copied into storage (content-addressed), with its true duration."""

    def call(_wd: Path) -> ProviderResult:
        sound = media.decode_audio(path, max_seconds=rt.settings.pipeline.max_audio_seconds)
        ctype = mimetypes.guess_type(path.name)[0] or "application/octet-stream"

        return ProviderResult(path, ctype, Billing(0, "files"), seconds=sound.seconds)

    return run_stage(
        rt, stage="audio_ingest", key=audio_ingest_key(sha256), provider="upload", model="-", call=call
    )


def lipsync_key(rt: Runtime, image: MediaRef, audio: MediaRef, resolution: str, seed: int) -> str:
    return stage_key(
        "lipsync",
        provider=rt.lipsync.name,
        model=rt.lipsync.model,
        image=image.sha256,
        audio=audio.sha256,
        resolution=resolution,
        seed=seed,
        fps=rt.settings.pipeline.fps,
    )


def lipsync(
    rt: Runtime, image: MediaRef, audio: MediaRef, *, resolution: str, seed: int, mouth: Mouth | None
) -> StageOutcome:
    """The talking video: one image plus one audio."""
    syncer = rt.lipsync

    def image_path() -> Path:  # inputs are fetched only when the stage runs, not when it is reused
        return rt.storage.local_path(image.key)

    def audio_path() -> Path:
        return rt.storage.local_path(audio.key)

    stage = functools.partial(
        run_stage,
        rt,
        stage="lipsync",
        key=lipsync_key(rt, image, audio, resolution, seed),
        provider=syncer.name,
        model=syncer.model,
        meta={"resolution": resolution},
    )
    if isinstance(syncer, QueueLipSyncer):
        share = rt.storage.shares_urls
        return stage(
            submit=lambda: syncer.submit_render(
                image_path(),
                audio_path(),
                resolution=resolution,
                seed=seed,
                image_url=rt.storage.url(image.key) if share else None,
                audio_url=rt.storage.url(audio.key) if share else None,
            ),
            collect=lambda rid, wd: syncer.collect(
                rid,
                audio_seconds=audio.seconds
                if audio.seconds is not None
                else media.audio_seconds(audio_path()),
                resolution=resolution,
                workdir=wd,
            ),
        )
    return stage(
        call=lambda wd: syncer.render(
            image_path(), audio_path(), resolution=resolution, seed=seed, mouth=mouth, workdir=wd
        )
    )


CAPTIONS_MODEL = "captions-v1"  # bump when the look or the timing rules change


def captions_key(video: MediaRef, text: str) -> str:
    return stage_key(
        "captions", provider="local", model=CAPTIONS_MODEL, video=video.sha256, text=normalise_text(text)
    )


def add_captions(
    rt: Runtime, video: StageOutcome, audio: StageOutcome, script: str, key: str
) -> tuple[StageOutcome, str]:
    """The video with the script burned in as captions timed to the speech; the matching SRT is stored
    beside the video's ``key``. Returns the captioned video and the SRT's key."""
    from castflow import captions

    sound = media.decode_audio(rt.storage.local_path(audio.output.key))
    cues = captions.timed_cues(script, sound)

    def call(workdir: Path) -> ProviderResult:
        out = captions.burn(rt.storage.local_path(video.output.key), sound, cues, workdir / "captioned.mp4")
        return ProviderResult(out, "video/mp4", Billing(0, "videos"), seconds=media.probe(out).duration)

    outcome = run_stage(
        rt,
        stage="captions",
        key=captions_key(video.output, script),
        provider="local",
        model=CAPTIONS_MODEL,
        call=call,
        meta={"cues": len(cues)},
    )
    srt_key = _publish_text(rt, key.removesuffix(".mp4") + ".srt", captions.srt(cues), "application/x-subrip")
    return outcome, srt_key


def quality_check(rt: Runtime, video: StageOutcome, *, audio_seconds: float, resolution: str) -> None:
    """Probe the lip-sync output; a failure fails the video at ``qc``.

    With the embedded renderer the lip-sync run is marked failed too, so a rerun renders again (free).
    A paid render stays recorded: rendering the same inputs again would cost as much and most likely
    fail the same way, so a rerun reports the same QC problem instead of paying again.
    """
    problems = media.check_video(
        rt.storage.local_path(video.output.key),
        audio_seconds=audio_seconds,
        fps=rt.settings.pipeline.fps,
        size=lambda w, h: rt.lipsync.size_problem(w, h, resolution),
        tolerance=rt.settings.pipeline.qc_duration_tolerance_s,
    )
    if problems:
        message = "; ".join(problems)
        if rt.lipsync.name == "local":
            rt.finished_stages.forget(video.stage_key)
            error = f"quality check failed: {message}"
            rt.db(functools.partial(queries.fail_stage_run, stage_key=video.stage_key, error=error))
        raise StageFailed("qc", message)


def video_key(actor: str, request_key: str, resolution: str) -> str:
    return f"videos/{actor}/{request_key.removeprefix('video:')[:24]}_{resolution}.mp4"


def _publish_text(rt: Runtime, key: str, text: str, content_type: str) -> str:
    """Store a small text file (an SRT) at ``key``; returns the key."""
    with tempfile.TemporaryDirectory(prefix="castflow-text-") as tmp:
        path = Path(tmp) / Path(key).name
        path.write_text(text, encoding="utf-8")
        rt.storage.put_file(key, path, content_type)
    return key


def publish(rt: Runtime, video: StageOutcome, key: str) -> str:
    """Copy the checked video to its deterministic key; returns its URL."""
    if rt.storage.exists(key) and sha256_file(rt.storage.local_path(key)) == video.output.sha256:
        return rt.storage.url(key)
    return rt.storage.put_file(key, rt.storage.local_path(video.output.key), "video/mp4")


# ---- one video, without Prefect (a campaign row) ------------------------------------------------------


class Skipped(Exception):
    """A video not made on purpose (e.g. the budget would be crossed); carries the reason and the
    stages it used before stopping."""

    used: list[StageOutcome] | None = None


def given_image(prepared: PreparedVideo) -> StageOutcome:
    """The image when no scene is asked: the chosen variant or the actor's portrait (nothing to pay)."""
    image = prepared.variant or prepared.actor.image
    return StageOutcome(stage="scene_variant", stage_key=image.sha256, output=image, reused=True)


def make_video(
    rt: Runtime,
    prepared: PreparedVideo,
    *,
    key: str,
    before_lipsync: Callable[[StageOutcome, StageOutcome], None] | None = None,
    on_stage: Callable[[StageOutcome], None] | None = None,
) -> VideoResult:
    """Every stage of one video in this thread, recorded like the flow does; published at ``key``.

    ``before_lipsync(image, audio)`` may raise :class:`Skipped` (budget); ``on_stage(outcome)`` hears of
    each finished stage (what it cost). Failures are recorded and re-raised.
    """
    req = prepared.request

    used: list[StageOutcome] = []

    def told(outcome: StageOutcome) -> None:
        used.append(outcome)
        if on_stage is not None:
            on_stage(outcome)

    stage = "prepare"
    try:
        stage = "scene_variant"
        if req.scene:
            image = scene_variant(rt, prepared.actor, req.scene, req.seed)
            told(image)
        else:
            image = given_image(prepared)
        if prepared.script is not None:
            stage = "speech"
            audio = speech(rt, prepared.actor, prepared.script)
        else:
            stage = "audio_ingest"
            assert prepared.audio_path is not None
            assert prepared.audio_sha256 is not None
            audio = ingest_audio(rt, prepared.audio_path, prepared.audio_sha256)
        told(audio)
        assert audio.output.seconds is not None
        stage = "lipsync"
        if before_lipsync is not None:
            before_lipsync(image, audio)
        video = lipsync(
            rt,
            image.output,
            audio.output,
            resolution=req.resolution,
            seed=req.seed,
            mouth=prepared.actor.mouth,
        )
        told(video)
        stage = "qc"
        quality_check(rt, video, audio_seconds=audio.output.seconds, resolution=req.resolution)
        final, srt_key = video, None
        if req.captions and prepared.script:
            stage = "captions"
            final, srt_key = add_captions(rt, video, audio, prepared.script, key)
            told(final)
        stage = "publish"
        url = publish(rt, final, key)
        stage = "record"
        return record_success(
            rt,
            prepared,
            image=image,
            audio=audio,
            video=video,
            key=key,
            url=url,
            captions_key=srt_key,
            video_seconds=final.output.seconds,
            used=used,
        )
    except Skipped as exc:
        exc.used = used  # the caller records the skip with what was paid so far
        raise
    except DatabaseUnavailable:
        raise  # nothing can be recorded now; the stage rows say what was paid, and a rerun resumes
    except Exception as exc:
        failed = exc.stage if isinstance(exc, StageFailed) else stage
        message = exc.message if isinstance(exc, StageFailed) else str(exc)
        record_failure(rt, prepared, stage=failed, error=message, used=used)
        raise


# ---- records -----------------------------------------------------------------------------------------


def stage_links(outcomes: list[StageOutcome] | None) -> list[tuple[str, str, bool, float]]:
    """(stage, stage key, reused, cost paid) of each outcome, as the video_stage rows record them."""
    return [(o.stage, o.stage_key, o.reused, 0.0 if o.reused else o.cost_usd) for o in outcomes or []]


def _finish(
    rt: Runtime,
    prepared: PreparedVideo,
    used: list[StageOutcome] | None,
    status: VideoStatus,
    **values: object,
) -> str:
    """Write the video's final state and the stages it used, in one transaction; returns its id."""

    def write(s: sa.Connection) -> str:
        video_id = queries.finish_video(
            s, request_key=prepared.request_key, status=status, finished_at=utcnow(), **values
        )
        assert video_id is not None, f"no video row for {prepared.request_key}"
        if used:
            queries.link_video_stages(s, video_id=video_id, links=stage_links(used))
        return str(video_id)

    return rt.db(write, what="recording a video")


def record_start(rt: Runtime, prepared: PreparedVideo, **extra_values: object) -> str:
    """Create (or reset) the video row as running; returns its id. ``extra_values`` are more columns
    (a campaign row's campaign_id, row_id, extra)."""
    req = prepared.request
    values = {
        **extra_values,
        "actor_key": prepared.actor.key,
        "script": prepared.script,
        "audio_source": str(prepared.audio_path) if prepared.audio_path else None,
        "scene": req.scene,
        "resolution": req.resolution,
        "seed": req.seed,
        "image_variant_id": _uuid_or_none(req.image_variant_id),
        "status": VideoStatus.running,
        "failed_stage": None,
        "error": None,
    }
    video_id = rt.db(
        functools.partial(queries.upsert_video, request_key=prepared.request_key, values=values),
        what="recording a video",
    )
    return str(video_id)


def _uuid_or_none(value: str | None) -> object:
    import uuid

    return uuid.UUID(value) if value else None


def record_success(
    rt: Runtime,
    prepared: PreparedVideo,
    *,
    image: StageOutcome,
    audio: StageOutcome,
    video: StageOutcome,
    key: str,
    url: str,
    captions_key: str | None = None,
    video_seconds: float | None = None,
    used: list[StageOutcome] | None = None,
) -> VideoResult:
    """Mark the video finished. ``video_seconds`` is the published file's length when known (saves
    probing it again); ``used`` are the stages it used, linked to it for the spend reports."""
    if video_seconds is None:
        video_seconds = media.probe(rt.storage.local_path(key)).duration
    cost = sum(o.cost_usd for o in (image, audio, video) if not o.reused)
    reused = sum(1 for o in (image, audio, video) if o.reused)
    video_id = _finish(
        rt,
        prepared,
        used,
        VideoStatus.succeeded,
        image_key=image.output.key,
        audio_key=audio.output.key,
        video_key=key,
        video_url=url,
        audio_seconds=audio.output.seconds,
        video_seconds=video_seconds,
        cost_usd=cost,
        captions_key=captions_key,
        failed_stage=None,
        error=None,
    )
    return VideoResult(
        video_id=video_id,
        actor=prepared.actor.key,
        status="succeeded",
        video_key=key,
        video_url=url,
        audio_seconds=audio.output.seconds,
        video_seconds=video_seconds,
        cost_usd=cost,
        reused_stages=reused,
    )


def record_failure(
    rt: Runtime, prepared: PreparedVideo, *, stage: str, error: str, used: list[StageOutcome] | None = None
) -> VideoResult:
    error = redact(error)
    video_id = _finish(rt, prepared, used, VideoStatus.failed, failed_stage=stage, error=error[:4000])
    return VideoResult(
        video_id=video_id, actor=prepared.actor.key, status="failed", failed_stage=stage, error=error
    )
