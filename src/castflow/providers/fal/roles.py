"""fal in castflow's roles: scene variants (nano banana edit) and speech (TTS in the actor's voice)."""

from __future__ import annotations

import logging
import mimetypes
from pathlib import Path
from typing import Any

from castflow import media
from castflow.models import Voice
from castflow.providers.base import (
    Billing,
    PermanentError,
    ProviderResult,
)
from castflow.providers.fal.client import (
    AUDIO_SUFFIXES,
    PROVIDER,
    FalClient,
    FalStatus,
)
from castflow.providers.fal.timestamps import (
    DEFAULT_MIN_MATCH,
    describe,
    is_elevenlabs_tts,
    words_from_output,
)
from castflow.providers.loop import run_sync

log = logging.getLogger(__name__)


class FalImageEditor:
    """Scene variants with nano banana edit: the portrait uploaded to fal's CDN, 9:16 PNG out."""

    name = PROVIDER

    def __init__(
        self, client: FalClient, *, model: str, aspect_ratio: str, price_per_image: float, deadline_s: float
    ) -> None:
        self.client = client
        self.model = model
        self.aspect_ratio = aspect_ratio
        self.price_per_image = price_per_image
        self.deadline_s = deadline_s

    def price(self) -> float:
        """One edit's price (fal bills nano banana per image)."""
        return self.price_per_image

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
        async def go() -> str:
            url = image_url or await self.client.upload_file(image)
            urls = [url]
            if product is not None:  # nano banana edits with several images: the portrait, then the product
                urls.append(product_url or await self.client.upload_file(product))
            payload = {
                "prompt": prompt,
                "image_urls": urls,
                "num_images": 1,
                "aspect_ratio": ratio or self.aspect_ratio,  # a row's ratio, else the setting
                "output_format": "png",
                "seed": seed,
            }
            return (await self.client.submit(self.model, payload)).request_id

        return run_sync(go())

    def collect(self, request_id: str, *, workdir: Path) -> ProviderResult:
        async def go() -> ProviderResult:
            handle = self.client.handle_for(self.model, request_id)
            output, headers, status = await self.client.wait(handle, deadline_s=self.deadline_s)
            images = output.get("images") or []
            if not images or not images[0].get("url"):
                raise PermanentError(
                    "fal: the edit returned no image", provider=PROVIDER, request_id=request_id
                )
            path = await self.client.download(images[0]["url"], workdir / "variant.png")
            return ProviderResult(
                path,
                "image/png",
                Billing(1, "images", self.price_per_image),
                request_id=request_id,
                meta={
                    "inference_time": status.inference_time,
                    "billable_units": headers.get("x-fal-billable-units"),
                },
            )

        return run_sync(go())


class FalSpeech:
    """Text to speech on fal, in the actor's voice: ElevenLabs (``voice``) and MiniMax (``voice_setting``).

    ElevenLabs models are asked for word timestamps (``timestamps``, unless turned off); those that fit
    the script are recorded as the stage's ``meta["words"]``, as the embedded eSpeak engine records its
    own. Timestamps missing or not understood never fail the stage: it records no words (and, when they
    were there but unreadable, their structure as ``meta["timestamps_unread"]``)."""

    name = PROVIDER

    def __init__(
        self,
        client: FalClient,
        *,
        prices: dict[str, float],
        deadline_s: float,
        timestamps: bool = True,
        timestamps_min_match: float = DEFAULT_MIN_MATCH,
    ) -> None:
        self.client = client
        self.prices = prices
        self.deadline_s = deadline_s
        self.timestamps = timestamps
        self.timestamps_min_match = timestamps_min_match

    @staticmethod
    def payload(model: str, text: str, voice_id: str, *, timestamps: bool = False) -> dict[str, Any]:
        """The model's input; ``timestamps`` asks an ElevenLabs model for word timestamps."""
        if "/minimax/" in model:
            key = "text" if "speech-02" in model else "prompt"
            return {key: text, "voice_setting": {"voice_id": voice_id}, "output_format": "url"}
        body: dict[str, Any] = {"text": text, "voice": voice_id}
        if timestamps and is_elevenlabs_tts(model):
            body["timestamps"] = True
        return body

    def price(self, voice: Voice, characters: int) -> float:
        """The price of speaking ``characters`` in ``voice`` (fal bills TTS per 1,000 characters)."""
        return round(self.prices.get(voice.model, 0.0) * characters / 1000, 6)

    def submit_speech(self, text: str, voice: Voice) -> str:
        async def go() -> str:
            return (
                await self.client.submit(
                    voice.model,
                    self.payload(voice.model, text, voice.voice_id, timestamps=self.timestamps),
                )
            ).request_id

        return run_sync(go())

    def collect(self, request_id: str, text: str, voice: Voice, *, workdir: Path) -> ProviderResult:
        async def go() -> tuple[Path, str, FalStatus, dict[str, Any]]:
            handle = self.client.handle_for(voice.model, request_id)
            output, _headers, status = await self.client.wait(handle, deadline_s=self.deadline_s)
            audio = output.get("audio") or {}
            if not audio.get("url"):
                raise PermanentError(
                    "fal: the speech returned no audio", provider=PROVIDER, request_id=request_id
                )
            ctype = audio.get("content_type") or "audio/mpeg"
            suffix = AUDIO_SUFFIXES.get(ctype) or mimetypes.guess_extension(ctype) or ".mp3"
            path = await self.client.download(audio["url"], workdir / f"speech{suffix}")
            return path, ctype, status, output

        path, ctype, status, output = run_sync(go())
        try:  # decoding is CPU work: here, not on the providers' event loop
            seconds = media.audio_seconds(path)
        except media.MediaError as exc:
            raise PermanentError(
                f"fal: speech output unreadable: {exc}", provider=PROVIDER, request_id=request_id
            ) from exc
        cost = self.price(voice, len(text))
        meta: dict[str, Any] = {"inference_time": status.inference_time}
        meta.update(self.word_timings(output, text, voice, seconds))
        return ProviderResult(
            path,
            ctype,
            Billing(len(text), "characters", cost),
            request_id=request_id,
            seconds=seconds,
            meta=meta,
        )

    def word_timings(self, output: dict[str, Any], text: str, voice: Voice, seconds: float) -> dict[str, Any]:
        """``{"words": [...]}`` from an ElevenLabs output's timestamps that fit ``text`` and the audio;
        ``{"timestamps_unread": <their structure>}`` when they were there but did not; else nothing."""
        if not self.timestamps or not is_elevenlabs_tts(voice.model):
            return {}
        try:
            words = words_from_output(
                output, text, audio_seconds=seconds, min_match=self.timestamps_min_match
            )
            if words:
                return {"words": words}
            keys = ("timestamps", "alignment", "normalized_alignment")
            present = {k: output[k] for k in keys if output.get(k) is not None}
            return {"timestamps_unread": describe(present)} if present else {}
        except Exception:  # the speech is paid for and good: its timings are a bonus
            log.warning("fal: ignoring the speech's timestamps", exc_info=True)
            return {}
