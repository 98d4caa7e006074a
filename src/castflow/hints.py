"""Messages that name the fix, shared by the CLI, sheets and flows."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


def unknown_actor(key: str, known: Iterable[str]) -> str:
    """Why an actor key is not found, and what to do: import actors when there are none, the key in
    its right case, or the closest known keys."""
    names = sorted(known)
    if not names:
        return (
            f"unknown actor {key!r}: no actor is imported yet (`castflow actors samples` adds ava, leo "
            "and maya; `castflow actors import FILE` your own)"
        )
    same = [n for n in names if n.casefold() == key.casefold()]
    close = same or difflib.get_close_matches(key, names, n=3, cutoff=0.6)
    hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    shown = ", ".join(names[:20]) + (f" and {len(names) - 20} more" if len(names) > 20 else "")
    return f"unknown actor {key!r} (known: {shown}){hint}"
