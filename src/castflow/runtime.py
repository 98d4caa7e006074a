"""The wiring of one castflow process: settings → database, storage and providers."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.orm import Session

from castflow import claims
from castflow.datadir import check_data_dir, clean_stale_temp
from castflow.db import migrate, queries
from castflow.db.retry import run_session, run_tx
from castflow.db.session import connection_scope, get_engine, session_scope
from castflow.expiring import ExpiringCache
from castflow.journal import Journal, journal_for
from castflow.journal import reconcile as journal_reconcile
from castflow.models import StageOutcome
from castflow.providers.base import (
    ImageEditor,
    LipSyncer,
    QueueImageEditor,
    QueueLipSyncer,
    QueueSpeechSynth,
    SpeechSynth,
)
from castflow.providers.local import EspeakSpeech, LocalImageEditor, PreviewLipSync
from castflow.providers.vendors import Roles, vendors
from castflow.settings import Settings, get_settings
from castflow.storage import Storage, build_storage

T = TypeVar("T")


class ConfigError(Exception):
    """The configuration cannot work (e.g. a database that is not migrated)."""


class KeyedLocks:
    """One lock per key, created on demand and dropped when nobody holds or waits for it."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: dict[str, tuple[threading.Lock, int]] = {}

    @contextmanager
    def hold(self, key: str) -> Iterator[None]:
        with self._guard:
            lock, users = self._locks.get(key, (threading.Lock(), 0))
            self._locks[key] = (lock, users + 1)
        try:
            with lock:
                yield
        finally:
            with self._guard:
                lock, users = self._locks[key]
                if users == 1:
                    del self._locks[key]
                else:
                    self._locks[key] = (lock, users - 1)


@dataclass
class Runtime:
    settings: Settings
    engine: sa.Engine
    storage: Storage
    image: ImageEditor | QueueImageEditor
    speech: dict[str, SpeechSynth | QueueSpeechSynth]
    lipsync: LipSyncer | QueueLipSyncer
    stage_locks: KeyedLocks = field(default_factory=KeyedLocks)
    # Stages this process has seen finished, for a short while: rows that share a stage reuse it without
    # a database round trip. A finished stage's output never changes (content-addressed keys); the time
    # limit bounds how long an output deleted by hand could still be offered.
    finished_stages: ExpiringCache[str, StageOutcome] = field(
        default_factory=lambda: ExpiringCache(ttl_s=300.0, max_entries=50_000)
    )
    provider_slots: dict[str, threading.BoundedSemaphore] = field(default_factory=dict)
    journal: Journal | None = None
    leases: claims.LeaseKeeper | None = None

    def __post_init__(self) -> None:
        if self.journal is None:
            self.journal = journal_for(self.settings.data_dir)
        if self.leases is None:
            lease_s = self.settings.pipeline.claim_lease_s
            self.leases = claims.LeaseKeeper(
                lambda keys: self.db(
                    lambda c: queries.renew_leases(c, owner=str(claims.me()), keys=keys, lease_s=lease_s),
                    retry_s=0,
                ),
                lease_s,
            )

    def temp_root(self) -> Path:
        """This process's folder for stage work files, under the data dir (``tmp/<owner>``): a later
        process removes the folders of dead owners (castflow.datadir.clean_stale_temp)."""
        root = self.settings.data_dir / "tmp" / str(claims.me())  # host:pid:start:nonce, no separator
        root.mkdir(parents=True, exist_ok=True)
        return root

    def db(self, fn: Callable[[sa.Connection], T], *, what: str = "", retry_s: float | None = None) -> T:
        """``fn`` in one Core transaction, rerun through a database blink (settings.database.retry_s);
        every per-row read and write goes through here."""
        window = self.settings.database.retry_s if retry_s is None else retry_s
        return run_tx(self.engine, fn, retry_s=window, what=what)

    def db_session(self, fn: Callable[[Session], T], *, what: str = "") -> T:
        """``fn`` in one ORM session's transaction, retried as :meth:`db` is."""
        return run_session(self.engine, fn, retry_s=self.settings.database.retry_s, what=what)

    @contextmanager
    def session(self) -> Iterator[Session]:
        with session_scope(self.engine) as session:
            yield session

    @contextmanager
    def connection(self) -> Iterator[sa.Connection]:
        """A Core connection in one transaction: the per-row writes (no ORM objects needed back)."""
        with connection_scope(self.engine) as conn:
            yield conn

    def close(self) -> None:
        """Release what the runtime holds open (the storage backend's HTTP client)."""
        close = getattr(self.storage, "close", None)
        if callable(close):
            close()
        if self.leases is not None:
            self.leases.stop()
        if self.journal is not None:
            self.journal.close()

    @contextmanager
    def provider_slot(self, provider: str) -> Iterator[None]:
        """Hold one of the provider's concurrency slots: this process's (settings.provider_limits())
        and, with a global limit prefix, one of the Prefect global concurrency limit shared by all workers."""
        with contextlib.ExitStack() as stack:
            prefix = self.settings.campaign.global_limit_prefix
            if prefix and provider in self.settings.global_limit_providers():
                from prefect.concurrency.sync import concurrency

                stack.enter_context(concurrency(f"{prefix}{provider}", occupy=1, strict=True))
            slot = self.provider_slots.get(provider)
            if slot is not None:
                stack.enter_context(slot)
            yield


