"""One settings tree for castflow: environment (``CASTFLOW_*``), ``.env`` and defaults, validated at start-up."""

from __future__ import annotations

import functools
import importlib
import json
import typing
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, SecretStr, create_model, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from castflow import providers as _providers
from castflow.section import Section, VendorSection, clean_secret
from castflow.storage.supabase.settings import SupabaseStorageSettings

Resolution = Literal["480p", "720p"]

# Output frame sizes of the lip-sync stage: vertical 9:16, even sides (H.264 needs them even).
FRAME_SIZES: dict[str, tuple[int, int]] = {"480p": (480, 854), "720p": (720, 1280)}

LOCAL_IMAGE_MODEL = "pillow-scene-v1"  # the embedded image editor's model name
BUILTIN_LIMITS = {"local": 2, "upload": 8}  # jobs in flight: the embedded renderers, uploads


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
    public_url: str | None = Field(
        default=None,
        description="Base URL where the local storage folder is served over HTTP (`castflow serve` "
        "serves it on --storage-port and sets this): the videos' URLs become links a browser opens from "
        "the Prefect UI instead of file:// paths.",
    )
    cache_dir: Path | None = Field(
        default=None, description="Local copies of remote objects. Default: <data_dir>/cache."
    )
    supabase: SupabaseStorageSettings = SupabaseStorageSettings()


class ProviderSettings(Section):
    """Which implementation plays each role (speech follows each actor's voice provider)."""

    # 'local' (embedded) or a vendor of castflow.providers.VENDORS that plays the role: a new vendor
    # needs no change here. A vendor's key is in its own group (CASTFLOW_<VENDOR>__KEY).
    image: str = "local"
    speech: Literal["local"] = "local"
    lipsync: str = "local"
    fakes: bool = Field(
        default=False,
        description="Serve every vendor's role (and remote storage) from in-process loopback fakes that "
        "speak their protocols: no keys, no network. For trying a configuration and for benchmarks.",
    )

    @field_validator("image", "lipsync")
    @classmethod
    def _known_provider(cls, value: str) -> str:
        if value != "local" and value not in _providers.VENDORS:
            raise ValueError(f"unknown provider (known: local, {', '.join(_providers.VENDORS)})")
        return value


class WebhookSettings(Section):
    """Signed completion callbacks from the vendors (``castflow webhooks serve``); how each vendor signs
    (its secret, its key set) is in the vendor's own group.

    Polling stays the default; when ``public_url`` is set, submits ask the providers to call it.
    """

    public_url: str | None = Field(
        default=None, description="Public base URL that reaches `castflow webhooks serve`."
    )
    jwks_cache_s: int = Field(default=24 * 3600, ge=60, description="How long a vendor's key set is kept.")
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


