"""A vendor is one folder plus one registration line: a new lip-sync vendor, declared as a package (its
face and its settings group) and registered in ``VENDORS``, gets its settings group
(``CASTFLOW_<VENDOR>__…``, key checked), is chosen by settings, priced in estimates from its own settings,
held to its account's concurrency, run by the pipeline, checked by the doctor and given a webhook route,
with no other module changed."""

from __future__ import annotations

import asyncio
import sys
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import Field

from castflow import pipeline, providers
from castflow import settings as settings_module
from castflow.actors import ensure_sample_actors
from castflow.checks import Check
from castflow.doctor import run_checks
from castflow.estimates import estimate_video
from castflow.models import VideoRequest
from castflow.providers import vendors
from castflow.providers.base import ProviderResult
from castflow.providers.vendors import Roles
from castflow.runtime import build_runtime
from castflow.section import VendorSection
from castflow.settings import Settings
from castflow.webhooks.app import create_app, webhook_urls


class EchoSettings(VendorSection):
    """The vendor's settings group, in its folder: a price of its own beside the shared key."""

    price_per_second: float = Field(default=0.10, ge=0)


class EchoLipSync:
    """A 'vendor' lip-sync: the embedded renderer, billed per second at its settings' price."""

    name, model = "echo", "echo-1"

    def __init__(self, inner: Any, per_second: float) -> None:
        self.inner = inner
        self.per_second = per_second
        self.renders = 0

    def price(self, audio_seconds: float, resolution: str) -> float:
        return round(self.per_second * audio_seconds, 6)

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
        group = settings.vendor("echo")
        assert isinstance(group, EchoSettings)
        if settings.providers.lipsync == "echo" and group.key is not None:
            roles.lipsync = EchoLipSync(roles.lipsync, group.price_per_second)

    def check(settings: Settings) -> Check:
        return Check("echo", "ok", "echo is always up")

    def receiver(settings: Settings, clock: Callable[[], float], **options: Any) -> EchoHook:
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


def echo_settings_module() -> types.ModuleType:
    module = types.ModuleType("castflow.providers.echo.settings")
    module.__dict__.update(GROUP=EchoSettings)
    return module


@pytest.fixture
def echo_registered(monkeypatch: pytest.MonkeyPatch) -> Iterator[type[Settings]]:
    """The vendor's folder (its face and its settings module) and its one registration line; yields the
    settings tree as a process that starts with ``echo`` in ``VENDORS`` builds it."""
    monkeypatch.setitem(sys.modules, "castflow.providers.echo", echo_module())
    monkeypatch.setitem(sys.modules, "castflow.providers.echo.settings", echo_settings_module())
    monkeypatch.setattr(providers, "VENDORS", (*providers.VENDORS, "echo"))  # the one registration line
    vendors.vendor.cache_clear()
    settings_module.vendor_groups.cache_clear()
    yield settings_module._with_vendor_groups()
    vendors.vendor.cache_clear()
    settings_module.vendor_groups.cache_clear()


def test_a_registered_vendor_plays_its_role_everywhere(
    echo_registered: type[Settings], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tree = echo_registered
    with pytest.raises(ValueError, match="unknown provider"):
        tree(data_dir=tmp_path, providers={"lipsync": "nobody"})
    with pytest.raises(ValueError, match=r"providers\.lipsync is 'echo' but CASTFLOW_ECHO__KEY is not set"):
        tree(data_dir=tmp_path, providers={"lipsync": "echo"})
    monkeypatch.setenv("CASTFLOW_ECHO__KEY", "echo-key-1")  # its own group, read from the environment
    monkeypatch.setenv("CASTFLOW_ECHO__CONCURRENCY", "3")
    settings = tree(data_dir=tmp_path, providers={"lipsync": "echo"})
    group = settings.vendor("echo")
    assert isinstance(group, EchoSettings)
    assert group.key is not None
    assert group.key.get_secret_value() == "echo-key-1"
    assert "echo-key-1" not in repr(settings)
    assert settings.provider_limits()["echo"] == 3
    rt = build_runtime(settings)
    try:
        assert isinstance(rt.lipsync, EchoLipSync)
        assert rt.provider_slots["echo"]._initial_value == 3  # type: ignore[attr-defined]
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
        app = create_app(settings, engine=rt.engine)

        async def deliver() -> httpx.Response:
            async with httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app), base_url="http://hooks"
            ) as c:
                return await c.post("/webhooks/echo", content=b"{}")

        answer = asyncio.run(deliver())
        assert answer.status_code == httpx.codes.ACCEPTED  # routed to the vendor's receiver
    finally:
        rt.close()
