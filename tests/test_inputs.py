"""URLs fetched on a user's behalf go through one guard: http(s), public addresses only (after DNS and
after every redirect), content type and size bounded. The callbacks use the same check."""

from __future__ import annotations

import functools
import http.server
import ipaddress
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from castflow.actors import ActorFileError, ActorSpec, _load_portrait
from castflow.inputs import UrlRefused, check_public_url, fetch_public
from castflow.models import Voice
from castflow.portraits import SAMPLE_LOOKS, draw_portrait

PUBLIC = ipaddress.ip_address("93.184.216.34")


def resolver(table: dict[str, str]) -> functools.partial[list[ipaddress.IPv4Address | ipaddress.IPv6Address]]:
    def resolve(names: dict[str, str], host: str) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
        return [ipaddress.ip_address(names.get(host, host))]

    return functools.partial(resolve, table)


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/x",
        "http://169.254.169.254/latest/meta-data/",
        "http://10.0.0.5/a.png",
        "http://[::1]/a.png",
        "http://metadata.internal/a.png",
    ],
)
def test_non_public_addresses_are_refused(url: str) -> None:
    resolve = resolver({"metadata.internal": "169.254.169.254"})
    with pytest.raises(UrlRefused, match="non-public address"):
        check_public_url(url, resolve=resolve)
    assert check_public_url(url, allow_private=True, resolve=resolve) == url


def test_only_http_urls_are_fetched() -> None:
    for url in ["file:///etc/passwd", "ftp://example.com/a.png", "http:///nohost"]:
        with pytest.raises(UrlRefused, match="only http"):
            check_public_url(url)


def test_a_redirect_to_a_private_address_is_refused_before_it_is_followed(tmp_path: Path) -> None:
    asked: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        asked.append(str(request.url))
        return httpx.Response(302, headers={"location": "http://169.254.169.254/latest/meta-data/"})

    with pytest.raises(UrlRefused, match=r"169\.254\.169\.254"):
        fetch_public(
            "https://cdn.example.com/face.png",
            tmp_path / "out",
            max_bytes=1024,
            content_types=("image/",),
            resolve=resolver({"cdn.example.com": str(PUBLIC)}),
            transport=httpx.MockTransport(handler),
        )
    assert asked == ["https://cdn.example.com/face.png"]  # the metadata address was never asked


def test_content_type_and_size_are_bounded(tmp_path: Path) -> None:
    resolve = resolver({"cdn.example.com": str(PUBLIC)})

    def page(_request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"content-type": "text/html"}, content=b"<html>")

    with pytest.raises(UrlRefused, match="answered text/html, not image/"):
        fetch_public(
            "https://cdn.example.com/a", tmp_path / "o", max_bytes=10, content_types=("image/",),
            resolve=resolve, transport=httpx.MockTransport(page),
        )  # fmt: skip

    def huge(_request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"content-type": "image/png"}, content=b"x" * (3 * 2**20))

    with pytest.raises(UrlRefused, match="larger than 2 MB"):
        fetch_public(
            "https://cdn.example.com/a", tmp_path / "o", max_bytes=2 * 2**20, content_types=("image/",),
            resolve=resolve, transport=httpx.MockTransport(huge),
        )  # fmt: skip


@pytest.fixture
def loopback_portrait(tmp_path: Path) -> Iterator[str]:
    """A real HTTP server on 127.0.0.1 serving a PNG portrait."""
    served = tmp_path / "served"
    served.mkdir()
    draw_portrait(next(iter(SAMPLE_LOOKS.values()))).save(served / "face.png", format="PNG")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/face.png"
    server.shutdown()
    server.server_close()


def test_a_portrait_url_on_a_private_address_is_refused_unless_allowed(
    loopback_portrait: str, tmp_path: Path
) -> None:
    voice = Voice(provider="local", model="espeak-ng", voice_id="en-us")
    spec = ActorSpec(key="lee", name="Lee", portrait=loopback_portrait, voice=voice)
    with pytest.raises(ActorFileError, match="non-public address"):
        _load_portrait(spec, tmp_path, tmp_path)
    loaded = _load_portrait(spec, tmp_path, tmp_path, allow_private=True)  # a laptop's own server
    assert loaded.spec.key == "lee"


# ---- paths in a deployment's parameters ----------------------------------------------------------------


def test_a_deployment_parameter_path_stays_inside_its_roots(tmp_path: Path) -> None:
    import os

    from castflow.inputs import PathRefused, parameter_path

    roots = [tmp_path / "sheets", tmp_path / "inbox"]
    for root in roots:
        root.mkdir()
    (roots[0] / "spring.csv").write_text("row_id,actor,script\n", encoding="utf-8")
    (tmp_path / "secret.csv").write_text("x\n", encoding="utf-8")
    (roots[0] / "link.csv").symlink_to(tmp_path / "secret.csv")
    os.mkfifo(roots[0] / "pipe.csv")

    # A relative name starts at the first root, not at the worker's working directory.
    assert parameter_path("spring.csv", what="sheet", roots=roots, confine=True) == roots[0] / "spring.csv"
    for typed in ("../secret.csv", str(tmp_path / "secret.csv"), "link.csv", "/etc/hostname"):
        with pytest.raises(PathRefused, match="outside the folders a deployment's parameters may name") as e:
            parameter_path(typed, what="sheet", roots=roots, confine=True)
        assert repr(typed) in str(e.value)  # the path as the caller gave it
    with pytest.raises(PathRefused, match="is a pipe"):
        parameter_path("pipe.csv", what="sheet", roots=roots, confine=True)
    with pytest.raises(PathRefused, match="does not exist"):
        parameter_path("missing.csv", what="sheet", roots=roots, confine=True)
    # A folder parameter (the inbox) may be a root itself, or not exist yet; a file is not a folder.
    assert parameter_path(str(roots[1]), what="inbox", roots=roots, confine=True, folder=True) == roots[1]
    with pytest.raises(PathRefused, match="not a folder"):
        parameter_path("spring.csv", what="inbox", roots=roots, confine=True, folder=True)
    # Not confined (the CLI's own user): any local file, still only a regular one.
    assert parameter_path(str(tmp_path / "secret.csv"), what="sheet", roots=roots, confine=False).is_file()
    with pytest.raises(PathRefused, match="is a pipe"):
        parameter_path(str(roots[0] / "pipe.csv"), what="sheet", roots=roots, confine=False)


def test_a_process_started_to_execute_a_flow_run_counts_as_a_deployment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from castflow.inputs import from_deployment

    monkeypatch.delenv("PREFECT__FLOW_RUN_ID", raising=False)
    assert not from_deployment()  # this test's own process: nobody else chose its parameters
    monkeypatch.setenv("PREFECT__FLOW_RUN_ID", "8c4a5a6e-2d2e-4b8e-9d3c-1f4f9f1b2c3d")  # a runner's child
    assert from_deployment()


def test_deployment_roots_default_to_the_data_dirs_sheets_and_inbox_and_may_differ_per_flow(
    tmp_path: Path,
) -> None:
    from castflow.settings import CampaignSettings, Settings

    s = Settings(data_dir=tmp_path)
    assert s.parameter_roots("run-campaign") == [tmp_path / "sheets", tmp_path / "inbox"]
    s = Settings(
        data_dir=tmp_path,
        campaign=CampaignSettings(
            parameter_roots=[tmp_path / "shared"],
            parameter_roots_by_flow={"generate-video": [tmp_path / "vo"]},
        ),
    )
    assert s.parameter_roots("run-campaign") == [tmp_path / "shared"]
    assert s.parameter_roots("generate-video") == [tmp_path / "vo"]
