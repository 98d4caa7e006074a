"""fal.ai (https://fal.ai): scene variants (``fal-ai/nano-banana/edit``) and speech (TTS models).

The folder holds all castflow knows of fal: ``client`` (the queue API and CDN upload), ``roles`` (the
image-edit and speech roles), ``settings`` (``CASTFLOW_FAL__…``), ``webhook`` and ``jwks`` (Ed25519
signatures and fal's key set) and ``fake`` (a loopback fake of the API). This face is its registration
(castflow.providers.vendors.Vendor); it imports the rest only when asked.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import sqlalchemy as sa

    from castflow.checks import Check
    from castflow.providers.vendors import PriceList, Roles, WebhookReceiver
    from castflow.settings import Settings

NAME = "fal"
TITLE = "fal"  # as people write it


def build(settings: Settings, engine: sa.Engine, roles: Roles) -> None:
    """Speech for actors whose voice is on fal (with a key), and scene variants when ``providers.image``
    is ``fal``."""
    from castflow.providers.fal.settings import of

    cfg = of(settings)
    key = cfg.key
    if key is None:
        return
    from castflow.providers.fal.client import FalClient
    from castflow.providers.fal.roles import FalImageEditor, FalSpeech
    from castflow.providers.http import PollSchedule, RetryPolicy
    from castflow.providers.vendors import webhook_options

    client = FalClient(
        key,
        policy=RetryPolicy.from_settings(settings.http),
        queue_url=cfg.queue_url,
        rest_url=cfg.rest_url,
        cdn_url=cfg.cdn_url,
        poll=PollSchedule(first=cfg.poll_first_s, factor=2.0, cap=cfg.poll_cap_s),
        **webhook_options(settings, engine, NAME),
    )
    roles.speech[NAME] = FalSpeech(
        client,
        prices=cfg.tts_prices_per_1k_chars,
        deadline_s=cfg.speech_deadline_s,
        timestamps=cfg.speech_timestamps,
        timestamps_min_match=cfg.speech_timestamps_min_match,
    )
    if settings.providers.image == NAME:
        roles.image = FalImageEditor(
            client,
            model=cfg.image_model,
            aspect_ratio=cfg.aspect_ratio,
            price_per_image=cfg.image_price(cfg.image_model),
            deadline_s=cfg.image_deadline_s,
        )


def price_list(settings: Settings) -> PriceList:
    """Scene variants at the image model's price; speech per 1,000 characters, a voice of another
    provider at the reference TTS model's."""
    from castflow.providers.fal.settings import of
    from castflow.providers.vendors import PriceList

    cfg = of(settings)
    return PriceList(
        image=lambda: cfg.image_price(cfg.image_model),
        speech=lambda voice, characters: cfg.tts_price(voice.model, characters),
    )


def check(settings: Settings) -> Check:
    """The key against the CDN token endpoint (free)."""
    from castflow.checks import Check, http
    from castflow.providers.fal.settings import of

    key = of(settings).key
    if key is None:
        return Check(NAME, "ok", "not configured (no key); scene variants and speech stay embedded")
    rest = of(settings).rest_url
    resp = http(
        "POST",
        f"{rest.rstrip('/')}/storage/auth/token?storage_type=fal-cdn-v3",
        headers={"Authorization": f"Key {key.get_secret_value()}"},
        json={},
    )
    if resp.status_code in (401, 403):
        return Check(NAME, "fail", f"key set but refused by {rest} (HTTP {resp.status_code})")
    if not resp.is_success:
        return Check(NAME, "fail", f"{rest} answered HTTP {resp.status_code}")
    return Check(NAME, "ok", f"key accepted by {rest}; image role: {settings.providers.image}")


def receiver(settings: Settings, clock: Callable[[], float], **options: Any) -> WebhookReceiver:
    """``options``: ``jwks``, a key cache to use instead of the settings' JWKS URL."""
    from castflow.providers.fal.settings import of
    from castflow.providers.fal.webhook import FalWebhook

    return FalWebhook(settings.webhooks, clock, jwks_url=of(settings).jwks_url, jwks=options.get("jwks"))


def webhook_problems(settings: Settings, *, online: bool = True) -> list[str]:
    from castflow.providers.fal.webhook import problems

    return problems(settings, online=online)


def start_fake() -> Any:
    from castflow.providers.fal.fake import FakeFal

    return FakeFal()


def use_fake(settings: Settings, fake: Any) -> None:
    from pydantic import SecretStr

    from castflow.providers.fal.fake import VALID_KEY
    from castflow.providers.fal.settings import of

    cfg = of(settings)
    cfg.key = SecretStr(VALID_KEY)
    cfg.queue_url = cfg.rest_url = cfg.cdn_url = fake.url
