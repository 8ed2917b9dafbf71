"""Services: interaction events — recorded in the database, joined to experiment exposures by rec_id, and each
touched item's CF vector folded in from its audience, shrunk toward its content prediction in proportion to the
evidence (items without learned factors only)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import numpy as np
from sqlalchemy import select

from indexer.collections import ITEMS
from indexer.search import get_items, get_users
from indexer.writer import set_item_cf
from services import experiments
from services.db import Interaction, ItemRecord, item_audience, utcnow
from services.runtime import Runtime
from thaw.datasets import Interactions
from thaw.errors import NotFoundError
from thaw.experiments.report import EventLog
from thaw.factors import fold_in_events
from thaw.schema import CF_SOURCE, CONTENT


@dataclass(frozen=True)
class Event:
    user_id: str
    item_id: str
    weight: float = 1.0
    kind: str = "interaction"
    rec_id: str | None = None
    timestamp: datetime | None = None  # when it happened (default: when recorded)


def record(rt: Runtime, events: Sequence[Event]) -> int:
    """Store the events; items without learned factors slide toward a CF vector folded in from their audience.
    Returns how many events join an experiment exposure. NotFoundError names items never uploaded."""
    view = rt.view()
    item_ids = sorted({e.item_id for e in events})
    indexed = {h.item_id: h for h in get_items(rt.index, item_ids, vectors=[CONTENT])}
    with rt.session() as session:
        known = set(session.scalars(select(ItemRecord.item_id).where(ItemRecord.item_id.in_(item_ids))))
        unknown = [i for i in item_ids if i not in indexed and i not in known]
        if unknown:
            raise NotFoundError(f"unknown item ids {unknown[:10]}: upload them before sending events")
        session.add_all(
            Interaction(
                user_id=e.user_id,
                item_id=e.item_id,
                weight=e.weight,
                kind=e.kind,
                rec_id=e.rec_id,
                created_at=e.timestamp or utcnow(),
            )
            for e in events
        )
        session.commit()
        joined = experiments.joined_events(
            session, [EventLog(e.rec_id, e.user_id, e.item_id, e.kind, 0.0) for e in events if e.rec_id]
        )
        c = view.config
        for item_id, hit in indexed.items():
            if hit.payload.get(CF_SOURCE) == "als":
                continue  # learned by ALS on far more data; the next training run updates it
            audience = item_audience(session, item_id)
            vectors = get_users(rt.index, sorted({u for u, _ in audience}), collection=view.users)
            known_users = [(vectors[u], w) for u, w in audience if u in vectors]
            if known_users:
                vecs, weights = np.stack([v for v, _ in known_users]), np.array([w for _, w in known_users])
                cf = fold_in_events(
                    vecs,
                    weights,
                    reg=c.als_reg,
                    alpha=c.als_alpha,
                    gram=view.user_gram,
                    prior=hit.vectors.get(CONTENT),  # shrunk toward the content prediction while evidence is thin
                    shrinkage=c.cf_shrinkage,
                )
                set_item_cf(rt.index, ITEMS, item_id, cf, len(audience))
    return joined


def import_interactions(rt: Runtime, interactions: Interactions) -> int:
    """Bulk-copy interactions (those a model was trained on) into the database, so users' histories are known."""
    rows = [
        {"user_id": str(u), "item_id": str(i), "weight": float(w)}
        for u, i, w in zip(interactions.user_ids, interactions.item_ids, interactions.weights, strict=True)
    ]
    with rt.session() as session:
        session.bulk_insert_mappings(Interaction.__mapper__, rows)
        session.commit()
    return len(rows)
