"""The stage units of a video: what each stage reads, its stage key, its price and its run."""

from __future__ import annotations

import functools
import json
import mimetypes
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy.orm import Session

from castflow import media
from castflow.db import queries
from castflow.models import (
    ActorRef,
    MediaRef,
    Mouth,
    Output,
    StageOutcome,
    Voice,
)
from castflow.pipeline.errors import StageFailed
from castflow.pipeline.prepare import PreparedVideo
from castflow.pipeline.runner import run_stage
from castflow.pipeline.unit import Done, Unit
from castflow.portraits import DEFAULT_RATIO, RATIOS, reframe_mouth
from castflow.providers.base import (
    Billing,
    PermanentError,
    ProviderResult,
    QueueImageEditor,
    QueueLipSyncer,
    QueueSpeechSynth,
    SpeechSynth,
)
from castflow.runtime import Runtime
from castflow.stages import normalise_text, sha256_file, stage_key
from castflow.storage import put_bytes


def scene_variant_key(
    rt: Runtime,
    image: MediaRef,
    prompt: str,
    seed: int,
    ratio: str = DEFAULT_RATIO,
    product: MediaRef | None = None,
) -> str:
    held = product.sha256 if product is not None else None
    return _scene_variant_key(rt.image.name, rt.image.model, image.sha256, prompt, seed, ratio, held)


@functools.lru_cache(maxsize=4096)  # a sheet's rows share a few actors and scenes
def _scene_variant_key(
    provider: str, model: str, image: str, prompt: str, seed: int, ratio: str, product: str | None
) -> str:
    more: dict[str, str] = {"ratio": ratio} if ratio != DEFAULT_RATIO else {}  # 9:16 keys stay as they were
    if product is not None:
        more["product"] = product  # the product image's content
    return stage_key(
        "scene_variant", provider=provider, model=model, image=image, prompt=normalise_text(prompt), seed=seed,
        **more,
    )  # fmt: skip


def scene_variant(
    rt: Runtime,
    actor: ActorRef,
    prompt: str,
    seed: int,
    ratio: str = DEFAULT_RATIO,
    product: MediaRef | None = None,
) -> StageOutcome:
    """The actor's portrait edited into the scene ``prompt`` at ``ratio``, holding ``product`` when given
    (its image is the edit's second input; ``key``: the file's path). Also recorded as an image variant."""
    key = scene_variant_key(rt, actor.image, prompt, seed, ratio, product)
    held = Path(product.key) if product is not None else None
    framed = ratio if ratio != DEFAULT_RATIO else None  # the editor's own default frame for 9:16
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
                ratio=framed,
                product=held,
                product_url=None,
            ),
            collect=lambda rid, wd: editor.collect(rid, workdir=wd),
        )
    else:
        outcome = stage(
            call=lambda wd: editor.edit(source(), text, seed=seed, workdir=wd, ratio=framed, product=held)
        )
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


def speech_key(voice: Voice, text: str, take: int = 0) -> str:
    more = {"take": take} if take else {}  # a re-rolled take: a new job (the first take's key as it was)
    return stage_key(
        "speech", provider=voice.provider, model=voice.model, voice=voice.voice_id, text=normalise_text(text),
        **more,
    )  # fmt: skip


