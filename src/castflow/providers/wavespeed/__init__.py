"""WaveSpeed (https://wavespeed.ai): InfiniteTalk lip-sync, one image plus one audio to a talking video.

The folder holds all castflow knows of WaveSpeed: ``client`` (the v3 prediction API), ``lipsync`` (the
lip-sync role, priced by WaveSpeed's billing rule), ``settings`` (``CASTFLOW_WAVESPEED__…``), ``webhook``
(HMAC signatures) and ``fake`` (a loopback fake of the API). This face is its registration
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

NAME = "wavespeed"
TITLE = "WaveSpeed"  # as people write it


def build(settings: Settings, engine: sa.Engine, roles: Roles) -> None:
    """Lip-sync on WaveSpeed when ``providers.lipsync`` is ``wavespeed`` and a key is set."""
    from castflow.providers.wavespeed.settings import of

    ws = of(settings)
    key = ws.key
    if settings.providers.lipsync != NAME or key is None:
        return
    from castflow.providers.http import PollSchedule, RetryPolicy
    from castflow.providers.vendors import webhook_options
    from castflow.providers.wavespeed.client import WaveSpeedClient
    from castflow.providers.wavespeed.lipsync import WaveSpeedLipSync

    hooks = webhook_options(settings, engine, NAME)
    cap = max(ws.poll_cap_s, settings.webhooks.poll_cap_s) if hooks else ws.poll_cap_s
    client = WaveSpeedClient(
        key,
        policy=RetryPolicy.from_settings(settings.http),
        base_url=ws.base_url,
        result_path=ws.result_path,
        upload_mode=ws.upload_mode,
        poll=PollSchedule(first=ws.poll_first_s, factor=2.0, cap=cap),
        **hooks,
    )
    roles.lipsync = WaveSpeedLipSync(
        client,
        model=ws.lipsync_model,
        prices=ws.price_per_second,
        min_seconds=ws.min_billed_seconds,
        deadline_base_s=ws.deadline_base_s,
        deadline_per_audio_s=ws.deadline_per_audio_s,
        prompt=ws.prompt,
        expected_per_audio_s=ws.expected_seconds_per_audio_second,
    )


def price_list(settings: Settings) -> PriceList:
    """Lip-sync by WaveSpeed's billing rule (whole seconds, a minimum, a price per resolution)."""
    from castflow.providers.vendors import PriceList
    from castflow.providers.wavespeed.lipsync import billed
    from castflow.providers.wavespeed.settings import of

    ws = of(settings)
    return PriceList(
        lipsync=lambda seconds, resolution: billed(
            seconds, resolution, prices=ws.price_per_second, min_seconds=ws.min_billed_seconds
        )[1]
    )


def check(settings: Settings) -> Check:
    """The key against ``GET /api/v3/balance`` (free), with the balance."""
    from castflow.checks import Check, Level, http
    from castflow.providers.wavespeed.settings import of

    key = of(settings).key
    if key is None:
        level: Level = "fail" if settings.providers.lipsync == NAME else "ok"
        return Check(NAME, level, "no key; lip-sync stays embedded")
    base = of(settings).base_url.rstrip("/")
    resp = http(
        "GET", f"{base}/api/v3/balance", headers={"Authorization": f"Bearer {key.get_secret_value()}"}
    )
    if resp.status_code == 401:
        return Check(
            NAME, "fail", "key set but refused (401); a key works only after the account's first top-up"
        )
    if not resp.is_success:
        return Check(NAME, "fail", f"{base} answered HTTP {resp.status_code}")
    balance = (resp.json().get("data") or {}).get("balance")
    return Check(NAME, "ok", f"key accepted by {base}; balance {balance}")


def receiver(settings: Settings, clock: Callable[[], float], **options: Any) -> WebhookReceiver:
    from castflow.providers.wavespeed.settings import of
    from castflow.providers.wavespeed.webhook import WaveSpeedWebhook

    return WaveSpeedWebhook(settings.webhooks, clock, secret=of(settings).webhook_secret)


def webhook_problems(settings: Settings, *, online: bool = True) -> list[str]:
    from castflow.providers.wavespeed.webhook import problems

    return problems(settings, online=online)


def start_fake() -> Any:
    from castflow.providers.wavespeed.fake import FakeWaveSpeed

    return FakeWaveSpeed()


def use_fake(settings: Settings, fake: Any) -> None:
    from pydantic import SecretStr

    from castflow.providers.wavespeed.fake import VALID_KEY
    from castflow.providers.wavespeed.settings import of

    ws = of(settings)
    ws.key = SecretStr(VALID_KEY)
    ws.base_url = fake.url
    ws.poll_first_s = min(ws.poll_first_s, 0.2)
    ws.poll_cap_s = min(ws.poll_cap_s, 1.0)
    ws.expected_seconds_per_audio_second = 0.0  # the fakes render at once
