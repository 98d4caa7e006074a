"""A request checked and resolved before any spend: the actor, the script or audio, the variant."""

from __future__ import annotations

import mimetypes
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from castflow import brand, captions, finish, media
from castflow.brand import Brand
from castflow.db import queries
from castflow.hints import unknown_actor
from castflow.inputs import file_problem
from castflow.models import (
    ActorRef,
    MediaRef,
    Mouth,
    VideoRequest,
    Voice,
)
from castflow.pipeline.errors import UserError
from castflow.runtime import Runtime
from castflow.stages import control_characters, normalise_text, sha256_file, speakable, stage_key


def actor_ref(rt: Runtime, key: str) -> ActorRef:
    """The actor with ``key`` as the pipeline sees it; a UserError when there is none."""

    def read(s: Session) -> tuple[Any, list[str]]:
        found = queries.get_actor(s, key=key)
        known = [] if found is not None else [a.key for a in queries.list_actors(s)]
        return found, known

    actor, known = rt.db_session(read, what="reading an actor")
    if actor is None:
        raise UserError(unknown_actor(key, known))
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
    script: str | None  # what the actor speaks (None: an audio file is played)
    audio_path: Path | None
    audio_sha256: str | None
    audio_seconds: float | None  # the given audio's length (a script's is known once spoken)
    variant: MediaRef | None  # an existing image variant to reuse
    output_key: str  # where the finished video is published (deterministic: reruns overwrite it)
    transcript: str | None = None  # the words heard: the script, or what the audio file says (captions)
    formats: tuple[str, ...] = ()  # export profiles to finish (castflow.finish.PROFILES), besides the source
    brand: Brand | None = None  # the brand kit the export profiles wear
    parts: tuple[str, ...] = ()  # the script spoken in two parts, joined (castflow.pipeline.steps.JOIN)
    product: MediaRef | None = None  # the product the actor holds (its file's path as the key)
    takes: Mapping[str, int] = field(default_factory=dict)  # stage -> seed of its newest take (reroll)


