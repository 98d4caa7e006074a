"""Webhooks, whichever vendor sends them: what every delivery goes through (rejections with the HTTP
status to answer, header and timestamp checks, the JSON body, the normalised :class:`Event` that is
recorded) and the waiting side's view of what was recorded (:func:`find_completion`, one indexed query
per provider job).

Each vendor's own signature and payload rules live in its folder (``castflow/providers/<vendor>/webhook.py``).
Reasons never contain header values, bodies or secrets.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, NoReturn

import sqlalchemy as sa
from sqlalchemy.orm import Session

from castflow.db import queries
from castflow.db.tables import WebhookEvent, WebhookStatus

_TIMESTAMP = re.compile(r"[0-9]{1,12}")
# Ids end up in the signed message and in the database: printable ASCII, no spaces, bounded.
ID = re.compile(r"[!-~]{1,200}")


class WebhookRejected(Exception):
    """A delivery that must not be recorded; ``status_code`` is what the sender gets."""

    def __init__(self, reason: str, status_code: int = 400) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status_code = status_code


class SignatureMismatch(WebhookRejected):
    """Well-formed and fresh, but no key verifies the signature (a fresher JWKS might)."""

    def __init__(self, reason: str = "signature does not verify") -> None:
        super().__init__(reason, 401)


def lower(headers: Mapping[str, str]) -> dict[str, str]:
    return {k.lower(): v for k, v in headers.items()}


def required(headers: dict[str, str], names: Sequence[str]) -> list[str]:
    missing = [n for n in names if not headers.get(n)]
    if missing:
        raise WebhookRejected(f"missing header(s): {', '.join(missing)}", 400)
    return [headers[n] for n in names]


def check_timestamp(raw: str, now: float | None, tolerance_s: float) -> None:
    if not _TIMESTAMP.fullmatch(raw):
        raise WebhookRejected("timestamp is not Unix seconds", 400)
    skew = int(raw) - (time.time() if now is None else now)
    if skew < -tolerance_s:
        raise WebhookRejected("timestamp too old", 401)
    if skew > tolerance_s:
        raise WebhookRejected("timestamp in the future", 401)


JOB_ID = ID  # job ids end up in the database too


@dataclass(frozen=True)
class Event:
    """A delivery normalised for the ``webhook_event`` table."""

    request_id: str
    status: WebhookStatus
    error: str | None
    payload: dict[str, Any] | None


def reject(reason: str, status_code: int = 400) -> NoReturn:
    raise WebhookRejected(reason, status_code)


def _reject_constant(name: str) -> NoReturn:
    raise ValueError(f"JSON constant {name} is not allowed")


def parse_json_object(body: bytes) -> dict[str, Any]:
    """The body as a JSON object (NaN/Infinity refused: PostgreSQL's JSONB cannot store them)."""
    try:
        doc = json.loads(body, parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError):
        reject("body is not valid JSON")
    if not isinstance(doc, dict):
        reject("body is not a JSON object")
    return doc


def job_id(doc: Mapping[str, Any], field: str) -> str:
    value = doc.get(field)
    if not isinstance(value, str) or not JOB_ID.fullmatch(value):
        reject(f"missing or malformed {field!r}")
    return value


def text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


# ---- the waiting side ------------------------------------------------------------------------------


@dataclass(frozen=True)
class WebhookCompletion:
    """A provider job's completion as a webhook reported it.

    ``payload`` is what the provider's result endpoint would return (fal: the model output, or the
    error detail when failed; WaveSpeed: the flat prediction object, ``outputs[0]`` being the video).
    It is None when fal completed but could not send the output (``payload_error``, kept in ``error``):
    fetch the result from the queue API then.
    """

    status: Literal["completed", "failed"]
    error: str | None
    payload: dict[str, Any] | None


def _completion(row: WebhookEvent) -> WebhookCompletion:
    status: Literal["completed", "failed"] = "completed" if row.status.value == "completed" else "failed"
    return WebhookCompletion(status=status, error=row.error, payload=row.payload)


def find_completion(
    engine_or_session: sa.Engine | Session, provider: str, request_id: str
) -> WebhookCompletion | None:
    """The recorded completion of ``request_id`` at ``provider`` ('fal' | 'wavespeed'), or None yet."""
    if isinstance(engine_or_session, Session):
        row = queries.find_webhook_completion(engine_or_session, provider=provider, request_id=request_id)
        return None if row is None else _completion(row)
    with Session(engine_or_session) as session, session.begin():
        row = queries.find_webhook_completion(session, provider=provider, request_id=request_id)
        return None if row is None else _completion(row)
