"""WaveSpeed's settings group (``CASTFLOW_WAVESPEED__…``): key, host, model, prices, the webhook secret,
the spec's open points and pacing."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, Literal, cast

from pydantic import Field, SecretStr, field_validator

from castflow.section import VendorSection, clean_secret

if TYPE_CHECKING:
    from castflow.settings import Settings

NAME = "wavespeed"


class WaveSpeedSettings(VendorSection):
    """WaveSpeed (InfiniteTalk lip-sync). The host is a setting so the loopback fake can stand in. A key
    works only after the account's first top-up."""

    base_url: str = "https://api.wavespeed.ai"
    lipsync_model: str = "wavespeed-ai/infinitetalk"
    # The spec (wavespeed.md section 3.2) has a doubt: SDKs use /predictions/{id}/result, newer docs show
    # /predictions/{id}. "result" is the default; "bare" switches to the other form.
    result_path: Literal["result", "bare"] = "result"
    # Media upload (section 5): the documented multipart endpoint, or the SDK's direct-upload ticket + PUT.
    upload_mode: Literal["binary", "ticket"] = "binary"
    prompt: str | None = Field(default=None, description="Optional positive prompt sent with each render.")
    # Deadline for a render: base + per_audio_second x audio seconds (the docs say 10-30 s of wall time
    # per second of video; 60 s per second leaves room for queueing).
    deadline_base_s: float = Field(default=600, gt=0)
    deadline_per_audio_s: float = Field(default=60, ge=0)
    expected_seconds_per_audio_second: float = Field(
        default=10,
        ge=0,
        description="The docs say 10-30 s of wall time per second of video: the first poll waits the low end.",
    )
    poll_first_s: float = Field(default=5, gt=0, description="The docs ask for >= 5 s between checks.")
    poll_cap_s: float = Field(default=30, gt=0)
    webhook_secret: SecretStr | None = Field(
        default=None, description="whsec_... from WaveSpeed's webhook settings (signs its deliveries)."
    )
    # InfiniteTalk's billing: per second of audio, rounded up to whole seconds, with a minimum.
    price_per_second: dict[str, float] = Field(
        default_factory=lambda: {"480p": 0.03, "720p": 0.06},
        description="USD per billed second, by resolution.",
    )
    min_billed_seconds: float = Field(default=5.0, ge=0, description="Shortest duration billed.")

    MOVED: ClassVar[dict[tuple[str, str], str]] = {
        ("webhooks", "wavespeed_secret"): "webhook_secret",
        ("prices", "lipsync_per_second"): "price_per_second",
        ("prices", "lipsync_min_seconds"): "min_billed_seconds",
    }

    _secret = field_validator("webhook_secret")(clean_secret)


GROUP = WaveSpeedSettings


def of(settings: Settings) -> WaveSpeedSettings:
    """WaveSpeed's group of ``settings``."""
    return cast("WaveSpeedSettings", settings.vendor(NAME))