def speech(rt: Runtime, actor: ActorRef, script: str, take: int = 0) -> StageOutcome:
    """The script spoken in the actor's voice (``take``: a new take of it, re-rolled)."""
    synth = rt.speech.get(actor.voice.provider)
    if synth is None:
        raise PermanentError(f"speech provider {actor.voice.provider!r} is not configured")
    text = normalise_text(script)
    voice = actor.voice
    stage = functools.partial(
        run_stage,
        rt,
        stage="speech",
        key=speech_key(voice, text, take),
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


TIMING_MODEL = "timing-v1"  # bump when the way words are timed changes


def timing_key(audio: MediaRef, text: str) -> str:
    from castflow.align import ALIGN_MODEL

    return stage_key(
        "timing",
        provider="local",
        model=f"{TIMING_MODEL}+{ALIGN_MODEL}",
        audio=audio.sha256,
        text=normalise_text(text),
    )


def word_timing(rt: Runtime, audio: StageOutcome, text: str) -> StageOutcome:
    """When each word of ``text`` is heard in ``audio``, as a JSON file (``audio_seconds``, ``source``,
    ``words``: each word with its start and end in seconds). The speech engine's own timings when its
    stage recorded them (eSpeak's word events, a TTS's timestamps); otherwise the script aligned to the
    audio (castflow.align: an uploaded audio, a TTS without timestamps). Free, and kept as a stage."""

    def call(workdir: Path) -> ProviderResult:
        run = rt.db(
            lambda c: queries.stage_run_state(c, stage_key=audio.stage_key), what="reading word timings"
        )
        words = (run.meta or {}).get("words") if run is not None else None
        source = "speech"
        if not words:
            from castflow import align

            sound = media.decode_audio(rt.storage.local_path(audio.output.key))
            words, source = align.align_words(text, sound), "aligned"
        out = workdir / "words.json"
        body = {"audio_seconds": audio.output.seconds, "source": source, "words": words}
        out.write_text(json.dumps(body, ensure_ascii=False), encoding="utf-8")
        return ProviderResult(out, "application/json", Billing(0, "words"), meta={"source": source})

    return run_stage(
        rt,
        stage="timing",
        key=timing_key(audio.output, text),
        provider="local",
        model=TIMING_MODEL,
        call=call,
    )


def read_words(rt: Runtime, words: StageOutcome) -> list[dict[str, object]]:
    body = json.loads(rt.storage.local_path(words.output.key).read_text(encoding="utf-8"))
    return list(body.get("words") or [])


CAPTIONS_MODEL = "captions-v2"  # bump when the look or the timing rules change


def captions_key(video: MediaRef, text: str, style: str = "clean", words: MediaRef | None = None) -> str:
    extra: dict[str, object] = (
        {}
        if style == "clean" and words is None
        else {"style": style, "words": words.sha256 if words else None}
    )
    return stage_key(
        "captions",
        provider="local",
        model=CAPTIONS_MODEL,
        video=video.sha256,
        text=normalise_text(text),
        **extra,
    )


def add_captions(
    rt: Runtime,
    video: StageOutcome,
    audio: StageOutcome,
    script: str,
    key: str,
    *,
    style: str = "clean",
    words: StageOutcome | None = None,
) -> StageOutcome:
    """The video with the script burned in as captions in ``style``, timed by the ``words`` stage (or by
    the audio's voiced span); the matching ``.srt`` and ``.ass`` are stored beside the video's ``key``
    (named in the outcome's ``files``)."""
    from castflow import captions

    sound = media.decode_audio(rt.storage.local_path(audio.output.key))
    source = rt.storage.local_path(video.output.key)
    info = media.probe(source)
    if not info.width or not info.height:
        raise StageFailed("captions", f"{source.name} has no video stream to caption")
    size = (info.width, info.height)
    layout, cues = captions.build(style, script, read_words(rt, words) if words else [], sound, size)

    def call(workdir: Path) -> ProviderResult:
        out = captions.burn(source, sound, layout, cues, workdir / "captioned.mp4")
        return ProviderResult(out, "video/mp4", Billing(0, "videos"), seconds=media.probe(out).duration)

    outcome = run_stage(
        rt,
        stage="captions",
        key=captions_key(video.output, script, style, words.output if words else None),
        provider="local",
        model=CAPTIONS_MODEL,
        call=call,
        meta={"cues": len(cues), "style": style},
    )
    stem = key.removesuffix(".mp4")
    srt_key = _publish_text(rt, stem + ".srt", captions.srt(cues), "application/x-subrip")
    ass_key = _publish_text(rt, stem + ".ass", captions.ass(layout, cues, size), "text/x-ssa")
    return outcome.model_copy(update={"files": {"srt": srt_key, "ass": ass_key}})


FINISH_MODEL = "finish-v1"  # bump when a profile's encoding or the fill changes


def finish_key(
    video: MediaRef,
    profile: str,
    fill: str,
    style: str,
    text: str | None,
    words: MediaRef | None,
    dressing: dict[str, str | None] | None = None,
) -> str:
    extra = {k: v for k, v in (dressing or {}).items() if v}  # a brand's fingerprint, the hook, the CTA
    return stage_key(
        "finish",
        provider="local",
        model=FINISH_MODEL,
        video=video.sha256,
        profile=profile,
        fill=fill,
        captions=style,
        text=normalise_text(text) if text and style != "no" else None,
        words=words.sha256 if words and style != "no" else None,
        **extra,
    )


def finish_outputs(rt: Runtime, video: PreparedVideo, done: Done) -> StageOutcome:
    """The checked render finished for each of the video's export profiles (castflow.finish), each
    checked against its profile's spec and published as ``<name>_<profile>.mp4`` beside the video. An
    output that fails its check is recorded failed with the reason; the row and its paid stages stand.
    A finish found done was checked when it was made: a rerun neither encodes nor reads it again."""
    from castflow import finish

    checked, audio, words = done["checked"], done["audio"], done.get("words")
    style = video.request.captions if video.transcript else "no"
    word_list = read_words(rt, words) if words is not None and style != "no" else []
    kit = video.brand
    fill = kit.fill if kit is not None else rt.settings.pipeline.fill
    hook, cta = video.request.hook_text, video.request.cta
    stem = video.output_key.removesuffix(".mp4")
    mixed: dict[int, Any] = {}  # the sound, made once for all the profiles (the same for each)
    outputs: list[Output] = []
    for name in video.formats:
        profile = finish.profile(name, rt.settings.pipeline.format_seconds)
        spec = finish.Finish(profile, video.transcript, style, word_list, fill, kit, hook, cta)
        limits = rt.settings.pipeline.format_seconds
        if too := finish.length_problem([name], _audio_seconds(done), spec.end_seconds, limits):
            outputs.append(Output(format=name, status="failed", error=too))  # nothing encoded for it
            continue

        def call(workdir: Path, spec: finish.Finish = spec) -> ProviderResult:
            speech = rt.storage.local_path(audio.output.key)
            rate = spec.profile.audio_rate
            if rate not in mixed:
                mixed[rate] = finish.mix(spec, speech, rate)
            source = rt.storage.local_path(checked.output.key)
            out = finish.render(source, speech, spec, workdir / "finished.mp4", sound=mixed[rate])
            return ProviderResult(out, "video/mp4", Billing(0, "videos"), seconds=media.probe(out).duration)

        try:
            dressing = {"brand": kit.fingerprint if kit else None, "hook": hook, "cta": cta}
            key = finish_key(
                checked.output, name, fill, style, video.transcript, words.output if words else None, dressing
            )
            made = run_stage(
                rt,
                stage="finish",
                key=key,
                provider="local",
                model=FINISH_MODEL,
                call=call,
                meta={"format": name},
            )
            problems = []
            if made.produced:
                problems = finish.check(
                    rt.storage.local_path(made.output.key),
                    profile,
                    audio_seconds=_audio_seconds(done) + spec.end_seconds,
                    tolerance=rt.settings.pipeline.qc_duration_tolerance_s,
                )
        except (media.MediaError, OSError, ValueError) as exc:
            outputs.append(Output(format=name, status="failed", error=f"finishing failed: {exc}"))
            continue
        if problems:
            error = f"{name} check failed: {'; '.join(problems)}"
            rt.finished_stages.forget(key)  # free and deterministic: a rerun (other settings) tries again
            rt.db(functools.partial(queries.fail_stage_run, stage_key=key, error=error))
            outputs.append(Output(format=name, status="failed", error=error))
            continue
        published = publish(rt, made, f"{stem}_{name}.mp4")
        licence = kit.music.licence if kit is not None and kit.music is not None else None
        outputs.append(
            Output(
                format=name,
                status="succeeded",
                key=published.output.key,
                url=published.url,
                seconds=made.output.seconds,
                music_licence=licence,
            )
        )
    return checked.model_copy(update={"outputs": tuple(outputs)})


def quality_check(
    rt: Runtime, video: StageOutcome, *, audio_seconds: float, resolution: str, ratio: str = DEFAULT_RATIO
) -> None:
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
        ratio=(RATIOS[ratio], rt.settings.pipeline.qc_ratio_tolerance),
    )
    if problems:
        message = "; ".join(problems)
        if not rt.lipsync.price(audio_seconds, resolution):  # a free render: the next run renders anew
            rt.finished_stages.forget(video.stage_key)
            error = f"quality check failed: {message}"
            rt.db(functools.partial(queries.fail_stage_run, stage_key=video.stage_key, error=error))
        raise StageFailed("qc", message)


