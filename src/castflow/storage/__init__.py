"""Where castflow keeps media: a protocol and its backends."""

from __future__ import annotations

import tempfile
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from castflow.settings import Settings


class Storage(Protocol):
    """Put files at stable keys and hand out URLs for them."""

    @property
    def shares_urls(self) -> bool:
        """Whether :meth:`url` gives URLs the providers can fetch (then inputs are not re-uploaded)."""
        ...

    @property
    def location(self) -> str:
        """Where the objects live (a folder, or a Supabase project URL), for messages and cache keys."""
        ...

    @property
    def url_kind(self) -> str:
        """What :meth:`url` hands out: 'file' (a path on this machine: a report beside the objects links
        them relatively), 'public' (lasting links) or 'signed' (links that expire after
        :attr:`url_ttl_s`)."""
        ...

    @property
    def url_ttl_s(self) -> int | None:
        """How long a signed URL lasts (None: links do not expire)."""
        ...

    def put_file(self, key: str, source: Path, content_type: str) -> str:
        """Store ``source`` at ``key`` (overwriting), streaming; returns the object's URL."""
        ...

    def exists(self, key: str) -> bool: ...

    def url(self, key: str) -> str: ...

    def fetch(self, key: str, dest: Path) -> Path:
        """Copy the object at ``key`` to ``dest`` (a local file) and return it."""
        ...

    def list_keys(self, prefix: str) -> list[str]:
        """Keys of the objects directly under ``prefix`` (not in deeper folders)."""
        ...

    def move(self, key: str, dest: str) -> bool:
        """Move an object; False when ``key`` is gone (someone else moved it first)."""
        ...

    def local_path(self, key: str) -> Path:
        """A local file with the object's bytes: the file itself (local) or a cached copy (remote)."""
        ...


def put_bytes(storage: Storage, key: str, data: bytes, content_type: str) -> str:
    """Store a small file made in memory (a caption file, a picture, a page) at ``key``, through a
    temporary file (backends stream from files); returns its URL."""
    with tempfile.TemporaryDirectory(prefix="castflow-put-") as tmp:
        path = Path(tmp) / PurePosixPath(key).name
        path.write_bytes(data)
        return storage.put_file(key, path, content_type)


def build_storage(settings: Settings) -> Storage:
    """The backend chosen by ``settings.storage.backend``."""
    if settings.storage.backend == "supabase":
        from castflow.providers.http import RetryPolicy
        from castflow.storage.supabase.backend import SupabaseStorage

        return SupabaseStorage(
            settings.storage.supabase, settings.cache_dir, policy=RetryPolicy.from_settings(settings.http)
        )
    from castflow.storage.local import LocalStorage

    return LocalStorage(settings.storage_root, public_url=settings.storage.public_url)
