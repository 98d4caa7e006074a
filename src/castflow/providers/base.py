"""Protocols every provider implements, and the one error tree of castflow's providers."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from castflow.models import Mouth, Voice
from castflow.redact import redact


class ProviderError(Exception):
    """A provider call failed; ``transient`` says whether trying again may help."""

    transient: bool = False

    def __init__(
        self, message: str, *, provider: str = "", request_id: str | None = None, job_failed: bool = False
    ) -> None:
        # Providers quote what they were given (signed input URLs with their tokens): the message is
        # cleaned here, once, so no sink (task states in Prefect, logs, the database) ever holds it raw.
        super().__init__(redact(message))
        self.provider = provider
        self.request_id = request_id
        # The provider's job itself ended in failure: a retry must submit anew, not re-attach to it.
        self.job_failed = job_failed


class TransientError(ProviderError):
    """Timeouts, connection errors, 429, 5xx: worth retrying with backoff."""

    transient = True


class PermanentError(ProviderError):
    """Validation, content policy, bad input: retrying would only spend money."""


class RequestNotFound(PermanentError):
    """The provider no longer knows a recorded request (expired, deleted, or another account's)."""


class SubmitOutcomeUnknown(PermanentError):
    """A submit was sent but its answer was lost (a read timeout, a dropped connection).

    The provider may have created (and will bill) the job, and neither fal nor WaveSpeed offers an
    idempotency key, so castflow does not resubmit on its own: the stage fails with this message and
    a deliberate rerun submits again.
    """

    def __init__(self, provider: str, what: str) -> None:
        super().__init__(
            f"{provider}: submit outcome unknown ({what}); not retried automatically, since the job may "
            "exist and be billed. Find it in the provider's dashboard, then `castflow stages resolve` "
            "(see `castflow stages unknown`)",
            provider=provider,
        )


@dataclass(frozen=True)
class Billing:
    """What a call is billed on: units and their name (images, characters, seconds)."""

    units: float
    unit: str
    cost_usd: float = 0.0


@dataclass
class ProviderResult:
    """A finished provider job: the local output file and the facts worth recording."""

    path: Path
    content_type: str
    billing: Billing
    request_id: str | None = None
    seconds: float | None = None
    meta: dict[str, Any] = field(default_factory=dict)


class ImageEditor(Protocol):
    name: str
    model: str

    def price(self) -> float:
        """What one edit costs (USD); 0 for the embedded editor."""
        ...

    def edit(
        self,
        image: Path,
        prompt: str,
        *,
        seed: int,
        workdir: Path,
        ratio: str | None = None,
        product: Path | None = None,
    ) -> ProviderResult: ...


@runtime_checkable
class QueueImageEditor(Protocol):
    """An image editor behind a queue: submit returns the request id, collect waits for it."""

    name: str
    model: str

    def price(self) -> float: ...

    def submit_edit(
        self,
        image: Path,
        prompt: str,
        *,
        seed: int,
        image_url: str | None = None,
        ratio: str | None = None,
        product: Path | None = None,
        product_url: str | None = None,
    ) -> str:
        """Queue the edit; ``image_url`` (a URL of our storage) saves uploading ``image``."""
        ...

    def collect(self, request_id: str, *, workdir: Path) -> ProviderResult: ...


@runtime_checkable
class QueueSpeechSynth(Protocol):
    name: str

    def price(self, voice: Voice, characters: int) -> float: ...

    def submit_speech(self, text: str, voice: Voice) -> str: ...

    def collect(self, request_id: str, text: str, voice: Voice, *, workdir: Path) -> ProviderResult: ...


class SpeechSynth(Protocol):
    name: str

    def price(self, voice: Voice, characters: int) -> float:
        """What speaking ``characters`` in ``voice`` costs (USD); 0 for the embedded voice."""
        ...

    def synthesize(self, text: str, voice: Voice, *, workdir: Path) -> ProviderResult: ...


@runtime_checkable
class QueueLipSyncer(Protocol):
    """A lip-sync service behind a queue: submit returns the request id, collect waits for it."""

    name: str
    model: str

    def submit_render(
        self,
        image: Path,
        audio: Path,
        *,
        resolution: str,
        seed: int,
        image_url: str | None = None,
        audio_url: str | None = None,
    ) -> str:
        """Queue the render; the URLs (of our storage) save uploading the files."""
        ...

    def price(self, audio_seconds: float, resolution: str) -> float: ...

    def collect(
        self, request_id: str, *, audio_seconds: float, resolution: str, workdir: Path
    ) -> ProviderResult: ...

    def size_problem(self, width: int, height: int, resolution: str) -> str | None: ...


class LipSyncer(Protocol):
    name: str
    model: str

    def price(self, audio_seconds: float, resolution: str) -> float:
        """What a render of ``audio_seconds`` costs at ``resolution`` (USD, by the provider's billing
        rule: what its stage will record); 0 for the embedded renderer."""
        ...

    def size_problem(self, width: int, height: int, resolution: str) -> str | None:
        """Why a rendered frame size is wrong for ``resolution`` (None when it is right)."""
        ...

    def render(
        self,
        image: Path,
        audio: Path,
        *,
        resolution: str,
        seed: int,
        mouth: Mouth | None,
        workdir: Path,
    ) -> ProviderResult: ...
