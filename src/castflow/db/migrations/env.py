"""Alembic environment: the engine comes from castflow (``config.attributes['engine']``) or the URL setting."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context

from castflow.db.tables import Base

config = context.config


def _engine() -> sa.Engine:
    engine = config.attributes.get("engine")
    if isinstance(engine, sa.Engine):
        return engine
    from castflow.db.session import get_engine
    from castflow.settings import get_settings

    return get_engine(get_settings().database_url)


def run_migrations_online() -> None:
    engine = _engine()
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=Base.metadata,
            render_as_batch=connection.dialect.name == "sqlite",
            compare_type=True,
        )
        with context.begin_transaction():
            context.run_migrations()
        if connection.in_transaction():
            connection.commit()


run_migrations_online()
