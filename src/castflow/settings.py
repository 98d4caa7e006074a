"""One settings tree for castflow: environment (``CASTFLOW_*``), ``.env`` and defaults, validated at start-up."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

Resolution = Literal["480p", "720p"]

# Output frame sizes of the lip-sync stage: vertical 9:16, even sides (H.264 needs them even).
FRAME_SIZES: dict[str, tuple[int, int]] = {"480p": (480, 854), "720p": (720, 1280)}


class DatabaseSettings(BaseModel):
    """Where castflow keeps its own records (not Prefect's)."""

    url: str | None = Field(
        default=None,
        description="SQLAlchemy URL, e.g. postgresql+psycopg://user@host/db. Default: SQLite in the data dir.",
    )
    echo: bool = False
    busy_timeout_ms: int = Field(default=30_000, ge=1_000, description="SQLite busy timeout.")


class StorageSettings(BaseModel):
    """Where finished media lives."""

    backend: Literal["local"] = "local"
    root: Path | None = Field(default=None, description="Local storage folder. Default: <data_dir>/storage.")


class ProviderSettings(BaseModel):
    """Which implementation plays each role."""

    image: Literal["local"] = "local"
    speech: Literal["local"] = "local"
    lipsync: Literal["local"] = "local"
    fal_key: SecretStr | None = None
    wavespeed_key: SecretStr | None = None


class PipelineSettings(BaseModel):
    """Knobs of the video DAG."""

    fps: int = Field(default=25, ge=1, le=60)
    default_resolution: Resolution = "480p"
    max_script_chars: int = Field(default=2_000, ge=1)
    max_audio_seconds: float = Field(default=600.0, gt=0)
    qc_duration_tolerance_s: float = Field(default=0.1, gt=0)
    task_retries: int = Field(default=3, ge=0)
    retry_backoff_s: float = Field(default=2.0, ge=0)
    retry_jitter: float = Field(default=0.5, ge=0)
    max_workers: int = Field(default=8, ge=1, description="Thread pool size of the flow's task runner.")


class Settings(BaseSettings):
    """castflow's configuration. Every field can be set as ``CASTFLOW_<GROUP>__<FIELD>``."""

    model_config = SettingsConfigDict(
        env_prefix="CASTFLOW_",
        env_nested_delimiter="__",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
    )

    data_dir: Path = Field(default=Path(".castflow"), description="Holds the embedded database and storage.")
    database: DatabaseSettings = DatabaseSettings()
    storage: StorageSettings = StorageSettings()
    providers: ProviderSettings = ProviderSettings()
    pipeline: PipelineSettings = PipelineSettings()

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
        return self

    @property
    def database_url(self) -> str:
        return self.database.url or f"sqlite:///{self.data_dir / 'castflow.db'}"

    @property
    def storage_root(self) -> Path:
        assert self.storage.root is not None  # filled by the validator
        return self.storage.root

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