def _publish_text(rt: Runtime, key: str, text: str, content_type: str) -> str:
    """Store a small text file (an SRT, word timings) at ``key``; returns the key."""
    put_bytes(rt.storage, key, text.encode("utf-8"), content_type)
    return key


def publish(rt: Runtime, video: StageOutcome, key: str) -> StageOutcome:
    """Copy the checked video to its deterministic key; the outcome names the key and its URL."""
    if rt.storage.exists(key) and sha256_file(rt.storage.local_path(key)) == video.output.sha256:
        url = rt.storage.url(key)
    else:
        url = rt.storage.put_file(key, rt.storage.local_path(video.output.key), "video/mp4")
    published = video.output.model_copy(update={"key": key})
    return StageOutcome(stage="publish", stage_key=key, output=published, reused=True, url=url)


def given_image(prepared: PreparedVideo) -> StageOutcome:
    """The image when no scene is asked: the chosen variant or the actor's portrait (nothing to pay)."""
    image = prepared.variant or prepared.actor.image
    return StageOutcome(stage="scene_variant", stage_key=image.sha256, output=image, reused=True)


# ---- the units ---------------------------------------------------------------------------------------
# Each unit's functions take (runtime, video, outcomes so far by role); a new stage is a unit here and one
# line in castflow.pipeline.graph.GRAPH.


