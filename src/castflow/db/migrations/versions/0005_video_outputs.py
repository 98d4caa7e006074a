"""video outputs: the export profiles' files of a video (castflow.finish)

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-04 17:40:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("video") as batch:
        batch.add_column(
            sa.Column(
                "outputs",
                sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
                nullable=True,
            )
        )


def downgrade() -> None:
    with op.batch_alter_table("video") as batch:
        batch.drop_column("outputs")
