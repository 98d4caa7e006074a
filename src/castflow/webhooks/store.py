"""The waiting side's view of recorded webhooks: one indexed query per provider job."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.orm import Session

from castflow.db import queries
from castflow.db.tables import WebhookEvent


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
