"""Services: schema revision 0002 — events join exposures by (rec_id, user, item): one index on
interactions(rec_id, user_id, item_id) serves that join (and lookups by rec_id alone, its prefix), in place of the
index on rec_id alone."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_interactions_rec_user_item", "interactions", ["rec_id", "user_id", "item_id"])
    if "ix_interactions_rec_id" in {i["name"] for i in sa.inspect(op.get_bind()).get_indexes("interactions")}:
        op.drop_index("ix_interactions_rec_id", "interactions")


def downgrade() -> None:
    op.create_index("ix_interactions_rec_id", "interactions", ["rec_id"])
    op.drop_index("ix_interactions_rec_user_item", "interactions")
