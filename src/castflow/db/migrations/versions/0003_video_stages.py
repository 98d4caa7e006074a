"""video stages: which stages each video used and what it paid

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27 16:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import castflow.db.tables

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "video_stage",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("video_id", sa.Uuid(), nullable=False),
        sa.Column("stage", sa.String(length=32), nullable=False),
        sa.Column("stage_key", sa.String(length=64), nullable=False),
        sa.Column("reused", sa.Boolean(), nullable=False),
        sa.Column("cost_usd", sa.Double(), nullable=False),
        sa.Column("created_at", castflow.db.tables.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["video_id"], ["video.id"], name=op.f("fk_video_stage_video_id_video"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_video_stage")),
        sa.UniqueConstraint("video_id", "stage", name="uq_video_stage_video_id"),
    )
    op.create_index(op.f("ix_video_stage_stage_key"), "video_stage", ["stage_key"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_video_stage_stage_key"), table_name="video_stage")
    op.drop_table("video_stage")
