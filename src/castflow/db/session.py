"""Engines and sessions: SQLite tuned for concurrent writers, PostgreSQL through psycopg 3."""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.orm import Session, sessionmaker


def make_engine(url: str, *, busy_timeout_ms: int = 30_000, echo: bool = False) -> sa.Engine:
    """Create an engine; on SQLite every transaction takes the write lock up front.

    ``BEGIN IMMEDIATE`` plus WAL and a busy timeout is what keeps concurrent tasks from ever seeing
    ``database is locked``: a deferred transaction that reads first and writes later cannot wait for the
    lock (SQLite refuses the upgrade at once), an immediate one queues on the busy timeout instead.
    """
    if url.startswith("sqlite"):
        engine = sa.create_engine(
            url,
            echo=echo,
            connect_args={"timeout": busy_timeout_ms / 1000, "check_same_thread": False},
        )

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_conn: sqlite3.Connection, _record: Any) -> None:
            dbapi_conn.isolation_level = None  # we issue BEGIN ourselves
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()

        @event.listens_for(engine, "begin")
        def _on_begin(conn: sa.Connection) -> None:
            conn.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    return sa.create_engine(url, echo=echo, pool_pre_ping=True)


_ENGINES: dict[tuple[str, int, bool], sa.Engine] = {}
_ENGINES_LOCK = threading.Lock()


def get_engine(url: str, *, busy_timeout_ms: int = 30_000, echo: bool = False) -> sa.Engine:
    """One engine per URL per process."""
    key = (url, busy_timeout_ms, echo)
    with _ENGINES_LOCK:
        if key not in _ENGINES:
            _ENGINES[key] = make_engine(url, busy_timeout_ms=busy_timeout_ms, echo=echo)
        return _ENGINES[key]


def dispose_engines() -> None:
    """Close every cached engine (tests, and before a fork)."""
    with _ENGINES_LOCK:
        for engine in _ENGINES.values():
            engine.dispose()
        _ENGINES.clear()
        _FACTORIES.clear()
        _WRITERS.clear()


_WRITERS: dict[int, threading.RLock] = {}


def _writer_lock(engine: sa.Engine) -> threading.RLock | None:
    """SQLite: one transaction at a time per process, queued on a Python lock.

    SQLite lets one writer in; the others would wait in its busy handler, which sleeps in growing steps
    (up to 100 ms) instead of waking when the lock frees. With many threads that turns milliseconds of
    work into seconds of waiting. Other processes still coordinate through the busy timeout.
    """
    if engine.dialect.name != "sqlite":
        return None
    with _ENGINES_LOCK:
        return _WRITERS.setdefault(id(engine), threading.RLock())


_FACTORIES: dict[int, tuple[sa.Engine, sessionmaker[Session]]] = {}


def _factory(engine: sa.Engine) -> sessionmaker[Session]:
    """One session factory per engine (building one per session costs more than a short transaction)."""
    found = _FACTORIES.get(id(engine))
    if found is None or found[0] is not engine:
        found = (engine, sessionmaker(engine, expire_on_commit=False))
        with _ENGINES_LOCK:
            _FACTORIES[id(engine)] = found
    return found[1]


@contextmanager
def _one_writer(engine: sa.Engine) -> Iterator[None]:
    """Hold the process's SQLite writer lock for a transaction (nothing to hold on other databases)."""
    lock = _writer_lock(engine)
    with lock if lock is not None else contextlib.nullcontext():
        yield


@contextmanager
def connection_scope(engine: sa.Engine) -> Iterator[sa.Connection]:
    """A Core connection in one transaction that commits on success and rolls back on error: for the
    hot per-row statements (Core only), without the ORM session's bookkeeping. Same locking as
    :func:`session_scope`."""
    with _one_writer(engine), engine.begin() as conn:
        yield conn


@contextmanager
def session_scope(engine: sa.Engine) -> Iterator[Session]:
    """A session whose transaction commits on success and rolls back on error."""
    with _one_writer(engine), _factory(engine)() as session, session.begin():
        yield session
