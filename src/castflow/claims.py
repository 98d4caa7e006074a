"""Who runs a stage: the owner id of this process, whether another owner is still alive, and the lease.

A stage row is claimed by one process at a time (``queries.claim_stage_run``, one conditional upsert).
The claim names its owner (``host:pid:start:nonce``) and holds until ``lease_until``, which a daemon
thread renews while the process lives. Another process takes a claim over only when

- the owner runs on this host and is gone (its pid is free, or now belongs to a process started at
  another time): known at once, so a rerun after a crash never waits out its predecessor's lease; or
- the lease has lapsed (an owner on another machine, which this one cannot inspect).
"""

from __future__ import annotations

import collections
import logging
import os
import secrets
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

log = logging.getLogger(__name__)


def _start_ticks(pid: int) -> str | None:
    """When process ``pid`` started (clock ticks since boot, /proc/<pid>/stat field 22); None if no such
    process (or no /proc: not Linux)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read().decode(errors="replace")
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may hold spaces: split after its last ')'.
    fields = stat[stat.rfind(")") + 2 :].split()
    return fields[19] if len(fields) > 19 else None


@dataclass(frozen=True)
class Owner:
    host: str
    pid: int
    start: str
    nonce: str

    def __str__(self) -> str:
        return f"{self.host}:{self.pid}:{self.start}:{self.nonce}"

    @classmethod
    def parse(cls, text: str | None) -> Owner | None:
        parts = (text or "").rsplit(":", 3)
        if len(parts) != 4 or not parts[1].isdigit():
            return None
        return cls(parts[0], int(parts[1]), parts[2], parts[3])


_ME: Owner | None = None
_ME_LOCK = threading.Lock()


def me() -> Owner:
    """This process's owner id (a new one in a forked child)."""
    global _ME
    with _ME_LOCK:
        if _ME is None or _ME.pid != os.getpid():
            pid = os.getpid()
            _ME = Owner(socket.gethostname()[:120], pid, _start_ticks(pid) or "0", secrets.token_hex(4))
        return _ME


def is_dead(owner: str | None) -> bool:
    """True when ``owner`` surely no longer runs: a process of this host whose pid is free or taken by
    a process started at another time. False when it may live (it runs, or runs elsewhere)."""
    found = Owner.parse(owner)
    if found is None:
        return owner is not None  # an unreadable owner cannot renew anything: treat it as gone
    mine = me()
    if found.host != mine.host:
        return False
    if mine.start == "0":  # no /proc here (not Linux): processes cannot be inspected, only leases tell
        return found.pid == mine.pid and found.nonce != mine.nonce
    if found.pid == mine.pid:
        return found.start != mine.start or found.nonce != mine.nonce
    return _start_ticks(found.pid) != found.start


class LeaseKeeper:
    """Renews the leases of this process's claims every third of the lease, in a daemon thread.

    ``renew(keys)`` runs one statement for the claims held now (:meth:`hold`); a failure
    (the database blinked) is logged and retried on the next beat, and a claim whose lease lapses in
    the meantime is one another process may take over: the claim rules keep that safe (a recorded
    request is re-attached to, a send in progress is never repeated).
    """

    def __init__(self, renew: Callable[[list[str]], object], lease_s: float) -> None:
        self._renew = renew
        self._interval = max(lease_s / 3, 0.05)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._held: collections.Counter[str] = collections.Counter()
        self._failing = False

    @contextmanager
    def hold(self, key: str) -> Iterator[None]:
        """Renew the claim of ``key`` while the block runs (the stage's work); a claim let go of, or
        left behind by an error, then lapses as it should."""
        with self._lock:
            self._held[key] += 1
        self.start()
        try:
            yield
        finally:
            with self._lock:
                self._held[key] -= 1
                if self._held[key] <= 0:
                    del self._held[key]

    def start(self) -> None:
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="castflow-leases", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            with self._lock:
                keys = list(self._held)
            if not keys:
                continue
            try:
                self._renew(keys)
            except Exception as exc:
                if not self._failing:  # once per outage, not once per beat
                    log.warning("could not renew stage leases (%s); retrying", type(exc).__name__)
                self._failing = True
            else:
                self._failing = False


__all__ = ["LeaseKeeper", "Owner", "is_dead", "me"]
