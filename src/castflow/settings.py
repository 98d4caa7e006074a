"""One settings tree for castflow: environment (``CASTFLOW_*``), ``.env`` and defaults, validated at start-up."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from castflow.providers.fal.settings import FalSettings
from castflow.providers.wavespeed.settings import WaveSpeedSettings
from castflow.section import Section, clean_secret
from castflow.storage.supabase.settings import SupabaseStorageSettings

Resolution = Literal["480p", "720p"]

# Output frame sizes of the lip-sync stage: vertical 9:16, even sides (H.264 needs them even).
FRAME_SIZES: dict[str, tuple[int, int]] = {"480p": (480, 854), "720p": (720, 1280)}


class DatabaseSettings(Section):
    """Where castflow keeps its own records (not Prefect's)."""

    url: SecretStr | None = Field(
        default=None,
        description="SQLAlchemy URL, e.g. postgresql+psycopg://user:password@host/db (a secret: it may hold "
        "a password). Default: SQLite in the data dir.",
    )
    echo: bool = False
    busy_timeout_ms: int = Field(default=30_000, ge=1_000, description="SQLite busy timeout.")
    retry_s: float = Field(
        default=60.0,
        ge=0,
        description="How long a row waits out a database outage (restart, failover, full disk) before it "
        "fails naming the database; every write of a row is retried within it.",
    )


class HttpSettings(Section):
    """The HTTP layer's one retry policy (castflow.providers.http.RetryPolicy), used by every provider
    client and the storage backend: requests that are safe to repeat, on transport errors, 408, 429 and
    5xx. A job that failed is the task layer's to retry (pipeline.task_retries), never both."""

    attempts: int = Field(default=5, ge=1, description="Tries of one request, the first included.")
    base_delay_s: float = Field(default=0.5, ge=0, description="Backoff before the first retry (doubles).")
    max_delay_s: float = Field(
        default=30.0, ge=0, description="Longest wait between tries (Retry-After too)."
    )
    total_s: float = Field(default=120.0, gt=0, description="Give up on a request after this long.")


class StorageSettings(Section):
    """Where finished media lives."""

    backend: Literal["local", "supabase"] = "local"
    root: Path | None = Field(default=None, description="Local storage folder. Default: <data_dir>/storage.")
    cache_dir: Path | None = Field(
        default=None, description="Local copies of remote objects. Default: <data_dir>/cache."
    )
    supabase: SupabaseStorageSettings = SupabaseStorageSettings()


class ProviderSettings(Section):
    """Which implementation plays each role (speech follows each actor's voice provider)."""

    # 'local' (embedded) or a vendor of castflow.providers.vendors that plays the role (image: fal;
    # lip-sync: wavespeed): a new vendor needs no change here.
    image: str = "local"
    speech: Literal["local"] = "local"
    lipsync: str = "local"
    fakes: bool = Field(
        default=False,
        description="Serve the paid roles (fal, wavespeed, supabase) from in-process loopback fakes that "
        "speak their protocols: no keys, no network. For trying a configuration and for benchmarks.",
    )
    fal_key: SecretStr | None = None
    wavespeed_key: SecretStr | None = None

    _keys = field_validator("fal_key", "wavespeed_key")(clean_secret)

    @field_validator("image", "lipsync")
    @classmethod
    def _known_provider(cls, value: str) -> str:
        from castflow.providers import VENDORS

        if value != "local" and value not in VENDORS:
            raise ValueError(f"unknown provider (known: local, {', '.join(VENDORS)})")
        return value


class WebhookSettings(Section):
    """Signed completion callbacks from fal and WaveSpeed (``castflow webhooks serve``).

    Polling stays the default; when ``public_url`` is set, submits ask the providers to call it.
    """

    public_url: str | None = Field(
        default=None, description="Public base URL that reaches `castflow webhooks serve`."
    )
    fal_jwks_url: str = Field(
        default="https://rest.fal.ai/.well-known/jwks.json",
        description="Older docs use rest.alpha.fal.ai; the spec marks the host as uncertain.",
    )
    jwks_cache_s: int = Field(default=24 * 3600, ge=60)
    wavespeed_secret: SecretStr | None = Field(default=None, description="whsec_... from WaveSpeed.")

    _secret = field_validator("wavespeed_secret")(clean_secret)
    tolerance_s: int = Field(default=300, ge=1)
    poll_cap_s: float = Field(
        default=60, gt=0, description="Fallback polling interval cap while webhooks are expected."
    )


class CallbackSettings(Section):
    """Signed POSTs of a run's result to the ``callback_url`` an API caller gave."""

    secret: SecretStr | None = Field(default=None, description="HMAC-SHA256 key of the signatures.")
    allow_private: bool = Field(
        default=False, description="Allow callbacks to loopback, private and link-local addresses."
    )
    attempts: int = Field(default=5, ge=1)
    backoff_s: float = Field(default=1.0, ge=0)
    timeout_s: float = Field(default=10.0, gt=0)

    _secret = field_validator("secret")(clean_secret)


class PriceSettings(Section):
    """Price table (USD) used to cost each stage; defaults from the providers' published prices."""

    image_edit_per_image: dict[str, float] = {
        "fal-ai/nano-banana/edit": 0.039,
        "fal-ai/nano-banana-2/edit": 0.08,
        "fal-ai/nano-banana-pro/edit": 0.15,
    }
    tts_per_1k_chars: dict[str, float] = {
        "fal-ai/elevenlabs/tts/multilingual-v2": 0.10,
        "fal-ai/elevenlabs/tts/turbo-v2.5": 0.05,
        "fal-ai/elevenlabs/tts/eleven-v3": 0.10,
        "fal-ai/minimax/speech-2.8-hd": 0.10,
    }
    lipsync_per_second: dict[str, float] = {"480p": 0.03, "720p": 0.06}
    lipsync_min_seconds: float = 5.0

    def image_edit(self, model: str) -> float:
        return self.image_edit_per_image.get(model, 0.0)

    def tts(self, model: str, characters: int) -> float:
        return round(self.tts_per_1k_chars.get(model, 0.0) * characters / 1000, 6)


class PipelineSettings(Section):
    """Knobs of the video DAG."""

    fps: int = Field(default=25, ge=1, le=60)
    default_resolution: Resolution = "480p"
    max_script_chars: int = Field(default=2_000, ge=1, description="Script limit of models not listed below.")
    max_prompt_chars: int = Field(default=2_000, ge=1, description="Scene prompt limit of models not listed.")
    # Per image-edit model (characters). fal publishes none for nano banana (fal.md section 2, point 6:
    # "unverified", third parties say 5,000), so these are settings.
    prompt_limits: dict[str, int] = {
        "pillow-scene-v1": 2_000,
        "fal-ai/nano-banana/edit": 5_000,
        "fal-ai/nano-banana-2/edit": 5_000,
        "fal-ai/nano-banana-pro/edit": 5_000,
    }
    # Per TTS model (characters). From the model makers' docs (ElevenLabs, MiniMax); fal does not publish
    # limits of its own (fal.md section 7), so these are settings.
    script_limits: dict[str, int] = {
        "espeak-ng": 2_000,
        "fal-ai/elevenlabs/tts/multilingual-v2": 10_000,
        "fal-ai/elevenlabs/tts/turbo-v2.5": 40_000,
        "fal-ai/elevenlabs/tts/eleven-v3": 3_000,
        "fal-ai/minimax/speech-2.8-hd": 5_000,
    }
    max_audio_seconds: float = Field(default=600.0, gt=0)
    qc_duration_tolerance_s: float = Field(default=0.1, gt=0)
    task_retries: int = Field(default=3, ge=0)
    retry_backoff_s: float = Field(default=2.0, ge=0)
    retry_jitter: float = Field(default=0.5, ge=0)
    max_workers: int = Field(default=8, ge=1, description="Thread pool size of the flow's task runner.")
    claim_lease_s: float = Field(
        default=30.0,
        gt=0,
        description="Lease of a stage claim, renewed while its process lives: a worker on another "
        "machine that dies leaves its stages to others after this long (a dead process of this "
        "machine is recognised at once).",
    )


class CampaignSettings(Section):
    """Campaign runs over sheets."""

    max_rows: int = Field(default=10_000, ge=1, description="Most rows a sheet may have.")
    max_sheet_bytes: int = Field(
        default=32 * 1024 * 1024,
        ge=1024,
        description="Largest sheet file read (checked before reading it; 100,000 rows fit).",
    )
    max_columns: int = Field(default=200, ge=1, description="Most columns a sheet may have.")
    max_cell_chars: int = Field(
        default=50_000, ge=100, description="Longest cell (the longest scripts, 40,000 characters, fit)."
    )
    allow_private_urls: bool = Field(
        default=False,
        description="Fetch inputs given as URLs (actor portraits) from loopback, private and link-local "
        "addresses too (a laptop's own server); off, only public addresses are fetched.",
    )
    input_roots: list[Path] = Field(
        default_factory=list,
        description="Folders, beside each sheet's own, that a sheet's files (audio) may come from; a "
        "file elsewhere (through '..', an absolute path or a symlink) is refused.",
    )
    parameter_roots: list[Path] = Field(
        default_factory=list,
        description="Folders that file paths in a deployment's parameters (run-campaign's sheet, "
        "generate-video's audio, sweep-inbox's inbox) must lie in, so an API caller cannot make a "
        "worker read files it chooses; relative paths start at the first. Default: <data dir>/sheets "
        "and <data dir>/inbox.",
    )
    parameter_roots_by_flow: dict[str, list[Path]] = Field(
        default_factory=dict,
        description="The same per deployment (its flow's name, e.g. generate-video), in place of "
        "parameter_roots for that one.",
    )
    cli_any_path: bool = Field(
        default=True,
        description="Paths typed at the CLI (flows run in its own process) may name any local file; off, "
        "they are confined like a deployment's. Runs from a deployment never get this.",
    )
    row_concurrency: int = Field(default=16, ge=1, description="Rows in flight at once.")
    # Jobs in flight per provider. The defaults suit a new account (fal: 2 concurrent requests until
    # invoices raise it; WaveSpeed Bronze: 2); raise them with your account level.
    provider_limits: dict[str, int] = {"fal": 2, "wavespeed": 2, "local": 2, "upload": 8}
    global_limit_prefix: str | None = Field(
        default=None,
        description="With several workers: also hold a slot of the Prefect global concurrency limit "
        "'<prefix><provider>' (e.g. castflow-fal) around each provider job; the limit must exist.",
    )


class Settings(BaseSettings):
    """castflow's configuration. Every field can be set as ``CASTFLOW_<GROUP>__<FIELD>``."""

    model_config = SettingsConfigDict(
        env_prefix="CASTFLOW_",
        env_nested_delimiter="__",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        hide_input_in_errors=True,
    )

    data_dir: Path = Field(default=Path(".castflow"), description="Holds the embedded database and storage.")
    database: DatabaseSettings = DatabaseSettings()
    http: HttpSettings = HttpSettings()
    storage: StorageSettings = StorageSettings()
    providers: ProviderSettings = ProviderSettings()
    # Each vendor's own group (castflow/providers/<vendor>/settings.py).
    fal: FalSettings = FalSettings()
    wavespeed: WaveSpeedSettings = WaveSpeedSettings()
    webhooks: WebhookSettings = WebhookSettings()
    callbacks: CallbackSettings = CallbackSettings()
    prices: PriceSettings = PriceSettings()
    pipeline: PipelineSettings = PipelineSettings()
    campaign: CampaignSettings = CampaignSettings()

    @field_validator("data_dir")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        return value.expanduser().resolve()

    @model_validator(mode="after")
    def _fill_defaults(self) -> Settings:
        if self.storage.root is None:
            self.storage.root = self.data_dir / "storage"
        else:
            self.storage.root = self.storage.root.expanduser().resolve()
        if self.storage.cache_dir is None:
            self.storage.cache_dir = self.data_dir / "cache"
        else:
            self.storage.cache_dir = self.storage.cache_dir.expanduser().resolve()
        return self

    @model_validator(mode="after")
    def _keys_for_providers(self) -> Settings:
        if self.providers.fakes:
            return self  # the fakes bring their own keys and hosts
        if self.providers.image == "fal" and self.providers.fal_key is None:
            raise ValueError("providers.image is 'fal' but CASTFLOW_PROVIDERS__FAL_KEY is not set")
        if self.providers.lipsync == "wavespeed" and self.providers.wavespeed_key is None:
            raise ValueError(
                "providers.lipsync is 'wavespeed' but CASTFLOW_PROVIDERS__WAVESPEED_KEY is not set"
            )
        if self.storage.backend == "supabase":
            sb = self.storage.supabase
            if not sb.url or sb.service_role_key is None:
                raise ValueError(
                    "storage.backend is 'supabase' but CASTFLOW_STORAGE__SUPABASE__URL or "
                    "CASTFLOW_STORAGE__SUPABASE__SERVICE_ROLE_KEY is not set"
                )
        return self

    def prompt_limit(self, image_model: str | None) -> int:
        """Longest scene prompt the image-edit model takes (the pipeline default for models not listed)."""
        return self.pipeline.prompt_limits.get(image_model or "", self.pipeline.max_prompt_chars)

    def parameter_roots(self, flow: str) -> list[Path]:
        """The folders the file paths in ``flow``'s parameters must lie in, from a deployment."""
        c = self.campaign
        roots = c.parameter_roots_by_flow.get(flow) or c.parameter_roots
        return roots or [self.data_dir / "sheets", self.data_dir / "inbox"]

    def script_limit(self, voice_model: str | None) -> int:
        """Longest script the TTS model takes (the pipeline default for models not listed)."""
        limits = self.pipeline.script_limits
        return limits.get(voice_model or "", self.pipeline.max_script_chars)

    @property
    def database_url(self) -> str:
        url = self.database.url
        return url.get_secret_value() if url else f"sqlite:///{self.data_dir / 'castflow.db'}"

    @property
    def storage_root(self) -> Path:
        assert self.storage.root is not None  # filled by the validator
        return self.storage.root

    @property
    def cache_dir(self) -> Path:
        assert self.storage.cache_dir is not None  # filled by the validator
        return self.storage.cache_dir

    @property
    def is_embedded_db(self) -> bool:
        return self.database_url.startswith("sqlite")


@functools.cache
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return Settings()


def reset_settings() -> None:
    """Forget cached settings (tests and the CLI's ``--data-dir`` use this)."""
    get_settings.cache_clear()
