"""approvals: a person's decision on each previewed row of a campaign (castflow campaign approve); video
warnings: what a finished video's checks noticed (a product not found in its scene); takes: a row's
stage made again with a new seed and a reason (castflow campaign reroll)

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-04 21:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

import castflow.db.tables

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "approval",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("campaign_id", sa.Uuid(), nullable=False),
        sa.Column("row_id", sa.String(length=200), nullable=False),
        sa.Column("decision", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.String(length=500), nullable=True),
        sa.Column("source", sa.String(length=32), nullable=False),
        sa.Column("decided_at", castflow.db.tables.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["campaign_id"],
            ["campaign.id"],
            name=op.f("fk_approval_campaign_id_campaign"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_approval")),
        sa.UniqueConstraint("campaign_id", "row_id", name="uq_approval_campaign_row"),
    )
    op.create_index(op.f("ix_approval_campaign_id"), "approval", ["campaign_id"], unique=False)
    op.create_table(
        "take",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("campaign_id", sa.Uuid(), nullable=False),
        sa.Column("row_id", sa.String(length=200), nullable=False),
        sa.Column("stage", sa.String(length=16), nullable=False),
        sa.Column("seed", sa.BigInteger(), nullable=False),
        sa.Column("reason", sa.String(length=500), nullable=False),
        sa.Column("kept_key", sa.String(length=500), nullable=True),
        sa.Column("stage_key", sa.String(length=200), nullable=True),
        sa.Column("cost_usd", sa.Double(), nullable=True),
        sa.Column("created_at", castflow.db.tables.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["campaign_id"], ["campaign.id"], name=op.f("fk_take_campaign_id_campaign"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_take")),
    )
    op.create_index(op.f("ix_take_campaign_id"), "take", ["campaign_id"], unique=False)
    with op.batch_alter_table("video") as batch:
        batch.add_column(
            sa.Column(
                "warnings",
                sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
                nullable=True,
            )
        )


def downgrade() -> None:
    with op.batch_alter_table("video") as batch:
        batch.drop_column("warnings")
    op.drop_index(op.f("ix_take_campaign_id"), table_name="take")
    op.drop_table("take")
    op.drop_index(op.f("ix_approval_campaign_id"), table_name="approval")
    op.drop_table("approval")
