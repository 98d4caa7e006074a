"""Pydantic models passed between castflow's steps (small: keys and hashes, never media bytes)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from castflow.settings import Resolution


class Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Voice(Frozen):
    """An actor's fixed voice: which provider and model speak, with which voice id."""

    provider: str = Field(min_length=1, description="Speech provider, e.g. 'local' or 'fal'.")
    model: str = Field(
        min_length=1, description="Model id, e.g. 'espeak-ng' or 'fal-ai/elevenlabs/tts/multilingual-v2'."
    )
    voice_id: str = Field(min_length=1, description="The provider's voice id.")


class Mouth(Frozen):
    """Mouth position as fractions of the portrait's width and height."""

    x: float = Field(ge=0, le=1)
    y: float = Field(ge=0, le=1)
    width: float = Field(gt=0, le=1)


class MediaRef(Frozen):
    """A file in castflow's storage, identified by key and content hash."""

    key: str
    sha256: str
    content_type: str
    seconds: float | None = None


class ActorRef(Frozen):
    """What the pipeline needs of an actor."""

    key: str
    name: str
    image: MediaRef
    voice: Voice
    mouth: Mouth | None = None


class VideoRequest(Frozen):
    """One video to make: an actor saying a script (or playing an audio file) in a scene."""

    actor: str = Field(min_length=1, description="Actor key from the actor library.")
    script: str | None = Field(default=None, description="Text the actor says (or give audio).")
    audio: str | None = Field(
        default=None, description="Path of an audio file to lip-sync instead of a script."
    )
    scene: str | None = Field(
        default=None, description="Scene prompt for the image edit; none keeps the portrait."
    )
    image_variant_id: str | None = Field(default=None, description="Reuse an existing image variant.")
    resolution: Resolution = "480p"
    seed: int = Field(default=0, ge=0, le=2**31 - 1)
    captions: bool = Field(default=False, description="Burn the script in as captions, and write an SRT.")

    @model_validator(mode="after")
    def _one_source(self) -> VideoRequest:
        has_script = bool(self.script and self.script.strip())
        has_audio = bool(self.audio and self.audio.strip())
        if has_script == has_audio:
            raise ValueError("give exactly one of script and audio")
        if self.scene is not None and self.image_variant_id is not None:
            raise ValueError("give a scene or an image variant, not both")
        return self

    @property
    def audio_path(self) -> Path | None:
        return Path(self.audio).expanduser() if self.audio else None

    def ignored(self) -> list[tuple[str, str]]:
        """(field, why) of each option this request asks for that will do nothing: said the same way
        by the CLI, sheets and the generate-video flow."""
        if self.captions and not (self.script and self.script.strip()):
            return [("captions", "captions need a script; this audio video gets none")]
        return []


StageName = str  # a unit of castflow.pipeline.graph.GRAPH (scene_variant, speech, lipsync, ...)


class StageOutcome(Frozen):
    """The result of one stage: its key, its output in storage, whether it was reused, and its cost."""

    stage: StageName
    stage_key: str
    output: MediaRef
    reused: bool = False  # not paid for by this call (done before, or another payer's job re-attached to)
    cost_usd: float = 0.0
    produced: bool = False  # this call fetched the output (ran the stage, or re-attached to its job)
    url: str | None = None  # where the output can be fetched (the publish unit's)
    files: dict[str, str] = Field(default_factory=dict)  # files stored beside it, by kind (captions: srt)


class VideoResult(Frozen):
    """What ``generate_video`` returns."""

    video_id: str
    actor: str
    status: Literal["succeeded", "failed"]
    video_key: str | None = None
    video_url: str | None = None
    audio_seconds: float | None = None
    video_seconds: float | None = None
    cost_usd: float = 0.0
    reused_stages: int = 0
    failed_stage: str | None = None
    error: str | None = None
