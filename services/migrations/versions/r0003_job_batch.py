"""Services: schema revision 0003 — each embedding job records the batch that encoded it (jobs.batch_id)."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("jobs", sa.Column("batch_id", sa.String(32), nullable=True))


def downgrade() -> None:
    op.drop_column("jobs", "batch_id")
