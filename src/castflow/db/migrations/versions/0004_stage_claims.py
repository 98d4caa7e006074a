"""stage claims: owner and lease, the submit intent, the paying campaign; status 'unknown'

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-03 09:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import castflow.db.tables

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # The status column is a VARCHAR(16) without a CHECK constraint (native_enum=False, no
    # create_constraint): 'unknown' needs no change to it.
    with op.batch_alter_table("stage_run") as batch:
        batch.add_column(sa.Column("owner", sa.String(length=200), nullable=True))
        batch.add_column(
            sa.Column("lease_until", castflow.db.tables.UTCDateTime(timezone=True), nullable=True)
        )
        batch.add_column(
            sa.Column("sending_at", castflow.db.tables.UTCDateTime(timezone=True), nullable=True)
        )
        batch.add_column(sa.Column("campaign_id", sa.Uuid(), nullable=True))
    op.create_index(op.f("ix_stage_run_campaign_id"), "stage_run", ["campaign_id"], unique=False)
    # The payer of the stages run before this revision: the campaign of the first video that paid for
    # each (video_stage, reused = false), so that a campaign resumed after the upgrade counts its spend.
    op.execute(
        "UPDATE stage_run SET campaign_id = ("
        " SELECT v.campaign_id FROM video_stage vs JOIN video v ON v.id = vs.video_id"
        " WHERE vs.stage_key = stage_run.stage_key AND vs.reused = false AND v.campaign_id IS NOT NULL"
        " ORDER BY vs.created_at LIMIT 1"
        ") WHERE campaign_id IS NULL"
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_stage_run_campaign_id"), table_name="stage_run")
    with op.batch_alter_table("stage_run") as batch:
        batch.drop_column("campaign_id")
        batch.drop_column("sending_at")
        batch.drop_column("lease_until")
        batch.drop_column("owner")