def prepare_video(rt: Runtime, req: VideoRequest, *, actor: ActorRef | None = None) -> PreparedVideo:
    """Validate a request before any spend; raises UserError naming what is wrong. ``actor``: the
    request's actor when the caller already looked it up (a campaign looks each actor up once)."""
    cfg = rt.settings.pipeline
    if actor is None or actor.key != req.actor:
        actor = actor_ref(rt, req.actor)
    script = None
    audio_path = None
    audio_sha = None
    audio_seconds = None
    transcript = None
    parts: tuple[str, ...] = ()
    if req.script is not None and req.script.strip():  # spoken, or the words of the audio file
        bad = control_characters(req.script, allow="\n\r\t")
        if bad:
            raise UserError(f"script contains control characters ({', '.join(bad[:5])}); remove them")
        script = transcript = normalise_text(req.script)
        if not speakable(script):
            raise UserError(
                "script has nothing to say (no letter or digit: only spaces, punctuation or invisible characters)"
            )
        if req.captioned and (lacking := captions.missing_glyphs(script, req.captions)):
            raise UserError(f"captions: {lacking}")
    if req.audio_path is None:
        assert script is not None  # the model guarantees a source
        limit = rt.settings.script_limit(actor.voice.model)
        if len(script) > limit:
            raise UserError(
                f"script is {len(script)} characters long; {actor.voice.model} takes at most {limit}"
            )
        parts = tuple(normalise_text(p) for p in req.speech_parts)
        if any(not speakable(p) for p in parts):
            raise UserError("speech_parts: a part has nothing to say (no letter or digit)")
        if actor.voice.provider not in rt.speech:
            raise UserError(
                f"actor {actor.key!r} speaks with provider {actor.voice.provider!r}, which is not configured "
                f"(configured: {', '.join(sorted(rt.speech))})"
            )
    else:
        script = None  # the audio file is played; the script, if any, is what it says
        audio_path = req.audio_path
        why = file_problem(audio_path)
        if why is not None:
            raise UserError(f"audio file {audio_path} {why}")
        try:
            info = media.decode_audio(audio_path, max_seconds=cfg.max_audio_seconds)
        except media.MediaError as exc:
            raise UserError(f"audio file {audio_path.name}: {exc}") from exc
        if info.seconds < 0.2:
            raise UserError(f"audio file {audio_path.name} is too short ({info.seconds:.2f} s)")
        audio_sha = sha256_file(audio_path)
        audio_seconds = info.seconds
    product = None
    if req.product:
        held = Path(req.product).expanduser()
        if (why := file_problem(held)) is not None:
            raise UserError(f"product image {held.name} {why}")
        product = MediaRef(key=str(held), sha256=sha256_file(held), content_type=_image_type(held.name))
    scene_chars = len(normalise_text(req.scene)) if req.scene else 0
    if scene_chars > (limit := rt.settings.prompt_limit(rt.image.model)):
        raise UserError(f"scene is {scene_chars} characters long; {rt.image.model} takes at most {limit}")
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
        **_identity(req, actor, transcript, audio_sha, product.sha256 if product else None),
    )
    output_key = video_key(actor.key, request_key, req.resolution)
    kit = None
    if req.brand:
        try:
            kit = brand.load_brand(Path(req.brand).expanduser())
        except brand.BrandError as exc:
            raise UserError(str(exc)) from exc
    formats: tuple[str, ...] = (
        req.formats or (kit.formats if kit else ()) or tuple(f for f in cfg.default_formats if f != "source")
    )
    if unknown := [f for f in formats if f not in finish.PROFILES]:
        raise UserError(
            f"CASTFLOW_PIPELINE__DEFAULT_FORMATS: unknown export profile {unknown[0]!r} "
            f"(known: {', '.join(finish.NAMES)})"
        )
    if formats and (why := finish.dressing_problem(kit, req.hook_text, req.cta, formats)):
        raise UserError(why)
    end_seconds = kit.end_card.seconds if kit is not None and kit.end_card is not None else 0.0
    # An uploaded audio's length is known before any spend: a profile it cannot make is refused now.
    known = audio_seconds if formats and audio_seconds is not None else None
    if known is not None and (too := finish.length_problem(formats, known, end_seconds, cfg.format_seconds)):
        raise UserError(f"formats: {too}")
    return PreparedVideo(
        req,
        request_key,
        actor,
        script,
        audio_path,
        audio_sha,
        audio_seconds,
        variant,
        output_key,
        transcript,
        formats,
        kit,
        parts,
        product,
    )


# The request's fields whose form in the key is not their own (the script normalised, the audio by its
# content); every other field of VideoRequest counts as given.
_NORMALISED = ("actor", "script", "audio", "scene", "image_variant_id", "product")


def _identity(
    req: VideoRequest,
    actor: ActorRef,
    script: str | None,
    audio_sha: str | None,
    product_sha: str | None = None,
) -> dict[str, Any]:
    """What makes two requests the same video. Fields beyond the first ones count only when they differ
    from their default, so the keys of videos made before a field existed stay as they were (captions)."""
    identity: dict[str, Any] = {
        "actor": actor.key,
        "script": script if audio_sha is None else None,
        "audio": audio_sha,
        "scene": normalise_text(req.scene) if req.scene else None,
        "variant": req.image_variant_id,
        "resolution": req.resolution,
        "seed": req.seed,
    }
    for name, info in type(req).model_fields.items():
        if name in _NORMALISED or name in identity:
            continue
        value = getattr(req, name)
        if value != info.default:
            identity[name] = value
    if product_sha is not None:
        identity["product"] = product_sha  # by content, not by where the file lies
    if audio_sha is not None and script is not None:
        identity["transcript"] = script  # an audio file's words (its captions)
    if identity.get("captions") == "clean":
        identity["captions"] = True  # its form when captions were yes/no: those videos keep their keys
    return identity


def video_key(actor: str, request_key: str, resolution: str) -> str:
    """The default place of a request's video: one per request and resolution."""
    return f"videos/{actor}/{request_key.removeprefix('video:')[:24]}_{resolution}.mp4"
