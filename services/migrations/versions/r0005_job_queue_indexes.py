"""Services: schema revision 0005 — a worker claims the oldest queued jobs and reads back the batch it claimed: an
index on jobs(status, created_at) and one on jobs(batch_id) serve both, so a claim's cost does not grow with the
finished jobs the table keeps."""

from __future__ import annotations

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_jobs_status_created_at", "jobs", ["status", "created_at"])
    op.create_index("ix_jobs_batch_id", "jobs", ["batch_id"])


def downgrade() -> None:
    op.drop_index("ix_jobs_batch_id", "jobs")
    op.drop_index("ix_jobs_status_created_at", "jobs")