class PipelineSettings(Section):
    """Knobs of the video DAG."""

    fps: int = Field(default=25, ge=1, le=60)
    default_resolution: Resolution = "480p"
    product_prompt: str = Field(
        default="{scene}. The person holds the product from the second image naturally in one hand, at chest "
        "height, label facing the camera, the product unchanged.",
        description="The image edit's prompt for a row with a product: {scene} is the row's scene (or "
        "'the same place' without one).",
    )
    max_script_chars: int = Field(default=2_000, ge=1, description="Script limit of models not listed.")
    max_prompt_chars: int = Field(default=2_000, ge=1, description="Scene prompt limit of models not listed.")
    # Per model (characters): the embedded models' here; each vendor lists its own models' in its group
    # (CASTFLOW_<VENDOR>__PROMPT_LIMITS / __SCRIPT_LIMITS). An entry here overrides the vendor's.
    prompt_limits: dict[str, int] = {LOCAL_IMAGE_MODEL: 2_000}
    script_limits: dict[str, int] = {"espeak-ng": 2_000}
    max_audio_seconds: float = Field(default=600.0, gt=0)
    default_formats: list[str] = Field(
        default_factory=list,
        description="Export profiles made for rows that name none (castflow.finish.PROFILES), e.g. "
        '["tiktok"]; the render as it came is always kept.',
    )
    format_seconds: dict[str, tuple[float, float]] = Field(
        default_factory=dict,
        description="Shortest and longest duration each export profile accepts, in seconds, where a "
        'platform changed its limits: {"reels": [3, 90]} (defaults in castflow.finish.PROFILES).',
    )
    fill: Literal["blur", "crop"] = Field(
        default="blur",
        description="How an export profile of another shape than the render is filled: blur (the render "
        "whole over a blurred copy of itself: no face cropped) or crop (the centre).",
    )
    qc_duration_tolerance_s: float = Field(default=0.1, gt=0)
    qc_ratio_tolerance: float = Field(
        default=0.15,
        gt=0,
        lt=0.5,
        description="How far a lip-sync's frame may be from the row's ratio (0.15: 15 %). InfiniteTalk renders "
        "in fixed buckets near the input's ratio (9:16 as 448x832, 16:9 as 896x448; sizes unverified).",
    )
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
    approval_timeout_s: int = Field(
        default=86_400,
        ge=60,
        description="How long a run paused for approval (approval: true) waits for its form before it "
        "fails; the previews stay, and a rerun asks again.",
    )
    approval_poll_s: int = Field(
        default=10,
        ge=1,
        description="How often a run paused for approval asks Prefect whether it was resumed.",
    )
    publish_report: bool = Field(
        default=True,
        description="When a run ends, write the campaign's report, put it in storage beside the videos "
        "and link it (and a thumbnail gallery) from the run's artifacts.",
    )
    # Jobs in flight per provider, in place of the defaults: 2 for the embedded renderers, 8 uploads,
    # and each vendor's CASTFLOW_<VENDOR>__CONCURRENCY (2: what a new account allows).
    provider_limits: dict[str, int] = Field(default_factory=dict)
    global_limit_prefix: str | None = Field(
        default=None,
        description="With several workers: also hold a slot of the Prefect global concurrency limit "
        "'<prefix><provider>' (e.g. castflow-fal) around each provider job; the limit must exist.",
    )
    global_limits: list[str] | None = Field(
        default=None,
        description="The providers whose jobs hold a slot of their Prefect global concurrency limit "
        "(with global_limit_prefix). Default: the vendors (fal, wavespeed): an account's cap binds every "
        "worker at once. local and upload are each machine's own (CPU, bandwidth): capped per process, "
        "unless named here (each slot costs two Prefect API calls).",
    )
    work_pool: str | None = Field(
        default=None,
        description="Run a campaign's rows on this Prefect work pool: the run splits them into chunks, "
        "one flow run of the campaign-chunk deployment each, which any worker of the pool (on any "
        "machine) picks up, and follows them in the database. Empty: every row runs in the run's own "
        "process. Needs a Prefect server and castflow's database shared by every worker.",
    )
    chunk_rows: int = Field(
        default=250,
        ge=1,
        le=5_000,
        description="Rows per chunk on a work pool. Each chunk is a flow run in its own process, about "
        "3 CPU seconds to start (bench/scaleout_bench.py, 1,000 rows, 2 workers of 2 slots: 131 s in "
        "chunks of 100, 114 s of 250, 101 s of 500, where both chunks went to one worker); fewer, "
        "larger chunks cost less, but a campaign needs as many chunks as its workers have slots to use "
        "them all.",
    )
    chunk_deployment: str = Field(
        default="campaign-chunk/campaign-chunk",
        description="The deployment (flow/deployment) that runs a chunk on the work pool.",
    )
    chunk_attempts: int = Field(
        default=3,
        ge=1,
        description="Times a chunk is started before its unfinished rows end failed: a chunk is started "
        "again when its worker died (its lease lapsed) or its flow run ended without finishing it.",
    )
    follow_s: float = Field(
        default=2.0,
        gt=0,
        description="How often a run on a work pool reads its rows' progress from the database.",
    )


