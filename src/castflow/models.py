"""Pydantic models passed between castflow's steps (small: keys and hashes, never media bytes)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

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


CaptionStyle = Literal["no", "clean", "bold", "karaoke"]  # castflow.captions.STYLES
FormatName = Literal["tiktok", "reels", "feed-4x5", "square", "landscape"]  # castflow.finish.PROFILES
YES = frozenset({"1", "true", "yes", "y", "on", "x"})
NO = frozenset({"", "0", "false", "no", "n", "off", "none"})


class VideoRequest(Frozen):
    """One video to make: an actor saying a script (or playing an audio file) in a scene."""

    actor: str = Field(min_length=1, description="Actor key from the actor library.")
    script: str | None = Field(
        default=None,
        description="Text the actor says; with an audio file, what that audio says (for its captions).",
    )
    audio: str | None = Field(
        default=None, description="Path of an audio file to lip-sync instead of speaking the script."
    )
    scene: str | None = Field(
        default=None, description="Scene prompt for the image edit; none keeps the portrait."
    )
    image_variant_id: str | None = Field(default=None, description="Reuse an existing image variant.")
    resolution: Resolution = "480p"
    seed: int = Field(default=0, ge=0, le=2**31 - 1)
    captions: CaptionStyle = Field(
        default="no",
        description="Captions burned in, with .srt and .ass files beside the video: no, clean (or yes), "
        "bold (a few big words at a time) or karaoke (the spoken word lit).",
    )

    formats: tuple[FormatName, ...] = Field(
        default=(),
        description="More outputs, each finished for a platform: tiktok, reels, feed-4x5, square, landscape "
        "(joined by |); the render as it came (source) is always kept. Default: the setting "
        "CASTFLOW_PIPELINE__DEFAULT_FORMATS.",
    )

    brand: str | None = Field(
        default=None,
        description="Path of a brand kit (YAML: logo, caption colours and font, hook, end card, music) "
        "for the export profiles.",
    )
    hook_text: str | None = Field(
        default=None, max_length=120, description="A line shown at the top for the first seconds."
    )
    cta: str | None = Field(default=None, max_length=80, description="The end card's call to action.")
    product: str | None = Field(
        default=None,
        description="An image of the product (a file, or a URL a sheet gives) that the actor holds in the scene.",
    )
    ratio: Literal["9:16", "4:5", "1:1", "16:9"] = Field(
        default="9:16",
        description="The scene's aspect ratio: the image edit renders it so and the lip-sync follows the "
        "image (a ratio other than 9:16 needs a scene).",
    )
    speech_parts: tuple[str, ...] = Field(
        default=(),
        description="The script as two parts (a hook and a body, joined by | in a sheet), each spoken on its "
        "own and joined with a short pause: a part shared by many videos is paid once per voice.",
    )

    @field_validator("speech_parts", mode="before")
    @classmethod
    def _parts(cls, value: object) -> object:
        if isinstance(value, str):
            value = value.split("|")
        if isinstance(value, list | tuple):
            return tuple(" ".join(str(v).split()) for v in value)
        return value

    @model_validator(mode="before")
    @classmethod
    def _script_of_parts(cls, data: object) -> object:
        """Parts without a script: the script is the parts, said one after the other."""
        if isinstance(data, dict) and data.get("speech_parts") and not data.get("script"):
            parts = data["speech_parts"]
            parts = parts.split("|") if isinstance(parts, str) else parts
            return {**data, "script": " ".join(str(p).strip() for p in parts)}
        return data

    @field_validator("formats", mode="before")
    @classmethod
    def _format_names(cls, value: object) -> object:
        """``tiktok|square`` (a sheet's cell) as names, each once, in order; ``source`` is implied."""
        if isinstance(value, str):
            value = value.replace(",", "|").split("|")
        if isinstance(value, list | tuple):
            names = [str(v).strip().lower() for v in value]
            return tuple(dict.fromkeys(n for n in names if n and n != "source"))
        return value

    @field_validator("captions", mode="before")
    @classmethod
    def _caption_style(cls, value: object) -> object:
        """yes/no and true/false still work: yes is the clean style."""
        if value is None or isinstance(value, bool):
            return "clean" if value else "no"
        if isinstance(value, str):
            word = value.strip().lower()
            return "clean" if word in YES else "no" if word in NO else word
        return value

    @model_validator(mode="after")
    def _one_source(self) -> VideoRequest:
        has_script = bool(self.script and self.script.strip())
        has_audio = bool(self.audio and self.audio.strip())
        if not has_script and not has_audio:
            raise ValueError("give a script, or an audio file (with its script for captions)")
        if self.scene is not None and self.image_variant_id is not None:
            raise ValueError("give a scene or an image variant, not both")
        if self.ratio != "9:16" and not (self.scene and self.scene.strip()):
            raise ValueError(
                f"ratio: {self.ratio} needs a scene (the image edit renders the scene at that ratio)"
            )
        if self.speech_parts:
            if len(self.speech_parts) != 2 or not all(self.speech_parts):
                raise ValueError("speech_parts: give two parts, a hook and a body, joined by |")
            if has_audio:
                raise ValueError("speech_parts: the parts are spoken; an audio file is played as it is")
            if " ".join(" ".join(self.speech_parts).split()) != " ".join((self.script or "").split()):
                raise ValueError("speech_parts: the parts, one after the other, must be the script")
        return self

    @property
    def audio_path(self) -> Path | None:
        return Path(self.audio).expanduser() if self.audio and self.audio.strip() else None

    @property
    def captioned(self) -> bool:
        return self.captions != "no"

    def ignored(self) -> list[tuple[str, str]]:
        """(field, why) of each option this request asks for that will do nothing: said the same way
        by the CLI, sheets and the generate-video flow."""
        if self.captioned and not (self.script and self.script.strip()):
            return [
                ("captions", "captions need the words: give the audio's script too; this video gets none")
            ]
        return []


class Output(Frozen):
    """One finished output of a video: an export profile's file, or why it failed its profile's check."""

    format: str
    status: Literal["succeeded", "failed"]
    key: str | None = None
    url: str | None = None
    seconds: float | None = None
    error: str | None = None
    music_licence: str | None = None  # the brand kit's note for its music bed, when one plays


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
    outputs: tuple[Output, ...] = ()  # the finishing unit's: one per export profile
    warnings: tuple[str, ...] = ()  # what a check noticed that a person should look at (not a failure)


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
    outputs: tuple[Output, ...] = ()  # the export profiles' files (the video itself is the source)
    warnings: tuple[str, ...] = ()  # what its checks noticed (a product not found in its scene)
