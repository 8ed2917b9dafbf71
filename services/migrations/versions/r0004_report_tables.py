"""Services: schema revision 0004 — experiment reports aggregate in SQL: an exposure's items become rows of
`impressions` (from the exposures.items JSON, which goes), with each user's running counts per arm (`arm_users`) and
the items each arm has shown (`arm_items`) written beside them."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    impressions = op.create_table(
        "impressions",
        sa.Column("rec_id", sa.String(64), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("item_id", sa.String(128), nullable=False),
        sa.Column("arm", sa.String(64), nullable=True),
        sa.Column("cold", sa.Boolean(), nullable=False),
        sa.Column("age_s", sa.Float(), nullable=True),
        sa.Column("score", sa.Float(), nullable=False),
        sa.Column("interactions", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("rec_id", "position"),
    )
    op.create_index("ix_impressions_item_id", "impressions", ["item_id"])
    users = op.create_table(
        "arm_users",
        sa.Column("experiment_id", sa.String(64), nullable=False),
        sa.Column("arm", sa.String(64), nullable=False),
        sa.Column("user_id", sa.String(128), nullable=False),
        sa.Column("exposures", sa.Integer(), nullable=False),
        sa.Column("impressions", sa.Integer(), nullable=False),
        sa.Column("impressions_cold", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("experiment_id", "arm", "user_id"),
    )
    op.create_index("ix_arm_users_user_id", "arm_users", ["user_id"])
    arm_items = op.create_table(
        "arm_items",
        sa.Column("experiment_id", sa.String(64), nullable=False),
        sa.Column("arm", sa.String(64), nullable=False),
        sa.Column("item_id", sa.String(128), nullable=False),
        sa.Column("first_at", TZ, nullable=False),
        sa.Column("first_cold", sa.Boolean(), nullable=False),
        sa.Column("first_age_s", sa.Float(), nullable=True),
        sa.Column("shown_cold", sa.Boolean(), nullable=False),
        sa.Column("shown_warm", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("experiment_id", "arm", "item_id"),
    )
    op.create_index("ix_arm_items_item_id", "arm_items", ["item_id"])
    _move_items(impressions, users, arm_items)
    with op.batch_alter_table("exposures") as batch:
        batch.drop_column("items")


def _move_items(impressions: sa.Table, users: sa.Table, arm_items: sa.Table) -> None:
    """Each exposure's JSON items into the new tables, oldest exposure first (an arm's first showing of an item)."""
    bind = op.get_bind()
    rows = bind.execute(
        sa.text("SELECT rec_id, experiment_id, arm, user_id, items, created_at FROM exposures ORDER BY created_at")
    )
    shown: dict[tuple[str, str, str], dict[str, Any]] = {}
    counts: dict[tuple[str, str, str], list[int]] = {}
    for rec_id, experiment_id, arm, user_id, items, created_at in rows:
        items = json.loads(items) if isinstance(items, str) else items
        at = datetime.fromisoformat(created_at) if isinstance(created_at, str) else created_at
        per_arm: dict[str, list[int]] = {arm: [0, 0]} if arm is not None else {}
        for i in items:
            credited = i.get("team") or arm
            cold = bool(i.get("cold"))
            bind.execute(
                impressions.insert(),
                {
                    "rec_id": rec_id,
                    "position": i["position"],
                    "item_id": i["item_id"],
                    "arm": credited,
                    "cold": cold,
                    "age_s": i.get("age_s"),
                    "score": float(i.get("score") or 0.0),
                    "interactions": int(i.get("interactions") or 0),
                },
            )
            if credited is None:
                continue
            n = per_arm.setdefault(credited, [0, 0])
            n[0], n[1] = n[0] + 1, n[1] + cold
            key = (experiment_id, credited, i["item_id"])
            first = shown.setdefault(
                key, {"first_at": at, "first_cold": cold, "first_age_s": i.get("age_s"), "cold": False, "warm": False}
            )
            first["cold" if cold else "warm"] = True
        for credited, (n_all, n_cold) in per_arm.items():
            n = counts.setdefault((experiment_id, credited, user_id), [0, 0, 0])
            n[0], n[1], n[2] = n[0] + 1, n[1] + n_all, n[2] + n_cold
    for (experiment_id, credited, user_id), (n_lists, n_all, n_cold) in counts.items():
        bind.execute(
            users.insert(),
            {
                "experiment_id": experiment_id,
                "arm": credited,
                "user_id": user_id,
                "exposures": n_lists,
                "impressions": n_all,
                "impressions_cold": n_cold,
            },
        )
    for (experiment_id, credited, item_id), first in shown.items():
        bind.execute(
            arm_items.insert(),
            {
                "experiment_id": experiment_id,
                "arm": credited,
                "item_id": item_id,
                "first_at": first["first_at"],
                "first_cold": first["first_cold"],
                "first_age_s": first["first_age_s"],
                "shown_cold": first["cold"],
                "shown_warm": first["warm"],
            },
        )


def downgrade() -> None:
    with op.batch_alter_table("exposures") as batch:
        batch.add_column(sa.Column("items", sa.JSON(), nullable=False, server_default="[]"))
    op.drop_table("arm_items")
    op.drop_table("arm_users")
    op.drop_table("impressions")