class CoreSettings(BaseSettings):
    """castflow's configuration. Every field can be set as ``CASTFLOW_<GROUP>__<FIELD>``.

    ``Settings`` below is this tree plus one group per registered vendor (``CASTFLOW_<VENDOR>__…``),
    declared in the vendor's folder: nothing here names a vendor.
    """

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
    webhooks: WebhookSettings = WebhookSettings()
    callbacks: CallbackSettings = CallbackSettings()
    pipeline: PipelineSettings = PipelineSettings()
    campaign: CampaignSettings = CampaignSettings()
    # Read only to move the price table of older releases (CASTFLOW_PRICES__…) into the vendors' groups.
    prices: dict[str, Any] = Field(default_factory=dict, exclude=True)

    @field_validator("data_dir")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        return value.expanduser().resolve()

    @model_validator(mode="before")
    @classmethod
    def _moved_names(cls, data: Any) -> Any:
        """Values under the names of older releases, moved to their vendor's group (the new name wins),
        with a FutureWarning naming the new variable. The old name is then gone from ``data``: a key
        given the old way is held only where the new one is."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        for name, group in vendor_groups().items():
            for (old_group, old_field), field in {("providers", f"{name}_key"): "key", **group.MOVED}.items():
                old = data.get(old_group)
                if not isinstance(old, dict) or old_field not in old:
                    continue
                old = dict(old)
                value = old.pop(old_field)
                data[old_group] = old
                target = data.get(name)
                target = dict(target) if isinstance(target, dict) else {}
                if field not in target:
                    target[field] = _decoded(value, group.model_fields[field].annotation)
                data[name] = target
                warnings.warn(
                    f"CASTFLOW_{old_group.upper()}__{old_field.upper()} is now "
                    f"CASTFLOW_{name.upper()}__{field.upper()} (the old name is still read)",
                    FutureWarning,
                    stacklevel=2,
                )
        return data

    @model_validator(mode="after")
    def _fill_defaults(self) -> CoreSettings:
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
    def _keys_for_providers(self) -> CoreSettings:
        if self.providers.fakes:
            return self  # the fakes bring their own keys and hosts
        for role in ("image", "lipsync"):
            name = getattr(self.providers, role)
            if name != "local" and self.vendor(name).key is None:
                raise ValueError(f"providers.{role} is '{name}' but CASTFLOW_{name.upper()}__KEY is not set")
        if self.storage.backend == "supabase":
            sb = self.storage.supabase
            if not sb.url or sb.service_role_key is None:
                raise ValueError(
                    "storage.backend is 'supabase' but CASTFLOW_STORAGE__SUPABASE__URL or "
                    "CASTFLOW_STORAGE__SUPABASE__SERVICE_ROLE_KEY is not set"
                )
        return self

    def vendor(self, name: str) -> VendorSection:
        """A registered vendor's settings group (``CASTFLOW_<VENDOR>__…``)."""
        group = getattr(self, name, None) if name in _providers.VENDORS else None
        if not isinstance(group, VendorSection):
            raise KeyError(f"unknown vendor {name!r} (known: {', '.join(_providers.VENDORS)})")
        return group

    def global_limit_providers(self) -> tuple[str, ...]:
        """The providers held in a Prefect global concurrency limit when a prefix is set."""
        chosen = self.campaign.global_limits
        return tuple(chosen) if chosen is not None else tuple(_providers.VENDORS)

    def vendor_groups(self) -> dict[str, VendorSection]:
        return {name: self.vendor(name) for name in _providers.VENDORS}

    @property
    def image_model(self) -> str:
        """The image-edit model the settings choose (whose prompt limit a scene must keep)."""
        name = self.providers.image
        return LOCAL_IMAGE_MODEL if name == "local" else self.vendor(name).model_for("image") or name

    def prompt_limit(self, image_model: str | None) -> int:
        """Longest scene prompt the image-edit model takes (the pipeline default for models not listed)."""
        return self._model_limit("prompt_limits", image_model, self.pipeline.max_prompt_chars)

    def _model_limit(self, kind: str, model: str | None, default: int) -> int:
        """A model's limit: the pipeline's entry for it, else its vendor's, else ``default``."""
        mine: dict[str, int] = getattr(self.pipeline, kind)
        if (model or "") in mine:
            return mine[model or ""]
        for group in self.vendor_groups().values():
            theirs: dict[str, int] = getattr(group, kind)
            if (model or "") in theirs:
                return theirs[model or ""]
        return default

    def provider_limits(self) -> dict[str, int]:
        """Jobs in flight per provider in this process: the embedded renderers' and uploads' defaults,
        each vendor's account concurrency, and CASTFLOW_CAMPAIGN__PROVIDER_LIMITS over them."""
        vendors = {name: group.concurrency for name, group in self.vendor_groups().items()}
        return {**BUILTIN_LIMITS, **vendors, **self.campaign.provider_limits}

    def parameter_roots(self, flow: str) -> list[Path]:
        """The folders the file paths in ``flow``'s parameters must lie in, from a deployment."""
        c = self.campaign
        roots = c.parameter_roots_by_flow.get(flow) or c.parameter_roots
        return roots or [self.data_dir / "sheets", self.data_dir / "inbox"]

    def script_limit(self, voice_model: str | None) -> int:
        """Longest script the TTS model takes (the pipeline default for models not listed)."""
        return self._model_limit("script_limits", voice_model, self.pipeline.max_script_chars)

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
def vendor_groups() -> dict[str, type[VendorSection]]:
    """Each registered vendor's settings group, from ``castflow/providers/<vendor>/settings.py``."""
    groups: dict[str, type[VendorSection]] = {}
    for name in _providers.VENDORS:
        group = importlib.import_module(f"castflow.providers.{name}.settings").GROUP
        if not (isinstance(group, type) and issubclass(group, VendorSection)):
            raise TypeError(f"castflow.providers.{name}.settings.GROUP is not a VendorSection")
        groups[name] = group
    return groups


def _decoded(value: Any, annotation: Any) -> Any:
    """An old variable's text as its new field takes it (a price table is JSON, as pydantic-settings
    decodes it for a field it knows)."""
    if isinstance(value, str) and typing.get_origin(annotation) is dict:
        return json.loads(value)
    return value


def _with_vendor_groups() -> type[CoreSettings]:
    """The settings tree with one group per registered vendor, named after it."""
    fields: dict[str, Any] = {
        name: (group, Field(default_factory=group)) for name, group in vendor_groups().items()
    }
    return create_model("Settings", __base__=CoreSettings, __module__=__name__, **fields)


if TYPE_CHECKING:
    Settings = CoreSettings  # a vendor's group is read through Settings.vendor (typed by its settings.of)
else:
    Settings = _with_vendor_groups()


@functools.cache
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return Settings()


def reset_settings() -> None:
    """Forget cached settings (tests and the CLI's ``--data-dir`` use this)."""
    get_settings.cache_clear()
