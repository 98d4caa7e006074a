"""Inputs are hostile until proven otherwise: a file a user names is read only if it lies inside the
folders it may come from (symlinks followed first) and is a regular file.

A sheet's ``audio`` cells may name files inside the sheet's folder or inside the configured input roots
(``CASTFLOW_CAMPAIGN__INPUT_ROOTS``); anything else is refused before it is opened, with the path as the
user wrote it. Pipes, devices and folders are refused for what they are (reading a FIFO would hang).

Every URL fetched on a user's behalf goes through :func:`fetch_public`: http(s) only, public addresses
only (checked after DNS and after every redirect), with size, time and content-type limits. The callbacks
use the same check (:func:`check_public_url`).
"""

from __future__ import annotations

import ipaddress
import os
import socket
import stat
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlparse

import httpx

from castflow.redact import redact

if TYPE_CHECKING:
    from castflow.settings import Settings
    from castflow.storage import Storage


def outside(path: Path, roots: Iterable[Path]) -> bool:
    """Whether ``path`` (resolved, symlinks included) lies outside every root."""
    resolved = path.resolve()
    return not any(resolved.is_relative_to(root.resolve()) for root in roots)


def file_problem(path: Path) -> str | None:
    """Why ``path`` cannot be read as a file (None: a regular file). Never opens it."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "does not exist"
    except NotADirectoryError:
        return "does not exist (a part of its path is a file)"
    except PermissionError:
        return "cannot be read (permission denied)"
    except OSError as exc:
        return f"cannot be read ({exc.strerror or type(exc).__name__})"
    if stat.S_ISDIR(mode):
        return "is a folder, not a file"
    if not stat.S_ISREG(mode):
        kind = (
            "a pipe"
            if stat.S_ISFIFO(mode)
            else "a device"
            if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
            else "a socket"
        )
        return f"is {kind}, not a regular file"
    return None


def confined_file_problem(path: Path, roots: Iterable[Path]) -> str | None:
    """Why ``path`` may not be read: outside the roots (checked first, so nothing outside is even
    looked at), or not a regular file. None: it may be read."""
    roots = list(roots)
    if outside(path, roots):
        where = ", ".join(str(r) for r in roots)
        return f"is outside the folders inputs may come from ({where}; see CASTFLOW_CAMPAIGN__INPUT_ROOTS)"
    return file_problem(path)


# ---- paths in a flow's parameters -------------------------------------------------------------------


class PathRefused(ValueError):
    """A path in a flow's parameters that this run may not read."""


def from_deployment() -> bool:
    """Whether this flow run's parameters came from outside this process: the run was created from a
    deployment (the UI, a schedule, the API), or this process was started by a Prefect runner or worker
    to execute one. A subflow's parameters are our own code's (its parent's were checked)."""
    from prefect.context import FlowRunContext

    ctx = FlowRunContext.get()
    run = ctx.flow_run if ctx is not None else None
    if run is not None and run.parent_task_run_id is not None:
        return False
    if run is not None and run.deployment_id is not None:
        return True
    return bool(os.environ.get("PREFECT__FLOW_RUN_ID"))


def parameter_path(value: str, *, what: str, roots: list[Path], confine: bool, folder: bool = False) -> Path:
    """The path a flow parameter names. Confined (from a deployment, or when the CLI is not trusted),
    it must lie inside ``roots`` (symlinks followed) and a relative path starts at the first root;
    otherwise it is taken as typed, relative to the working directory. The file's kind is checked
    either way (a folder for ``folder``, else a regular file). PathRefused says why, with the path as
    given."""
    path = Path(value).expanduser()
    if confine:
        if not path.is_absolute():
            path = roots[0] / path
        if outside(path, roots):
            where = ", ".join(str(r) for r in roots)
            raise PathRefused(
                f"{what} {value!r} is outside the folders a deployment's parameters may name ({where}): "
                "put it there, or set CASTFLOW_CAMPAIGN__PARAMETER_ROOTS on the worker"
            )
    if folder:
        if path.exists() and not path.is_dir():
            raise PathRefused(f"{what} {value!r} is not a folder")
        return path
    problem = file_problem(path)
    if problem:
        raise PathRefused(f"{what} {value!r} {problem}")
    return path


def flow_path(settings: Settings, flow: str, value: str, *, what: str, folder: bool = False) -> Path:
    """``value`` from ``flow``'s parameters, confined to the flow's parameter roots when it came from a
    deployment (or the CLI is not trusted: ``CASTFLOW_CAMPAIGN__CLI_ANY_PATH=false``)."""
    confine = from_deployment() or not settings.campaign.cli_any_path
    roots = settings.parameter_roots(flow)
    return parameter_path(value, what=what, roots=roots, confine=confine, folder=folder)


