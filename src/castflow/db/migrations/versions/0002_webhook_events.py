"""webhook events

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28 10:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

import castflow.db.tables

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "webhook_event",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column(
            "provider",
            sa.Enum("fal", "wavespeed", name="webhookprovider", native_enum=False, length=16),
            nullable=False,
        ),
        sa.Column("delivery_id", sa.String(length=200), nullable=False),
        sa.Column("request_id", sa.String(length=200), nullable=False),
        sa.Column(
            "status",
            sa.Enum("completed", "failed", name="webhookstatus", native_enum=False, length=16),
            nullable=False,
        ),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column(
            "payload",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=True,
        ),
        sa.Column("received_at", castflow.db.tables.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_webhook_event")),
        sa.UniqueConstraint("provider", "delivery_id", name="uq_webhook_event_provider_delivery_id"),
    )
    op.create_index("ix_webhook_event_request_id", "webhook_event", ["request_id", "provider"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_webhook_event_request_id", table_name="webhook_event")
    op.drop_table("webhook_event")