# Speech is guessed at this many characters per second; slower than typical TTS (~14-16), so a lip-sync
# estimate errs high. A budget checks again with the true length before the lip-sync starts.
ESTIMATE_CHARS_PER_SECOND = 12.0


def _scene(video: PreparedVideo, rt: Runtime | None = None) -> str:
    """The edit's prompt: the row's scene; with a product, the product prompt around it (a setting)."""
    if video.product is not None and rt is not None:
        scene = (video.request.scene or "").strip().rstrip(".") or "The same person in the same place"
        return rt.settings.pipeline.product_prompt.format(scene=scene)
    assert video.request.scene is not None  # the unit applies only then
    return video.request.scene


def _script(video: PreparedVideo) -> str:
    assert video.script is not None  # the unit applies only then
    return video.script


def _synth(rt: Runtime, video: PreparedVideo) -> SpeechSynth | QueueSpeechSynth | None:
    return rt.speech.get(video.actor.voice.provider)


def _audio_seconds(done: Done) -> float:
    seconds = done["audio"].output.seconds
    assert seconds is not None  # speech and ingest both record the true length
    return seconds


def _captioned(video: PreparedVideo) -> bool:
    return video.request.captioned and video.transcript is not None


def _transcript(video: PreparedVideo) -> str:
    assert video.transcript is not None  # the unit applies only then
    return video.transcript


SCENE_VARIANT = Unit(
    name="scene_variant",
    makes="image",
    task="scene-variant",
    applies=lambda v: bool(v.request.scene) or v.product is not None,
    key=lambda rt, v, _d: scene_variant_key(
        rt, v.actor.image, _scene(v, rt), v.takes.get("scene", v.request.seed), v.request.ratio, v.product
    ),
    price=lambda rt, _v, _d: rt.image.price(),
    run=lambda rt, v, _d: scene_variant(
        rt, v.actor, _scene(v, rt), v.takes.get("scene", v.request.seed), v.request.ratio, v.product
    ),
)

PORTRAIT = Unit(  # no scene asked: the chosen variant or the actor's portrait, nothing to run or pay
    name="portrait",
    makes="image",
    applies=lambda v: not v.request.scene and v.product is None,
    run=lambda _rt, v, _d: given_image(v),
    ledger=False,
)

SPEECH = Unit(
    name="speech",
    makes="audio",
    task="speech",
    applies=lambda v: v.script is not None and not v.parts,
    key=lambda _rt, v, _d: speech_key(v.actor.voice, _script(v), v.takes.get("speech", 0)),
    price=lambda rt, v, _d: s.price(v.actor.voice, len(_script(v))) if (s := _synth(rt, v)) else 0.0,
    run=lambda rt, v, _d: speech(rt, v.actor, _script(v), v.takes.get("speech", 0)),
    guess_seconds=lambda v: len(_script(v)) / ESTIMATE_CHARS_PER_SECOND,
)