def build_runtime(settings: Settings) -> Runtime:
    """Build the runtime from settings and make sure the database is at the current schema."""
    if settings.providers.fakes:
        from castflow.fakes import serve_fakes

        settings = serve_fakes(settings)
    check_data_dir(settings.data_dir)  # one clear line, not "unable to open database file"
    clean_stale_temp(settings.data_dir / "tmp", _temp_owner_alive)
    engine = get_engine(
        settings.database_url, busy_timeout_ms=settings.database.busy_timeout_ms, echo=settings.database.echo
    )
    ensure_schema(engine, auto=settings.is_embedded_db)
    reconcile_journals(settings, engine)
    roles = Roles(
        image=LocalImageEditor(),
        speech={"local": EspeakSpeech()},
        lipsync=PreviewLipSync(
            fps=settings.pipeline.fps, max_audio_seconds=settings.pipeline.max_audio_seconds
        ),
    )
    for vendor in vendors():  # each puts in the roles its settings choose
        vendor.build(settings, engine, roles)
    return Runtime(
        settings=settings,
        engine=engine,
        storage=build_storage(settings),
        image=roles.image,
        speech=roles.speech,
        lipsync=roles.lipsync,
        provider_slots={
            name: threading.BoundedSemaphore(limit) for name, limit in settings.provider_limits().items()
        },
    )


def _temp_owner_alive(name: str) -> bool:
    """A folder of ``<data dir>/tmp`` belongs to a live process (or is not one of ours: kept)."""
    return claims.Owner.parse(name) is None or not claims.is_dead(name)


def reconcile_journals(settings: Settings, engine: sa.Engine) -> int:
    """Write the request ids that processes of this host journaled but never got into the database
    (they died, or the database was down) before anything here looks at a stage (castflow.journal)."""

    def apply(owner: str, entries: list[dict[str, Any]]) -> None:
        run_tx(
            engine,
            lambda c: queries.apply_journal(c, owner=owner, entries=entries),
            retry_s=settings.database.retry_s,
            what="reconciling the submit journal",
        )

    return journal_reconcile(settings.data_dir, apply)


_MIGRATE_LOCK = threading.Lock()


def ensure_schema(engine: sa.Engine, *, auto: bool) -> None:
    """Migrate the embedded database automatically; refuse to run on an out-of-date server database."""
    with _MIGRATE_LOCK:
        if migrate.is_current(engine):
            return
        if auto:
            migrate.upgrade(engine)
            return
    current = migrate.current_revision(engine)
    raise ConfigError(
        f"database schema is at {current or 'nothing'}, castflow needs {migrate.head_revision()}: "
        "run `castflow db upgrade`"
    )


_RUNTIME: tuple[Settings, Runtime] | None = None  # (the settings it was built from, the runtime)
_RUNTIME_LOCK = threading.Lock()


def get_runtime() -> Runtime:
    """The process-wide runtime built from the current settings (rebuilt when settings are reset)."""
    global _RUNTIME
    settings = get_settings()
    with _RUNTIME_LOCK:
        if _RUNTIME is None or _RUNTIME[0] is not settings:
            if _RUNTIME is not None:
                _RUNTIME[1].close()
            _RUNTIME = (settings, build_runtime(settings))
        return _RUNTIME[1]


def reset_runtime() -> None:
    global _RUNTIME
    with _RUNTIME_LOCK:
        if _RUNTIME is not None:
            _RUNTIME[1].close()
        _RUNTIME = None
