"""Ctrl-C that behaves: the first SIGINT (or SIGTERM) asks the process to stop, the second exits at once.

After the first, no new row and no new stage starts, and a stage waiting on a provider's job stops
waiting (its request id is recorded before any wait, so the rerun re-attaches to the job instead of
paying again). Nothing is lost by the second either: it exits without waiting for anything, and every
submitted job is already named in the database or in the submit journal (castflow.journal).

Only the stop request lives here (a threading.Event and the exception it raises): the pipeline, the
provider waits and the campaign flow ask :func:`check`; the CLI installs :func:`handling_signals`.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

_STOP = threading.Event()


class Interrupted(Exception):
    """The user asked to stop: this video (or stage) was not finished, and a rerun resumes it.
    ``used``: the stages the video had used (recorded with it, as for a skipped video)."""

    used: list[Any] | None = None


def stopping() -> bool:
    return _STOP.is_set()


def check(what: str = "stopped") -> None:
    """Raise :class:`Interrupted` once a stop was asked for."""
    if _STOP.is_set():
        raise Interrupted(f"interrupted ({what}); run it again to resume")


def request_stop() -> None:
    _STOP.set()


def reset() -> None:
    _STOP.clear()


@contextlib.contextmanager
def handling_signals(
    on_first: Callable[[], None], on_second: Callable[[], None] | None = None, *, restore: bool = True
) -> Iterator[None]:
    """Within: the first SIGINT/SIGTERM requests a stop and calls ``on_first`` (one line to the user);
    the second calls ``on_second`` and exits at once with status 130. ``restore=False`` (a process
    that ends with the command) keeps them to the end, so a Ctrl-C while Prefect drains its last
    events at exit is no KeyboardInterrupt either. Outside the main thread (where Python cannot
    install handlers) nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, _frame: Any) -> None:
        if not _STOP.is_set():
            _STOP.set()
            on_first()
            return
        if on_second is not None:
            on_second()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(130)  # at once: nothing to lose (every submitted job is recorded or journaled)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        if restore:
            for sig, old in previous.items():
                signal.signal(sig, old)
            reset()


def ignore_at_the_very_end() -> None:
    """From the last exit handler on, a Ctrl-C is ignored. Python resets its handlers to the default
    before it tears the interpreter down, so a Ctrl-C in that last moment (a user pressing it twice as a
    campaign ends) killed the process by the signal instead of letting it exit with its status. Exit
    handlers run last-registered first: call this before anything else registers one (the console
    script does, first thing), so Prefect's own exit work (shipping logs and events) stays
    interruptible."""
    atexit.register(signal.signal, signal.SIGINT, signal.SIG_IGN)
