"""Local-folder storage: the embedded default. Keys are relative paths; URLs are ``file://``, or under
``public_url`` when the folder is served over HTTP (``castflow serve``: :func:`serve_folder`)."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING
from urllib.parse import quote

if TYPE_CHECKING:
    import uvicorn


class InvalidKey(ValueError):
    """A storage key that would escape the storage root or is not a plain relative path."""


class LocalStorage:
    """Files under one root folder; writes are atomic (temp file, then rename)."""

    def __init__(self, root: Path, *, public_url: str | None = None) -> None:
        self.root = root.resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.public_url = public_url.rstrip("/") if public_url else None

    shares_urls = False  # file:// or this network's URLs: providers get uploads instead
    url_ttl_s: int | None = None

    @property
    def url_kind(self) -> str:
        return "public" if self.public_url else "file"

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
        path = self.path(key)  # checks the key
        return f"{self.public_url}/{quote(key)}" if self.public_url else path.as_uri()

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


def serve_folder(root: Path, host: str, port: int, *, names: tuple[str, ...] = ()) -> uvicorn.Server:
    """Serve ``root`` read-only over HTTP from a daemon thread (files only: no listing of folders, no
    writes; range requests, so browsers seek in videos). Only requests naming this machine (localhost,
    ``host``, or one of ``names``: the public URL's) are answered, so a web page cannot reach it by
    rebinding its own domain to this address. Returns the running server (``should_exit`` stops it); an
    address in use raises OSError."""
    import socket
    import threading
    import time

    import uvicorn
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.middleware.trustedhost import TrustedHostMiddleware
    from starlette.routing import Mount
    from starlette.staticfiles import StaticFiles

    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    with socket.socket(family, kind, proto) as probe:  # a clear error here, not a log line in the thread
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind(address)
    allowed = sorted({"localhost", "127.0.0.1", "[::1]", host, *names})
    app = Starlette(
        routes=[Mount("/", app=StaticFiles(directory=root, follow_symlink=False))],
        middleware=[Middleware(TrustedHostMiddleware, allowed_hosts=allowed)],
    )
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="off", ws="none")
    server = uvicorn.Server(config)
    threading.Thread(target=server.run, name="castflow-storage", daemon=True).start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    if not server.started:
        raise OSError(f"the storage server did not start on {host}:{port}")
    return server
