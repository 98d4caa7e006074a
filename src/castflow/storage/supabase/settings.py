"""Supabase Storage's settings group (``CASTFLOW_STORAGE__SUPABASE__…``): project URL, key, buckets, uploads."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr, field_validator

from castflow.section import Section, clean_secret


class SupabaseStorageSettings(Section):
    """Supabase Storage (the ``supabase`` storage backend). Buckets are chosen by the key's media type."""

    url: str = Field(default="", description="Project URL, e.g. https://<ref>.supabase.co (or a fake's).")
    service_role_key: SecretStr | None = None

    _key = field_validator("service_role_key")(clean_secret)
    audio_bucket: str = "ugc-audio"
    video_bucket: str = "ugc-video"
    image_bucket: str = "ugc-images"
    other_bucket: str = Field(default="ugc-files", description="Keys that are not audio, video or image.")
    url_mode: Literal["public", "signed"] = Field(
        default="signed", description="public: the bucket is public; signed: time-limited signed URLs."
    )
    signed_url_ttl_s: int = Field(default=7 * 24 * 3600, ge=60)
    tus_threshold_bytes: int = Field(
        default=6 * 1024 * 1024, ge=0, description="Uploads above this size use TUS (resumable)."
    )
    tus_chunk_bytes: int = Field(default=6 * 1024 * 1024, ge=256 * 1024)
    tus_url: str = Field(
        default="",
        description="TUS endpoint. Default: <url>/storage/v1/upload/resumable; Supabase advises the direct "
        "host https://<ref>.storage.supabase.co/storage/v1/upload/resumable for big files.",
    )
    timeout_s: float = Field(default=300, gt=0)
    cache_max_bytes: int = Field(
        default=2 * 1024**3, ge=0, description="Local copies kept at most (least recently used go first)."
    )
