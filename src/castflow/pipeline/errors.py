"""The exceptions a video's steps raise, named once."""

from __future__ import annotations

from castflow.models import StageOutcome
from castflow.redact import redact


class UserError(Exception):
    """Bad input: reported in one line, nothing written, no money spent."""


class StageFailed(Exception):
    """A stage of a video failed; carries the stage name for the record."""

    def __init__(self, stage: str, message: str) -> None:
        message = redact(message)
        super().__init__(f"{stage}: {message}")
        self.stage = stage
        self.message = message


class Skipped(Exception):
    """A video not made on purpose (e.g. the budget would be crossed); carries the reason and the
    stages it used before stopping."""

    used: list[StageOutcome] | None = None
