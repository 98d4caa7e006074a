"""Inputs are hostile until proven otherwise: a file a user names is read only if it lies inside the
folders it may come from (symlinks followed first) and is a regular file.

A sheet's ``audio`` cells may name files inside the sheet's folder or inside the configured input roots
(``CASTFLOW_CAMPAIGN__INPUT_ROOTS``); anything else is refused before it is opened, with the path as the
user wrote it. Pipes, devices and folders are refused for what they are (reading a FIFO would hang).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable
from pathlib import Path


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
