"""WaveSpeed InfiniteTalk in the lip-sync role: one image and one audio to a talking video, priced by
WaveSpeed's billing rule (whole seconds of audio, with a minimum)."""

from __future__ import annotations

import asyncio
import collections
import threading
from pathlib import Path
from typing import Any

from castflow import media
from castflow.models import Mouth
from castflow.providers.base import (
    Billing,
    PermanentError,
    ProviderResult,
)
from castflow.providers.loop import run_sync
from castflow.providers.wavespeed.client import (
    BUCKET_AREA,
    PROVIDER,
    Prediction,
    WaveSpeedClient,
    billed_seconds,
    given_or,
)


def billed(
    audio_seconds: float, resolution: str, *, prices: dict[str, float], min_seconds: float
) -> tuple[int, float]:
    """(billed seconds, USD) of a render of ``audio_seconds``: InfiniteTalk bills whole seconds, with a
    minimum, at a price per resolution."""
    seconds = billed_seconds(audio_seconds, minimum=min_seconds)
    return seconds, round(seconds * prices.get(resolution, 0.0), 6)


class WaveSpeedLipSync:
    """InfiniteTalk: one image plus one audio → a talking video (about 25 fps, duration = audio)."""

    name = PROVIDER

    def __init__(
        self,
        client: WaveSpeedClient,
        *,
        model: str,
        prices: dict[str, float],
        min_seconds: float,
        deadline_base_s: float,
        deadline_per_audio_s: float,
        prompt: str | None = None,
        expected_per_audio_s: float = 0.0,
    ) -> None:
        self.client = client
        self.model = model
        self.expected_per_audio_s = expected_per_audio_s
        self._observed: collections.deque[float] = collections.deque(maxlen=50)  # render s per audio s
        self._lock = threading.Lock()
        self.prices = prices
        self.min_seconds = min_seconds
        self.deadline_base_s = deadline_base_s
        self.deadline_per_audio_s = deadline_per_audio_s
        self.prompt = prompt

    def expected_seconds(self, audio_seconds: float) -> float:
        """How long a render of this audio should take: the settings' floor, or what recent renders
        took (WaveSpeed reports ``executionTime``), so the first poll comes about when it is done."""
        with self._lock:
            seen = sorted(self._observed)
        learned = 0.9 * seen[len(seen) // 2] if len(seen) >= 5 else 0.0
        return audio_seconds * max(self.expected_per_audio_s, learned)

    def deadline(self, audio_seconds: float) -> float:
        """How long to wait for one render: grows with the audio (the docs say 10-30 s per second)."""
        return self.deadline_base_s + self.deadline_per_audio_s * audio_seconds

    def cost(self, audio_seconds: float, resolution: str) -> tuple[int, float]:
        """(billed seconds, USD) of a render of ``audio_seconds``: whole seconds, with a minimum."""
        return billed(audio_seconds, resolution, prices=self.prices, min_seconds=self.min_seconds)

    def price(self, audio_seconds: float, resolution: str) -> float:
        return self.cost(audio_seconds, resolution)[1]

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
        async def go() -> str:
            urls = await asyncio.gather(
                given_or(image_url, self.client.upload, image),
                given_or(audio_url, self.client.upload, audio),
            )
            payload: dict[str, Any] = {
                "image": urls[0],
                "audio": urls[1],
                "resolution": resolution,
                "seed": seed % 2_147_483_648,
            }
            if self.prompt:
                payload["prompt"] = self.prompt
            pred = await self.client.submit(self.model, payload)
            return pred.id

        return run_sync(go())

    def collect(
        self, request_id: str, *, audio_seconds: float, resolution: str, workdir: Path
    ) -> ProviderResult:
        async def go() -> tuple[Path, Prediction]:
            pred = await self.client.wait(
                request_id,
                deadline_s=self.deadline(audio_seconds),
                expected_s=self.expected_seconds(audio_seconds),
            )
            return await self.client.download(pred.outputs[0], workdir / "lipsync.mp4"), pred

        path, pred = run_sync(go())
        if pred.execution_ms and audio_seconds > 0:
            with self._lock:
                self._observed.append(pred.execution_ms / 1000 / audio_seconds)
        try:  # probing is CPU work: here, not on the providers' event loop
            info = media.probe(path)
        except media.MediaError as exc:
            raise PermanentError(
                f"wavespeed: output video unreadable: {exc}", provider=PROVIDER, request_id=request_id
            ) from exc
        units, cost = self.cost(audio_seconds, resolution)
        return ProviderResult(
            path,
            "video/mp4",
            Billing(units, "seconds", cost),
            request_id=request_id,
            seconds=info.duration,
            meta={"execution_ms": pred.execution_ms, "resolution": resolution},
        )

    def size_problem(self, width: int, height: int, resolution: str) -> str | None:
        """InfiniteTalk picks the bucket nearest the input's aspect ratio (exact sizes unverified, and a
        square portrait gives a square video): accept a frame whose pixel area is within 25 % of the
        resolution's bucket."""
        area = BUCKET_AREA.get(resolution)
        if area is None:
            return f"unknown resolution {resolution}"
        if abs(width * height - area) > 0.25 * area:
            return f"frame {width}x{height} does not match the {resolution} bucket (~{area} pixels)"
        return None

    def render(
        self,
        image: Path,
        audio: Path,
        *,
        resolution: str,
        seed: int,
        mouth: Mouth | None,
        workdir: Path,
    ) -> ProviderResult:
        """Submit and wait in one call (for callers without a stage record)."""
        seconds = media.decode_audio(audio).seconds
        request_id = self.submit_render(image, audio, resolution=resolution, seed=seed)
        return self.collect(request_id, audio_seconds=seconds, resolution=resolution, workdir=workdir)
