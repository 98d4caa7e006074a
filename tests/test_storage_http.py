"""The local storage folder served over HTTP (``castflow serve``): the links the Prefect UI shows open in
a browser; files only, read-only, ranges for seeking, nothing outside the folder."""

from __future__ import annotations

import socket
from pathlib import Path

import httpx

from castflow.storage.local import LocalStorage, serve_folder


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def raw_get(port: int, path: str, host: str = "127.0.0.1") -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
        conn.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        return conn.recv(200)


def test_urls_follow_the_public_url_when_the_folder_is_served(tmp_path: Path) -> None:
    plain = LocalStorage(tmp_path / "s")
    assert plain.url_kind == "file"
    assert plain.url("campaigns/a b.mp4").startswith("file://")
    served = LocalStorage(tmp_path / "s", public_url="http://media.local:8788/")
    assert served.url_kind == "public"
    assert served.url("campaigns/a b.mp4") == "http://media.local:8788/campaigns/a%20b.mp4"


def test_the_served_folder_gives_files_with_ranges_and_nothing_else(tmp_path: Path) -> None:
    root = tmp_path / "storage"
    (root / "campaigns").mkdir(parents=True)
    (root / "campaigns" / "v.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"x" * 1000)
    (tmp_path / "secret.txt").write_text("outside", encoding="utf-8")
    port = free_port()
    server = serve_folder(root, "127.0.0.1", port)
    try:
        base = f"http://127.0.0.1:{port}"
        whole = httpx.get(f"{base}/campaigns/v.mp4", timeout=5)
        assert whole.status_code == 200
        assert whole.headers["accept-ranges"] == "bytes"
        part = httpx.get(f"{base}/campaigns/v.mp4", headers={"Range": "bytes=4-7"}, timeout=5)
        assert (part.status_code, part.content) == (206, b"ftyp")
        assert httpx.get(f"{base}/campaigns/", timeout=5).status_code == 404  # no listing
        # Paths sent as written (httpx would tidy '..' away before sending).
        assert raw_get(port, "/campaigns/../../secret.txt").startswith(b"HTTP/1.1 404")
        assert raw_get(port, "/../secret.txt").startswith(b"HTTP/1.1 404")
        assert httpx.get(f"{base}/%2e%2e/secret.txt", timeout=5).status_code == 404
        (root / "campaigns" / "link.txt").symlink_to(tmp_path / "secret.txt")
        assert httpx.get(f"{base}/campaigns/link.txt", timeout=5).status_code == 404  # a link out
        # A page of another site rebinding its name to this address is not answered.
        assert raw_get(port, "/campaigns/v.mp4", host="evil.example").startswith(b"HTTP/1.1 400")
        assert httpx.put(f"{base}/campaigns/w.mp4", content=b"x", timeout=5).status_code == 405
        assert not (root / "campaigns" / "w.mp4").exists()
    finally:
        server.should_exit = True
