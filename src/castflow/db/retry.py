"""Transactions that outlast a database blink: retried on connection-level errors, for a bounded time.

A PostgreSQL restart, a failover, a network hiccup or a locked/full SQLite file make a statement fail
with an error that says nothing about the statement itself. Every per-row transaction of castflow is
safe to run again (claims, upserts and updates keyed by stage or request), so :func:`run_tx` reruns the
whole transaction with growing pauses until ``retry_s`` seconds have passed; then it raises
:class:`DatabaseUnavailable`, one line that names the database (without its password).
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable
from typing import TypeVar

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.orm import Session

from castflow.db.session import connection_scope, session_scope
from castflow.redact import redact

log = logging.getLogger(__name__)
T = TypeVar("T")

# PostgreSQL SQLSTATEs worth waiting out: serialization failure, deadlock, admin shutdown, crash
# shutdown, cannot connect now, too many connections, disk full / out of memory (class 53).
_PG_TRANSIENT = ("40001", "40P01", "57P01", "57P02", "57P03", "53300", "53100", "53200")
# SQLite messages of the same kind (another process holds the lock past the busy timeout, disk full).
_SQLITE_TRANSIENT = ("database is locked", "disk i/o error", "database or disk is full", "unable to open")


class DatabaseUnavailable(Exception):
    """The database stayed unreachable for the whole retry window."""


def is_transient(exc: BaseException) -> bool:
    """An error of the connection or the server's state, not of the statement."""
    if not isinstance(exc, sa_exc.DBAPIError):
        return False
    if exc.connection_invalidated:
        return True
    orig = exc.orig
    code = getattr(orig, "sqlstate", None)
    if code:  # the server answered: only the states above are worth waiting out
        return str(code) in _PG_TRANSIENT or str(code).startswith("08")
    if isinstance(orig, sqlite3.Error):  # sqlite3 files "no such table" as OperationalError too
        return any(text in str(orig).lower() for text in _SQLITE_TRANSIENT)
    return isinstance(exc, sa_exc.InterfaceError | sa_exc.OperationalError)  # no answer from the server


def describe_url(engine: sa.Engine) -> str:
    """The database's URL without its password (nor one passed as a query parameter)."""
    return redact(engine.url.render_as_string(hide_password=True))


def _short(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None) or exc
    first = str(orig).strip().splitlines()
    return f"{type(orig).__name__}: {first[0][:200]}" if first else type(orig).__name__


def describe_error(exc: sa_exc.DBAPIError, url: str) -> str:
    """One line for a database that cannot be used: which one (no password) and why."""
    shown = sa.engine.make_url(url).render_as_string(hide_password=True)
    return redact(f"database {shown} unavailable ({_short(exc)})")


def retrying(engine: sa.Engine, work: Callable[[], T], *, retry_s: float, what: str = "") -> T:
    """Run ``work`` (one whole transaction) until it succeeds, retrying transient database errors for up
    to ``retry_s`` seconds (pauses 0.1 s doubling to 2 s)."""
    deadline = time.monotonic() + retry_s
    pause = 0.1
    warned = False
    while True:
        try:
            return work()
        except Exception as exc:
            if not is_transient(exc):
                raise
            left = deadline - time.monotonic()
            if left <= 0:
                raise DatabaseUnavailable(
                    f"database {describe_url(engine)} unreachable for {retry_s:.0f} s "
                    f"({_short(exc)}){f' while {what}' if what else ''}"
                ) from None
            if not warned:
                log.warning(
                    "database %s: %s; retrying for up to %.0f s", describe_url(engine), _short(exc), left
                )
                warned = True
            time.sleep(min(pause, left))
            pause = min(pause * 2, 2.0)


def run_tx(engine: sa.Engine, fn: Callable[[sa.Connection], T], *, retry_s: float, what: str = "") -> T:
    """``fn`` in one Core transaction, retried as :func:`retrying` says."""

    def work() -> T:
        with connection_scope(engine) as conn:
            return fn(conn)

    return retrying(engine, work, retry_s=retry_s, what=what)


def run_session(engine: sa.Engine, fn: Callable[[Session], T], *, retry_s: float, what: str = "") -> T:
    """``fn`` in one ORM session's transaction, retried as :func:`retrying` says."""

    def work() -> T:
        with session_scope(engine) as session:
            return fn(session)

    return retrying(engine, work, retry_s=retry_s, what=what)


__all__ = ["DatabaseUnavailable", "describe_url", "is_transient", "retrying", "run_session", "run_tx"]
