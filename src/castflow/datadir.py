"""The data directory, checked before anything opens a database in it, and its stale temporary folders.

SQLite's own error for a folder it cannot write ends in ``unable to open database file``, naming neither
the folder nor the setting that moves it; :func:`check_data_dir` says both, in one line.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

DATA_DIR_ENV = "CASTFLOW_DATA_DIR"  # Settings.data_dir (prefix CASTFLOW_)

_DISK_FULL = {errno.ENOSPC, errno.EDQUOT}


class DataDirError(Exception):
    """A data directory castflow cannot use: one line naming it, the reason and the setting to change."""


def check_data_dir(path: Path, *, setting: str = DATA_DIR_ENV) -> None:
    """Create ``path`` (and its parents) if missing and prove it writable with a probe file created and
    removed there, as a database and its journal will be. ``setting`` is the environment variable named
    in the error (Prefect's home is checked the same way under ``PREFECT_HOME``)."""
    shown = _shown(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise DataDirError(
            f"data directory {shown} is a file, not a folder: set {setting} to a writable folder"
        ) from None
    except OSError as exc:
        raise DataDirError(_message(shown, "cannot be created", exc, setting)) from None
    try:
        # Unbuffered: the write reaches the file system at once (a full disk fails here, and the probe
        # is still removed; a buffered one would fail again on close and stay).
        with tempfile.NamedTemporaryFile(dir=path, prefix=".castflow-probe-", buffering=0) as probe:
            probe.write(b"castflow data directory probe\n")
    except OSError as exc:
        raise DataDirError(_message(shown, "is not writable", exc, setting)) from None


def _message(shown: str, failure: str, exc: OSError, setting: str) -> str:
    reason = exc.strerror or type(exc).__name__
    if exc.errno in _DISK_FULL:
        return (
            f"data directory {shown} is on a full disk ({reason}): free some space or set {setting} "
            "to a folder on another disk"
        )
    return f"data directory {shown} {failure} ({reason}): set {setting} to a writable folder"


def _shown(path: Path) -> str:
    """The path as given, quoted only if it holds a newline or another unprintable character (the
    message stays one line)."""
    text = str(path)
    return text if text.isprintable() else repr(text)


def clean_stale_temp(root: Path, alive: Callable[[str], bool]) -> int:
    """Remove the subfolders of ``root`` named after an owner for which ``alive(name)`` is False: what a
    killed process left behind. Returns how many were removed. Symlinks and files are left alone (never
    followed), and so are folders whose owner lives; ``alive`` gets every subfolder name, so it must
    answer True for a name that is no owner id. File system errors are ignored: what could not be
    removed stays for the next clean-up."""
    try:
        entries = list(os.scandir(root))
    except OSError:
        return 0
    removed = 0
    for entry in entries:
        try:
            if not entry.is_dir(follow_symlinks=False):
                continue
        except OSError:
            continue
        if alive(entry.name):
            continue
        shutil.rmtree(entry.path, ignore_errors=True)  # never follows a symlink inside
        if not os.path.lexists(entry.path):
            removed += 1
    return removed
