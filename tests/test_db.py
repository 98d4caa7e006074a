"""The data layer on SQLite and on a real PostgreSQL: migrations, upserts, timestamps, concurrency."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from castflow.db import migrate, queries
from castflow.db.session import make_engine, session_scope
from castflow.db.tables import Base, StageStatus


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[sa.Engine]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    else:
        url = request.getfixturevalue("pg_url")
    eng = make_engine(url)
    yield eng
    eng.dispose()


def test_migrations_up_down_up_and_no_drift(engine: sa.Engine) -> None:
    migrate.upgrade(engine)
    assert migrate.is_current(engine)
    with engine.connect() as conn:
        assert (
            compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata)
            == []
        )
        assert {"actor", "campaign", "image_variant", "project", "stage_run", "video"} <= set(
            sa.inspect(conn).get_table_names()
        )
    migrate.downgrade(engine, "base")
    assert migrate.current_revision(engine) is None
    with engine.connect() as conn:
        assert "stage_run" not in sa.inspect(conn).get_table_names()
    migrate.upgrade(engine)
    assert migrate.is_current(engine)
    # The start-up check reads the migration files and the version table without Alembic: it must
    # agree with Alembic's own view, at head and one step below it.
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(migrate.alembic_config(engine)).get_current_head()
    assert migrate.head_revision() == head
    with engine.connect() as conn:
        assert migrate.current_revision(engine) == MigrationContext.configure(conn).get_current_revision()
    migrate.downgrade(engine, "-1")
    assert not migrate.is_current(engine)
    migrate.upgrade(engine)
    assert migrate.current_revision(engine) == head


def test_revision_0004_records_who_paid_for_the_stages_run_before_it(engine: sa.Engine) -> None:
    """A campaign resumed after the upgrade counts the spend of its earlier runs (the budget holds)."""
    import uuid

    migrate.upgrade(engine, "0003")
    now = queries.utcnow()
    campaign, video, other = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    from castflow.db.tables import Campaign, StageRun, Video, VideoStage

    with engine.begin() as c:  # Core inserts of the columns revision 0003 has
        c.execute(
            sa.insert(Campaign.__table__).values(
                id=campaign, name="c", sheet_name="s.csv", sheet_hash="h", status="finished", settings={},
                totals={}, created_at=now, updated_at=now,
            )
        )  # fmt: skip
        for vid, key, cid in ((video, "v1", campaign), (other, "v2", None)):
            c.execute(
                sa.insert(Video.__table__).values(
                    id=vid, request_key=key, campaign_id=cid, actor_key="maya", resolution="480p", seed=0,
                    status="succeeded", cost_usd=0.5, extra={}, created_at=now, updated_at=now,
                )
            )  # fmt: skip
        for key, cost in (("paid", 0.4), ("free", 0.0)):
            c.execute(
                sa.insert(StageRun.__table__).values(
                    id=uuid.uuid4(), stage_key=key, stage="lipsync", provider="wavespeed", model="m",
                    status="succeeded", attempts=1, billed_units=5, cost_usd=cost, meta={}, created_at=now,
                    updated_at=now,
                )
            )  # fmt: skip
        c.execute(
            sa.insert(VideoStage.__table__).values(
                id=uuid.uuid4(), video_id=video, stage="lipsync", stage_key="paid", reused=False, cost_usd=0.4,
                created_at=now,
            )
        )  # fmt: skip
    migrate.upgrade(engine)
    with engine.begin() as c:
        assert queries.campaign_spend(c, campaign_id=campaign) == pytest.approx(0.4)
        payers = dict(c.execute(sa.text("SELECT stage_key, campaign_id FROM stage_run")).all())
    assert payers["free"] is None


def _actor_values(**extra: object) -> dict[str, object]:
    return {
        "name": "Maya",
        "image_key": "actors/maya/a.png",
        "image_hash": "a" * 64,
        "voice_provider": "local",
        "voice_model": "espeak-ng",
        "voice_id": "en-us",
        "mouth": {"x": 0.5, "y": 0.5, "width": 0.1},
        **extra,
    }


def test_actor_upsert_is_idempotent_and_timestamps_are_utc(engine: sa.Engine) -> None:
    migrate.upgrade(engine)
    with session_scope(engine) as s:
        first = queries.upsert_actor(s, key="maya", values=_actor_values())
        first_id = first.id
    with session_scope(engine) as s:
        again = queries.upsert_actor(s, key="maya", values=_actor_values(name="Maya B"))
        assert again.id == first_id
        assert again.name == "Maya B"
        assert again.mouth == {"x": 0.5, "y": 0.5, "width": 0.1}
        assert again.created_at.tzinfo is not None
        assert again.created_at.utcoffset() == UTC.utcoffset(None)
        assert len(queries.list_actors(s)) == 1


def test_stage_runs_count_attempts_and_keep_request_ids(engine: sa.Engine) -> None:
    migrate.upgrade(engine)
    key = "k" * 64
    common = {
        "stage_key": key,
        "stage": "lipsync",
        "provider": "wavespeed",
        "model": "infinitetalk",
        "meta": {},
    }
    with session_scope(engine) as s:
        queries.start_stage_run(s, **common)  # type: ignore[arg-type]
        queries.set_request_id(s, stage_key=key, request_id="req-1")
        queries.fail_stage_run(s, stage_key=key, error="boom")
    with session_scope(engine) as s:
        run = queries.start_stage_run(s, **common)  # type: ignore[arg-type]
        assert run.attempts == 2
        assert run.status is StageStatus.running
        assert run.error is None
        assert run.request_id == "req-1"
        queries.finish_stage_run(
            s,
            stage_key=key,
            output_key="o.mp4",
            output_hash="h" * 64,
            billed_units=5,
            unit="seconds",
            cost_usd=0.15,
            run_seconds=3.0,
        )
    with session_scope(engine) as s:
        done = queries.get_stage_run(s, stage_key=key)
        assert done is not None
        assert done.status is StageStatus.succeeded
        assert done.cost_usd == pytest.approx(0.15)
        assert done.request_id == "req-1"


def test_variant_listing_is_parameterised(engine: sa.Engine) -> None:
    migrate.upgrade(engine)
    with session_scope(engine) as s:
        actor = queries.upsert_actor(s, key="maya", values=_actor_values())
        queries.record_image_variant(
            s,
            actor_id=actor.id,
            prompt="beach",
            seed=1,
            provider="local",
            model="m",
            stage_key="s" * 64,
            image_key="v.png",
            image_hash="h" * 64,
            cost_usd=0,
        )
        # Same stage key again: one variant.
        queries.record_image_variant(
            s,
            actor_id=actor.id,
            prompt="beach",
            seed=1,
            provider="local",
            model="m",
            stage_key="s" * 64,
            image_key="v.png",
            image_hash="h" * 64,
            cost_usd=0,
        )
    with session_scope(engine) as s:
        assert [v.prompt for v in queries.list_image_variants(s, actor_key="maya")] == ["beach"]
        assert queries.list_image_variants(s, actor_key="maya' OR '1'='1") == []
        assert queries.list_image_variants(s, actor_key="x'; DROP TABLE image_variant; --") == []
    with session_scope(engine) as s:
        assert len(queries.list_image_variants(s, actor_key="maya")) == 1


def test_concurrent_writers_never_see_locked_database(engine: sa.Engine) -> None:
    """Eight threads claiming, reading and finishing stage runs at once (what a flow's tasks do)."""
    migrate.upgrade(engine)
    errors: list[BaseException] = []

    def worker(n: int) -> None:
        try:
            for i in range(25):
                key = f"{n:02d}{i:02d}".ljust(64, "0")
                with session_scope(engine) as s:
                    queries.get_stage_run(s, stage_key=key)
                    queries.start_stage_run(
                        s, stage_key=key, stage="speech", provider="p", model="m", meta={}
                    )
                with session_scope(engine) as s:
                    queries.finish_stage_run(
                        s,
                        stage_key=key,
                        output_key="o",
                        output_hash="h",
                        billed_units=1,
                        unit="characters",
                        cost_usd=0.0,
                        run_seconds=0.1,
                    )
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    with engine.connect() as conn:
        assert conn.scalar(sa.text("SELECT count(*) FROM stage_run WHERE status = 'succeeded'")) == 200
