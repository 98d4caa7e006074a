"""fal's settings group (``CASTFLOW_FAL__…``): its key, hosts, the image model, prices, the models'
limits, the webhook key set and the polling pace."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, cast

from pydantic import Field

from castflow.section import VendorSection

if TYPE_CHECKING:
    from castflow.settings import Settings

NAME = "fal"


class FalSettings(VendorSection):
    """fal.ai hosts and models (the hosts are settings so the loopback fake can stand in). ``key`` has
    the form ``<key_id>:<key_secret>``."""

    queue_url: str = "https://queue.fal.run"
    rest_url: str = "https://rest.fal.ai"
    cdn_url: str = "https://v3.fal.media"
    image_model: str = "fal-ai/nano-banana/edit"
    aspect_ratio: str = "9:16"
    image_deadline_s: float = Field(default=600, gt=0)
    speech_deadline_s: float = Field(default=600, gt=0)
    speech_timestamps: bool = Field(
        default=True,
        description="Ask the ElevenLabs TTS models for word timestamps (``timestamps: true``) and record "
        "those that fit the script as the speech stage's word timings. fal does not type their shape "
        "(fal.md section 3.1 and section 7, point 7): a shape not understood records no words and the stage "
        "succeeds all the same.",
    )
    speech_timestamps_min_match: float = Field(
        default=0.75,
        ge=0,
        le=1,
        description="The share of the script's words that must be found, in order, in the timestamps for "
        "them to be recorded (the rest are placed between their neighbours).",
    )
    poll_first_s: float = Field(default=1.0, gt=0, description="First status poll delay; doubles each time.")
    poll_cap_s: float = Field(default=16.0, gt=0, description="Longest delay between status polls.")
    jwks_url: str = Field(
        default="https://rest.fal.ai/.well-known/jwks.json",
        description="fal's webhook key set. Older docs use rest.alpha.fal.ai; the spec marks the host as "
        "uncertain (docs/providers/fal.md, webhooks point 5).",
    )
    # Prices (USD) from fal's model pages; a model not listed costs 0 in the records.
    image_prices: dict[str, float] = Field(
        default_factory=lambda: {
            "fal-ai/nano-banana/edit": 0.039,
            "fal-ai/nano-banana-2/edit": 0.08,
            "fal-ai/nano-banana-pro/edit": 0.15,
        },
        description="Per edited image, by image-edit model.",
    )
    tts_prices_per_1k_chars: dict[str, float] = Field(
        default_factory=lambda: {
            "fal-ai/elevenlabs/tts/multilingual-v2": 0.10,
            "fal-ai/elevenlabs/tts/turbo-v2.5": 0.05,
            "fal-ai/elevenlabs/tts/eleven-v3": 0.10,
            "fal-ai/minimax/speech-2.8-hd": 0.10,
        },
        description="Per 1,000 characters of script, by TTS model.",
    )
    reference_tts_model: str = Field(
        default="fal-ai/elevenlabs/tts/multilingual-v2",
        description="The TTS model that prices an actor's local voice in a dry run's 'on the real "
        "providers' figure.",
    )
    # fal publishes no prompt limit for nano banana (fal.md section 2, point 6: "unverified", third
    # parties say 5,000), so these are settings.
    prompt_limits: dict[str, int] = Field(
        default_factory=lambda: {
            "fal-ai/nano-banana/edit": 5_000,
            "fal-ai/nano-banana-2/edit": 5_000,
            "fal-ai/nano-banana-pro/edit": 5_000,
        }
    )
    # From the model makers' docs (ElevenLabs, MiniMax); fal publishes no limits of its own (fal.md
    # section 7), so these are settings.
    script_limits: dict[str, int] = Field(
        default_factory=lambda: {
            "fal-ai/elevenlabs/tts/multilingual-v2": 10_000,
            "fal-ai/elevenlabs/tts/turbo-v2.5": 40_000,
            "fal-ai/elevenlabs/tts/eleven-v3": 3_000,
            "fal-ai/minimax/speech-2.8-hd": 5_000,
        }
    )

    MOVED: ClassVar[dict[tuple[str, str], str]] = {
        ("webhooks", "fal_jwks_url"): "jwks_url",
        ("prices", "image_edit_per_image"): "image_prices",
        ("prices", "tts_per_1k_chars"): "tts_prices_per_1k_chars",
    }

    def model_for(self, role: str) -> str | None:
        return self.image_model if role == "image" else None

    def image_price(self, model: str) -> float:
        return self.image_prices.get(model, 0.0)

    def tts_price(self, model: str, characters: int) -> float:
        """fal bills TTS per 1,000 characters; a model not listed is priced as the reference model."""
        table = self.tts_prices_per_1k_chars
        per_1k = table.get(model, table.get(self.reference_tts_model, 0.0))
        return round(per_1k * characters / 1000, 6)


GROUP = FalSettings


def of(settings: Settings) -> FalSettings:
    """fal's group of ``settings``."""
    return cast("FalSettings", settings.vendor(NAME))