def _speech_part(n: int, role: str) -> Unit:
    """Part ``n`` of a script spoken in parts: a speech stage of its own, shared by every video that says
    the same part in the same voice (a matrix's hook across its bodies)."""
    return Unit(
        name=f"speech_part{n + 1}",
        makes=role,
        task=f"speech-part-{n + 1}",
        applies=lambda v: len(v.parts) > n,
        key=lambda _rt, v, _d: speech_key(v.actor.voice, v.parts[n], v.takes.get("speech", 0)),
        price=lambda rt, v, _d: s.price(v.actor.voice, len(v.parts[n])) if (s := _synth(rt, v)) else 0.0,
        run=lambda rt, v, _d: speech(rt, v.actor, v.parts[n], v.takes.get("speech", 0)),
        guess_seconds=lambda v: len(v.parts[n]) / ESTIMATE_CHARS_PER_SECOND,
    )


SPEECH_PART1 = _speech_part(0, "audio_part1")
SPEECH_PART2 = _speech_part(1, "audio_part2")

JOIN_MODEL = "join-v1"  # bump when the way parts are joined changes
JOIN_PAUSE_S = 0.25  # between the parts: a breath, as a speaker pauses after a hook


def join_key(first: MediaRef, second: MediaRef) -> str:
    return stage_key(
        "speech_join", provider="local", model=JOIN_MODEL, first=first.sha256, second=second.sha256,
        pause=JOIN_PAUSE_S,
    )  # fmt: skip


def _stage_state(c: Any, *, key: str) -> Any:
    return queries.stage_run_state(c, stage_key=key)


def join_speech(rt: Runtime, first: StageOutcome, second: StageOutcome) -> StageOutcome:
    """The two parts one after the other with a short pause, as one audio; their words (when their speech
    stages recorded them) follow, the second part's moved by the first's length and the pause. Free."""

    def call(workdir: Path) -> ProviderResult:
        sounds = [media.decode_audio(rt.storage.local_path(p.output.key)) for p in (first, second)]
        pause = np.zeros(int(JOIN_PAUSE_S * sounds[0].rate), dtype=np.float32)
        samples = np.concatenate([sounds[0].samples, pause, sounds[1].samples])
        out = workdir / "speech.wav"
        media.write_wav(out, (np.clip(samples, -1.0, 1.0) * 32767).astype(np.int16), sounds[0].rate)
        offset = len(sounds[0].samples) / sounds[0].rate + JOIN_PAUSE_S
        words: list[Any] = []
        for part, shift in ((first, 0.0), (second, offset)):
            run = rt.db(functools.partial(_stage_state, key=part.stage_key), what="reading words")
            found = (run.meta or {}).get("words") if run is not None else None
            if not found:
                words = []
                break
            words += [{**w, "start": round(float(w["start"]) + shift, 3), "end": round(float(w["end"]) + shift, 3)}
                      for w in found]  # fmt: skip
        meta: dict[str, Any] = {"words": words} if words else {}
        return ProviderResult(
            out, "audio/wav", Billing(0, "files"), seconds=len(samples) / sounds[0].rate, meta=meta
        )

    return run_stage(
        rt,
        stage="speech_join",
        key=join_key(first.output, second.output),
        provider="local",
        model=JOIN_MODEL,
        call=call,
    )


JOIN = Unit(
    name="speech_join",
    makes="audio",
    task="speech-join",
    needs=("audio_part1", "audio_part2"),
    applies=lambda v: bool(v.parts),
    key=lambda _rt, _v, d: join_key(d["audio_part1"].output, d["audio_part2"].output),
    run=lambda rt, _v, d: join_speech(rt, d["audio_part1"], d["audio_part2"]),
    guess_seconds=lambda v: sum(len(p) for p in v.parts) / ESTIMATE_CHARS_PER_SECOND + JOIN_PAUSE_S,
)


def _ingest(rt: Runtime, video: PreparedVideo, _done: Done) -> StageOutcome:
    assert video.audio_path is not None
    assert video.audio_sha256 is not None
    return ingest_audio(rt, video.audio_path, video.audio_sha256)


AUDIO_INGEST = Unit(
    name="audio_ingest",
    makes="audio",
    task="audio-ingest",
    applies=lambda v: v.script is None,
    key=lambda _rt, v, _d: audio_ingest_key(v.audio_sha256 or ""),
    run=_ingest,
    guess_seconds=lambda v: v.audio_seconds,
)

