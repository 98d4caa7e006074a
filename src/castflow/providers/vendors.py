"""The vendors castflow can use: one line each in ``castflow.providers.VENDORS``, naming its folder under
``castflow/providers/``.

A vendor's folder holds everything castflow knows of it (after dlt's destinations): its client, its role
adapters, its settings group, its webhook check and its fake; its package's face (``__init__.py``) is the
:class:`Vendor` below. Nothing above ``castflow/providers`` names a vendor: the runtime, the doctor, the
webhook receiver and the fakes go through this list.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, cast

from castflow import providers as _package
from castflow.models import Voice
from castflow.providers.base import (
    ImageEditor,
    LipSyncer,
    QueueImageEditor,
    QueueLipSyncer,
    QueueSpeechSynth,
    SpeechSynth,
)

if TYPE_CHECKING:
    import sqlalchemy as sa

    from castflow.checks import Check
    from castflow.providers.webhooks import Event
    from castflow.settings import Settings


def names() -> tuple[str, ...]:
    """The registered vendors (``castflow.providers.VENDORS``, read at each call)."""
    return _package.VENDORS


@dataclass
class Roles:
    """Who plays each role: the embedded providers, replaced by a vendor's where the settings say so."""

    image: ImageEditor | QueueImageEditor
    speech: dict[str, SpeechSynth | QueueSpeechSynth]  # by voice provider
    lipsync: LipSyncer | QueueLipSyncer


@dataclass
class PriceList:
    """What a vendor's roles cost, asked without a key or a client (the dry run's "on the real providers"
    figure): each is its role's ``price``; None where the vendor does not play the role."""

    image: Callable[[], float] | None = None  # one scene variant
    speech: Callable[[Voice, int], float] | None = None  # a script of so many characters in a voice
    lipsync: Callable[[float, str], float] | None = None  # seconds of audio at a resolution


class WebhookReceiver(Protocol):
    """A vendor's webhook: the signature headers it reads, and verification plus parsing of a delivery."""

    name: str
    headers: tuple[str, ...]

    def receive(self, headers: dict[str, str], body: bytes) -> tuple[str, Event | None]: ...


class Vendor(Protocol):
    """What a vendor's package provides (module-level names of ``castflow/providers/<vendor>``)."""

    NAME: str  # its folder, settings group, webhook path and provider name in the records
    TITLE: str  # its name as people write it (messages)

    def build(self, settings: Settings, engine: sa.Engine, roles: Roles) -> None:
        """Put the vendor's role adapters into ``roles`` where the settings choose them (and a key is set)."""
        ...

    def price_list(self, settings: Settings) -> PriceList:
        """Its prices for the roles it can play, from its settings group (no key needed). Speech is
        priced for any voice, a local one at the vendor's reference model."""
        ...

    def check(self, settings: Settings) -> Check:
        """A free, authenticated call that says whether the key works (never prints it)."""
        ...

    def receiver(self, settings: Settings, clock: Callable[[], float], **options: Any) -> WebhookReceiver:
        """The vendor's webhook receiver. (A face's names must differ from its modules' names: importing
        ``<vendor>.webhook`` would shadow a function called ``webhook``.)"""
        ...

    def webhook_problems(self, settings: Settings, *, online: bool = True) -> list[str]:
        """What keeps its deliveries from being accepted; ``online`` may call the vendor (its keys)."""
        ...

    def start_fake(self) -> Any:
        """A new loopback fake of the vendor (not started)."""
        ...

    def use_fake(self, settings: Settings, fake: Any) -> None:
        """Point ``settings`` (a copy) at a running fake: its URLs and its key."""
        ...


@functools.cache
def vendor(name: str) -> Vendor:
    """The vendor package ``castflow.providers.<name>``."""
    if name not in names():
        raise KeyError(f"unknown vendor {name!r} (known: {', '.join(names())})")
    return cast("Vendor", importlib.import_module(f"castflow.providers.{name}"))


def vendors() -> Iterator[Vendor]:
    for name in names():
        yield vendor(name)


def reference_prices(settings: Settings) -> dict[str, tuple[str, Callable[..., float]]]:
    """The real providers' price of each role, whatever plays it here: (vendor, price) by role, from
    the vendor chosen for the role, else the first registered vendor that plays it (a role no vendor
    plays is free)."""
    lists = {v.NAME: v.price_list(settings) for v in vendors()}
    chosen = {"image": settings.providers.image, "lipsync": settings.providers.lipsync}
    found: dict[str, tuple[str, Callable[..., float]]] = {}
    for role in ("image", "speech", "lipsync"):
        order = [chosen[role]] if chosen.get(role, "local") != "local" else []
        for name in [*order, *lists]:
            price = getattr(lists[name], role)
            if price is not None:
                found[role] = (name, price)
                break
    return found


def title(name: str) -> str:
    """A vendor's name as people write it (the name itself for anything else: 'local', 'upload')."""
    return vendor(name).TITLE if name in names() else name


def webhook_path(name: str) -> str:
    return f"/webhooks/{name}"


def webhook_options(settings: Settings, engine: sa.Engine, name: str) -> dict[str, Any]:
    """With a public URL configured, submits ask the vendor to call ``castflow webhooks serve`` and the
    waits look for the recorded delivery (polling continues, slower, as the fallback)."""
    hooks = settings.webhooks
    if not hooks.public_url:
        return {}
    from castflow.providers.webhooks import find_completion

    return {
        "webhook_url": hooks.public_url.rstrip("/") + webhook_path(name),
        "hint": functools.partial(find_completion, engine, name),
    }
