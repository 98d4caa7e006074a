"""scale out: budget holds (a running row's money held against its campaign's budget, shared by every
worker) and campaign chunks (a campaign's rows run as flow runs on a work pool, with a lease)

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-04 23:30:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

import castflow.db.tables

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "budget_hold",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("campaign_id", sa.Uuid(), nullable=False),
        sa.Column("holder", sa.String(length=200), nullable=False),
        sa.Column("amount_usd", sa.Double(), nullable=False),
        sa.Column("owner", sa.String(length=200), nullable=True),
        sa.Column("updated_at", castflow.db.tables.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["campaign_id"],
            ["campaign.id"],
            name=op.f("fk_budget_hold_campaign_id_campaign"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_budget_hold")),
        sa.UniqueConstraint("campaign_id", "holder", name="uq_budget_hold_campaign_holder"),
    )
    op.create_index(op.f("ix_budget_hold_campaign_id"), "budget_hold", ["campaign_id"], unique=False)
    op.create_table(
        "campaign_chunk",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("campaign_id", sa.Uuid(), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column(
            "row_ids",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("flow_run_id", sa.String(length=64), nullable=True),
        sa.Column("owner", sa.String(length=200), nullable=True),
        sa.Column("lease_until", castflow.db.tables.UTCDateTime(timezone=True), nullable=True),
        sa.Column("created_at", castflow.db.tables.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", castflow.db.tables.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["campaign_id"],
            ["campaign.id"],
            name=op.f("fk_campaign_chunk_campaign_id_campaign"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_campaign_chunk")),
        sa.UniqueConstraint("campaign_id", "seq", name="uq_campaign_chunk_campaign_seq"),
    )
    op.create_index(op.f("ix_campaign_chunk_campaign_id"), "campaign_chunk", ["campaign_id"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_campaign_chunk_campaign_id"), table_name="campaign_chunk")
    op.drop_table("campaign_chunk")
    op.drop_index(op.f("ix_budget_hold_campaign_id"), table_name="budget_hold")
    op.drop_table("budget_hold")