LIPSYNC = Unit(
    name="lipsync",
    makes="video",
    task="lipsync",
    needs=("image", "audio"),
    key=lambda rt, v, d: lipsync_key(
        rt, d["image"].output, d["audio"].output, v.request.resolution, v.takes.get("lipsync", v.request.seed)
    ),
    price=lambda rt, v, d: rt.lipsync.price(_audio_seconds(d), v.request.resolution),
    run=lambda rt, v, d: lipsync(
        rt,
        d["image"].output,
        d["audio"].output,
        resolution=v.request.resolution,
        seed=v.takes.get("lipsync", v.request.seed),
        mouth=_mouth(rt, v),
    ),
)


def _mouth(rt: Runtime, video: PreparedVideo) -> Mouth | None:
    """The actor's mouth in the image lip-synced: moved as the embedded editor reframes the portrait for a
    ratio other than 9:16 (castflow.portraits.reframe)."""
    mouth = video.actor.mouth
    if mouth is None or video.request.ratio == DEFAULT_RATIO:
        return mouth
    from PIL import Image

    with Image.open(rt.storage.local_path(video.actor.image.key)) as portrait:
        return reframe_mouth(mouth, portrait.size, video.request.ratio)


def _check(rt: Runtime, video: PreparedVideo, done: Done) -> StageOutcome:
    quality_check(
        rt,
        done["video"],
        audio_seconds=_audio_seconds(done),
        resolution=video.request.resolution,
        ratio=video.request.ratio,
    )
    return done["video"]


def check_product(rt: Runtime, video: PreparedVideo, done: Done) -> StageOutcome:
    """Whether the product can be seen in the scene made with it (castflow.product_check): a warning on
    the video when it cannot, never a failure (the edit is paid for; a person should look)."""
    from castflow.product_check import find_product

    assert video.product is not None  # the unit applies only then
    image = done["image"]
    match = find_product(rt.storage.local_path(image.output.key), Path(video.product.key))
    warned = () if match.found or not match.checked else (match.describe(),)
    return image.model_copy(update={"stage": "product_check", "warnings": warned})


PRODUCT_CHECK = Unit(
    name="product_check",
    makes="product_check",
    task="product-check",
    needs=("image",),
    applies=lambda v: v.product is not None,
    run=check_product,
    ledger=False,
)

QUALITY_CHECK = Unit(
    name="qc", makes="checked", task="quality-check", needs=("video", "audio"), run=_check, ledger=False
)

TIMING = Unit(
    name="timing",
    makes="words",
    task="timing",
    needs=("audio",),
    applies=lambda v: v.transcript is not None,
    key=lambda _rt, v, d: timing_key(d["audio"].output, _transcript(v)),
    run=lambda rt, v, d: word_timing(rt, d["audio"], _transcript(v)),
)

CAPTIONS = Unit(
    name="captions",
    makes="video",
    task="captions",
    needs=("checked", "audio", "words"),
    applies=_captioned,
    # No Prefect cache key: the run also writes this video's SRT and ASS beside its output key, which a
    # cache hit (keyed by the stage alone) would skip; the stage itself is reused through its stage_run row.
    run=lambda rt, v, d: add_captions(
        rt, d["checked"], d["audio"], _transcript(v), v.output_key, style=v.request.captions, words=d["words"]
    ),
)


def export_words(rt: Runtime, video: PreparedVideo, done: Done) -> StageOutcome:
    """The timing stage's words as ``<name>.words.json`` beside the video: each word with its start and
    end in seconds, and where they came from (``speech``: the engine's own; ``aligned``)."""
    words = done["words"]
    key = video.output_key.removesuffix(".mp4") + ".words.json"
    if not (rt.storage.exists(key) and sha256_file(rt.storage.local_path(key)) == words.output.sha256):
        rt.storage.put_file(key, rt.storage.local_path(words.output.key), "application/json")
    return words.model_copy(update={"files": {"words": key}})


WORDS = Unit(
    name="words",
    makes="words",
    needs=("words",),  # written beside the video's output key; last in the graph, after publish
    applies=lambda v: v.transcript is not None,
    run=export_words,
    ledger=False,
)

FINISH = Unit(
    name="finish",
    makes="outputs",
    task="finish",
    needs=("checked", "audio", "words"),  # words: when the video has a transcript (its captions)
    applies=lambda v: bool(v.formats),
    run=finish_outputs,
    ledger=False,  # one stage per profile, each in the ledger as stage "finish" (free)
)

PUBLISH = Unit(
    name="publish",
    makes="published",
    task="publish",
    needs=("video", "checked"),
    run=lambda rt, v, d: publish(rt, d["video"], v.output_key),
    ledger=False,
)
