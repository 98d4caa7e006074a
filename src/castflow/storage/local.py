"""Local-folder storage: the embedded default. Keys are relative paths; URLs are ``file://``."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path, PurePosixPath


class InvalidKey(ValueError):
    """A storage key that would escape the storage root or is not a plain relative path."""


class LocalStorage:
    """Files under one root folder; writes are atomic (temp file, then rename)."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    shares_urls = False  # file:// URLs: providers get uploads instead
    url_kind = "file"
    url_ttl_s: int | None = None

    @property
    def location(self) -> str:
        return str(self.root)

    def path(self, key: str) -> Path:
        pure = PurePosixPath(key)
        if not key or pure.is_absolute() or any(part in ("", ".", "..") for part in pure.parts):
            raise InvalidKey(f"invalid storage key {key!r}")
        return self.root.joinpath(*pure.parts)

    def put_file(self, key: str, source: Path, content_type: str) -> str:
        dest = self.path(key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=".put-")
        try:
            os.close(fd)
            shutil.copyfile(source, tmp)  # the kernel copies (sendfile/copy_file_range)
            os.replace(tmp, dest)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return self.url(key)

    def exists(self, key: str) -> bool:
        return self.path(key).is_file()

    def url(self, key: str) -> str:
        return self.path(key).as_uri()

    def list_keys(self, prefix: str) -> list[str]:
        folder = self.path(prefix.strip("/")) if prefix.strip("/") else self.root
        if not folder.is_dir():
            return []
        base = prefix.strip("/")
        return sorted(f"{base}/{p.name}" if base else p.name for p in folder.iterdir() if p.is_file())

    def move(self, key: str, dest: str) -> bool:
        target = self.path(dest)
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.rename(self.path(key), target)  # atomic: of two movers, one gets FileNotFoundError
        except FileNotFoundError:
            return False
        return True

    def fetch(self, key: str, dest: Path) -> Path:
        shutil.copyfile(self.path(key), dest)
        return dest

    def local_path(self, key: str) -> Path:
        """The file behind ``key`` (local storage only: lets providers read without a copy)."""
        return self.path(key)
