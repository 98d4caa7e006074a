"""A vendor is one folder plus one registration line: a new lip-sync vendor, declared as a module and
registered in ``VENDORS``, is chosen by settings, priced in estimates, run by the pipeline, checked by the
doctor and given a webhook route, with no other module changed."""

from __future__ import annotations

import asyncio
import sys
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from castflow import pipeline, providers
from castflow.actors import ensure_sample_actors
from castflow.checks import Check
from castflow.doctor import run_checks
from castflow.estimates import estimate_video
from castflow.models import VideoRequest
from castflow.providers import vendors
from castflow.providers.base import ProviderResult
from castflow.providers.vendors import Roles
from castflow.runtime import build_runtime
from castflow.settings import Settings, WebhookSettings
from castflow.webhooks.app import create_app, webhook_urls


class EchoLipSync:
    """A 'vendor' lip-sync: the embedded renderer, billed at $0.10 a second."""

    name, model = "echo", "echo-1"

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.renders = 0

    def price(self, audio_seconds: float, resolution: str) -> float:
        return round(0.10 * audio_seconds, 6)

    def size_problem(self, width: int, height: int, resolution: str) -> str | None:
        result: str | None = self.inner.size_problem(width, height, resolution)
        return result

    def render(self, image: Path, audio: Path, **kw: Any) -> ProviderResult:
        self.renders += 1
        result: ProviderResult = self.inner.render(image, audio, **kw)
        return result


class EchoHook:
    name = "echo"
    headers: tuple[str, ...] = ("x-echo-signature",)

    def receive(self, headers: dict[str, str], body: bytes) -> tuple[str, Any]:
        return "delivery-1", None  # authentic, not a completion


def echo_module() -> types.ModuleType:
    module = types.ModuleType("castflow.providers.echo")

    def build(settings: Settings, engine: Any, roles: Roles) -> None:
        if settings.providers.lipsync == "echo":
            roles.lipsync = EchoLipSync(roles.lipsync)

    def check(settings: Settings) -> Check:
        return Check("echo", "ok", "echo is always up")

    def receiver(settings: WebhookSettings, clock: Callable[[], float], **options: Any) -> EchoHook:
        return EchoHook()

    def webhook_problems(settings: Settings, *, online: bool = True) -> list[str]:
        return []

    module.__dict__.update(
        NAME="echo",
        TITLE="Echo",
        build=build,
        check=check,
        receiver=receiver,
        webhook_problems=webhook_problems,
        start_fake=lambda: None,
        use_fake=lambda settings, fake: None,
    )
    return module


@pytest.fixture
def echo_registered(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setitem(sys.modules, "castflow.providers.echo", echo_module())
    monkeypatch.setattr(providers, "VENDORS", (*providers.VENDORS, "echo"))  # the one registration line
    vendors.vendor.cache_clear()
    yield
    vendors.vendor.cache_clear()


def test_a_registered_vendor_plays_its_role_everywhere(echo_registered: None, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown provider"):
        Settings(data_dir=tmp_path, providers={"lipsync": "nobody"})
    settings = Settings(data_dir=tmp_path, providers={"lipsync": "echo"})
    rt = build_runtime(settings)
    try:
        assert isinstance(rt.lipsync, EchoLipSync)
        ensure_sample_actors(rt)
        video = pipeline.prepare_video(rt, VideoRequest(actor="leo", script="Rendered by the echo vendor."))
        estimate = estimate_video(rt, video)
        assert estimate.lipsync_usd > 0  # priced by the vendor's own rule, through the role protocol
        pipeline.record_start(rt, video)
        result = pipeline.run_video(rt, video)
        assert result.status == "succeeded"
        assert rt.lipsync.renders == 1
        assert result.audio_seconds is not None
        assert estimate.lipsync_usd == pytest.approx(0.10 * estimate.speech_seconds, abs=0.01)

        checks = {c.name: c for c in run_checks(settings)}
        assert checks["echo"].detail == "echo is always up"

        urls = webhook_urls(settings.webhooks, local_base="http://127.0.0.1:1")
        assert urls["echo"] == "http://127.0.0.1:1/webhooks/echo"
        app = create_app(settings.webhooks, engine=rt.engine)

        async def deliver() -> httpx.Response:
            async with httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app), base_url="http://hooks"
            ) as c:
                return await c.post("/webhooks/echo", content=b"{}")

        answer = asyncio.run(deliver())
        assert answer.status_code == httpx.codes.ACCEPTED  # routed to the vendor's receiver
    finally:
        rt.close()
