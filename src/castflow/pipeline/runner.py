"""The stage runner: one run per stage key, whatever the number of rows, threads and processes.

Every stage that stores an output goes through :func:`run_stage`: the database decides whether the stage
is already done (by stage key), the provider is called only otherwise, and the outcome is recorded on
the ``stage_run`` row of that key. A claim has an owner and a lease; a submit's intent is recorded
before it is sent and its request id (journaled) before anything waits on it.
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
from datetime import timedelta
from pathlib import Path
from typing import Any

from castflow import claims, interrupt
from castflow.db import queries
from castflow.db.retry import DatabaseUnavailable
from castflow.db.tables import StageStatus, utcnow
from castflow.journal import JournalError
from castflow.models import (
    MediaRef,
    StageName,
    StageOutcome,
)
from castflow.providers.base import (
    PermanentError,
    ProviderError,
    ProviderResult,
    RequestNotFound,
    SubmitOutcomeUnknown,
    TransientError,
)
from castflow.providers.http import BEFORE_SEND
from castflow.redact import redact
from castflow.runtime import Runtime, reconcile_journals
from castflow.stages import sha256_file

log = logging.getLogger(__name__)


_EXT = {
    "image/png": ".png",
    "image/jpeg": ".jpg",
    "audio/wav": ".wav",
    "audio/mpeg": ".mp3",
    "video/mp4": ".mp4",
}


def _ext(content_type: str) -> str:
    return _EXT.get(content_type) or mimetypes.guess_extension(content_type) or ".bin"


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
                    interrupt.check("waiting on another row's stage")
                    time.sleep(_CLAIM_POLL_S)  # the owner recorded the id meanwhile: read it again
                continue  # raised as unknown above, unless the owner recorded the id meanwhile
            interrupt.check("waiting on another row's stage")
            time.sleep(_CLAIM_POLL_S)  # a live owner is sending it right now: wait for its request id
            continue
        if _held_by_other(done, me):
            if not claims.is_dead(done.owner):
                if waiting_for != done.owner:
                    waiting_for = done.owner
                    log.info(
                        "%s %s is run by another process (%s): waiting for it", stage, key[:12], done.owner
                    )
                interrupt.check("waiting on another row's stage")
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
