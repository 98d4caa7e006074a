"""Where castflow keeps media: a protocol and its backends."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol


class Storage(Protocol):
    """Put files at stable keys and hand out URLs for them."""

    def put_file(self, key: str, source: Path, content_type: str) -> str:
        """Store ``source`` at ``key`` (overwriting), streaming; returns the object's URL."""
        ...

    def exists(self, key: str) -> bool: ...

    def url(self, key: str) -> str: ...

    def fetch(self, key: str, dest: Path) -> Path:
        """Copy the object at ``key`` to ``dest`` (a local file) and return it."""
        ...
