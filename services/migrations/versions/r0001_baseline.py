"""Services: schema revision 0001, the baseline — every table as Thaw created them before the schema had revisions.
On a database created then (tables, no revision recorded) it adds only what is missing: columns an older Thaw did not
have (nullable, or with their server default) and the indexes, e.g. interactions.rec_id's when that column was added
to an existing table."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

TZ = sa.DateTime(timezone=True)


def _table(name: str, columns: list[sa.Column], key: list[str], indexes: dict[str, list[str]]) -> None:
    """Create the table, or bring an existing one up to it: add the columns and indexes it lacks."""
    inspector = sa.inspect(op.get_bind())
    if not inspector.has_table(name):
        op.create_table(name, *columns, sa.PrimaryKeyConstraint(*key))
    else:
        present = {c["name"] for c in inspector.get_columns(name)}
        for column in columns:
            if column.name not in present:
                op.add_column(name, sa.Column(column.name, column.type, server_default=column.server_default))
    have = {i["name"] for i in sa.inspect(op.get_bind()).get_indexes(name)}
    for index, on in indexes.items():
        if index not in have:
            op.create_index(index, name, on)


def upgrade() -> None:
    _table(
        "experiments",
        [
            sa.Column("experiment_id", sa.String(64), nullable=False),
            sa.Column("name", sa.String(128), nullable=False),
            sa.Column("kind", sa.String(16), nullable=False),
            sa.Column("salt", sa.String(64), nullable=False),
            sa.Column("control", sa.String(64), nullable=False),
            sa.Column("arms", sa.JSON(), nullable=False),
            sa.Column("start_at", TZ, nullable=False),
            sa.Column("end_at", TZ, nullable=True),
            sa.Column("created_at", TZ, nullable=False),
        ],
        ["experiment_id"],
        {},
    )
    _table(
        "exposures",
        [
            sa.Column("rec_id", sa.String(64), nullable=False),
            sa.Column("experiment_id", sa.String(64), nullable=False),
            sa.Column("arm", sa.String(64), nullable=True),
            sa.Column("user_id", sa.String(128), nullable=False),
            sa.Column("items", sa.JSON(), nullable=False),
            sa.Column("created_at", TZ, nullable=False),
        ],
        ["rec_id"],
        {"ix_exposures_experiment_id": ["experiment_id"], "ix_exposures_user_id": ["user_id"]},
    )
    _table(
        "interactions",
        [
            sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
            sa.Column("user_id", sa.String(128), nullable=False),
            sa.Column("item_id", sa.String(128), nullable=False),
            sa.Column("weight", sa.Float(), nullable=False),
            sa.Column("kind", sa.String(32), nullable=False),
            sa.Column("rec_id", sa.String(64), nullable=True),
            sa.Column("created_at", TZ, nullable=False),
        ],
        ["id"],
        {
            "ix_interactions_item_id": ["item_id"],
            "ix_interactions_rec_id": ["rec_id"],
            "ix_interactions_user_id": ["user_id"],
        },
    )
    _table(
        "items",
        [
            sa.Column("item_id", sa.String(128), nullable=False),
            sa.Column("metadata", sa.JSON(), nullable=False),
            sa.Column("media", sa.JSON(), nullable=False),
            sa.Column("revision", sa.Integer(), nullable=False),
            sa.Column("created_at", TZ, nullable=False),
            sa.Column("updated_at", TZ, nullable=False),
        ],
        ["item_id"],
        {},
    )
    _table(
        "jobs",
        [
            sa.Column("job_id", sa.String(32), nullable=False),
            sa.Column("kind", sa.String(16), nullable=False),
            sa.Column("item_id", sa.String(128), nullable=True),
            sa.Column("revision", sa.Integer(), nullable=False),
            sa.Column("status", sa.String(16), nullable=False),
            sa.Column("error", sa.Text(), nullable=True),
            sa.Column("attempts", sa.Integer(), nullable=False),
            sa.Column("model_version", sa.String(64), nullable=True),
            sa.Column("created_at", TZ, nullable=False),
            sa.Column("started_at", TZ, nullable=True),
            sa.Column("finished_at", TZ, nullable=True),
            sa.Column("dispatched_at", TZ, nullable=True),
            sa.Column("dispatches", sa.Integer(), server_default="0", nullable=False),
        ],
        ["job_id"],
        {"ix_jobs_dispatched_at": ["dispatched_at"], "ix_jobs_item_id": ["item_id"]},
    )
    _table(
        "reembed_items",
        [
            sa.Column("job_id", sa.String(32), nullable=False),
            sa.Column("item_id", sa.String(128), nullable=False),
            sa.Column("status", sa.String(16), nullable=False),
            sa.Column("error", sa.Text(), nullable=True),
            sa.Column("content_hash", sa.String(64), nullable=True),
            sa.Column("skipped", sa.Boolean(), nullable=False),
            sa.Column("updated_at", TZ, nullable=True),
        ],
        ["job_id", "item_id"],
        {"ix_reembed_items_job_status": ["job_id", "status"]},
    )
    _table(
        "reembed_jobs",
        [
            sa.Column("job_id", sa.String(32), nullable=False),
            sa.Column("target_version", sa.String(64), nullable=False),
            sa.Column("source_version", sa.String(64), nullable=True),
            sa.Column("filter", sa.JSON(), nullable=True),
            sa.Column("total", sa.Integer(), nullable=True),
            sa.Column("chunk_size", sa.Integer(), nullable=False),
            sa.Column("max_failed_share", sa.Float(), nullable=False),
            sa.Column("keep_versions", sa.Integer(), nullable=False),
            sa.Column("switched", sa.Boolean(), nullable=False),
            sa.Column("touched_at", TZ, nullable=False),
        ],
        ["job_id"],
        {},
    )


def downgrade() -> None:
    raise NotImplementedError("the baseline is the oldest schema: there is nothing to go back to")