def sheet_source(settings: Settings, storage: Storage, value: str, flow: str = "run-campaign") -> SheetSource:
    """The sheet a flow's ``sheet`` parameter gives, in one of three forms:

    - CSV text pasted into the form (a sheet copied from a spreadsheet: tabs, commas or semicolons), told
      by its line break (a path has none): kept as ``<first parameter root>/pasted-<hash>.csv``, so the
      same text pasted again resumes its campaign (default name ``pasted-<hash>``) and relative audio
      paths start at the sheets folder;
    - ``storage:<key>``: an object in castflow's storage (local folder or bucket), fetched;
    - a path, as :func:`flow_path` takes it (from a deployment: inside the parameter roots).
    PathRefused says why a sheet cannot be read, before anything is spent."""
    import hashlib

    text = value.strip("\r\n")
    if "\n" in text or "\r" in text:
        data = (text + "\n").encode("utf-8")
        if len(data) > settings.campaign.max_sheet_bytes:
            raise PathRefused(
                f"the pasted sheet is {len(data) / 2**20:.1f} MiB; the limit is "
                f"{settings.campaign.max_sheet_bytes / 2**20:.0f} MiB (CASTFLOW_CAMPAIGN__MAX_SHEET_BYTES)"
            )
        digest = hashlib.sha256(data).hexdigest()[:12]
        root = settings.parameter_roots(flow)[0]
        path = root / f"pasted-{digest}.csv"
        root.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            import tempfile

            fd, staged = tempfile.mkstemp(dir=root, prefix=".pasted-", suffix=".tmp")
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            os.replace(staged, path)  # whole or not at all: another run may read it at once
        return SheetSource(path, path.stem, "pasted into the form")
    if value.startswith("storage:"):
        key = value.removeprefix("storage:").strip().lstrip("/")
        parts = key.split("/")
        if not key or any(part in ("", ".", "..") for part in parts):
            raise PathRefused(f"sheet {value!r}: give a storage key such as storage:campaigns/spring.csv")
        if not storage.exists(key):
            raise PathRefused(f"sheet {value!r}: no such object in castflow's storage ({storage.location})")
        return SheetSource(storage.local_path(key), Path(key).stem, f"{key} in {storage.location}")
    path = flow_path(settings, flow, value, what="sheet")
    return SheetSource(path, path.stem, str(path))


@dataclass(frozen=True)
class SheetSource:
    """A sheet to read: the local file (relative audio paths start at its folder), the campaign's
    default name and where it came from (for messages)."""

    path: Path
    default_name: str
    origin: str


# ---- URLs ---------------------------------------------------------------------------------------------

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class UrlRefused(Exception):
    """A URL castflow will not fetch (or call), with the reason; never the URL's query (it may hold a
    token). ``non_public``: refused for where it points (a setting may allow that)."""

    def __init__(self, reason: str, *, non_public: bool = False) -> None:
        super().__init__(reason)
        self.non_public = non_public


def resolve_host(host: str) -> list[Address]:
    """The addresses ``host`` resolves to (every one is checked: a name may have several)."""
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except socket.gaierror as exc:
        raise UrlRefused(f"host {host!r} does not resolve") from exc
    return [ipaddress.ip_address(info[4][0]) for info in infos]


def non_public(address: Address) -> bool:
    """Loopback, private, link-local (cloud metadata: 169.254.169.254), multicast, reserved, unspecified."""
    return bool(
        address.is_loopback
        or address.is_private
        or address.is_link_local
        or address.is_multicast
        or address.is_reserved
        or address.is_unspecified
    )


def check_public_url(
    url: str, *, allow_private: bool = False, resolve: Callable[[str], list[Address]] = resolve_host
) -> str:
    """``url`` if it is http(s) with a host that resolves to public addresses only (or ``allow_private``);
    UrlRefused naming the host and the address otherwise. Shared by every fetch and by the callbacks."""
    parts = urlparse(url)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise UrlRefused(
            f"only http(s) URLs with a host are fetched, not {redact(url.split('?', 1)[0])[:100]!r}"
        )
    if allow_private:
        return url
    for address in resolve(parts.hostname):
        if non_public(address):
            raise UrlRefused(
                f"host {parts.hostname!r} resolves to {address}, a non-public address", non_public=True
            )
    return url


def fetch_public(
    url: str,
    dest: Path,
    *,
    max_bytes: int,
    content_types: tuple[str, ...],
    timeout_s: float = 30.0,
    max_redirects: int = 5,
    allow_private: bool = False,
    resolve: Callable[[str], list[Address]] = resolve_host,
    transport: httpx.BaseTransport | None = None,
) -> str:
    """Download ``url`` to ``dest`` through the guard: every hop (redirects followed one by one) is
    checked by :func:`check_public_url` before it is requested; the answer's content type must start
    with one of ``content_types`` and its body stay within ``max_bytes``. Returns the content type.

    The address is checked when the name is resolved here; httpx resolves it again to connect, so a DNS
    answer that changes in between (rebinding) is not caught. Pinning the address needs a transport of
    our own; the time limit and the size cap bound what such a fetch can do."""
    with httpx.Client(transport=transport, timeout=timeout_s, follow_redirects=False) as client:
        for _hop in range(max_redirects + 1):
            check_public_url(url, allow_private=allow_private, resolve=resolve)
            with client.stream("GET", url) as resp:
                if resp.is_redirect:
                    url = str(resp.url.join(resp.headers.get("location", "")))
                    continue
                resp.raise_for_status()
                ctype = str(resp.headers.get("content-type", "")).split(";")[0].strip().lower()
                if not ctype.startswith(content_types):
                    raise UrlRefused(
                        f"answered {ctype or 'no content type'}, not {' or '.join(content_types)}"
                    )
                size = 0
                with open(dest, "wb") as fh:
                    for chunk in resp.iter_bytes():
                        size += len(chunk)
                        if size > max_bytes:
                            raise UrlRefused(f"is larger than {max_bytes // 2**20} MB")
                        fh.write(chunk)
                return ctype
    raise UrlRefused(f"more than {max_redirects} redirects")
