"""Services: interaction events — recorded in the database, joined to experiment exposures by rec_id, and each
touched item's CF vector folded in from its audience, shrunk toward its content prediction in proportion to the
evidence (items without learned factors only); a user's history page by page, and the erasure of a user."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
from sqlalchemy import and_, or_, select
from sqlalchemy import delete as sql_delete
from sqlalchemy.orm import Session

from indexer.collections import indexed_versions
from indexer.search import Hit, get_items, get_users
from indexer.writer import clear_item_cf, delete_users, set_item_cf
from services import experiments
from services.db import Interaction, ItemRecord, as_utc, item_audience, utcnow
from services.runtime import ModelView, Runtime
from thaw.datasets import Interactions
from thaw.errors import ConflictError, NotFoundError
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
                created_at=e.timestamp.astimezone(UTC) if e.timestamp else utcnow(),
            )
            for e in events
        )
        session.commit()
        joined = experiments.joined_events(
            session, [EventLog(e.rec_id, e.user_id, e.item_id, e.kind, 0.0) for e in events if e.rec_id]
        )
        _refold(rt, view, session, indexed)
    return joined


def _refold(rt: Runtime, view: ModelView, session: Session, hits: dict[str, Hit], *, erased: bool = False) -> None:
    """Fold each item's CF vector in from its audience (items whose CF vector ALS learned keep it). After an erasure
    (`erased`), an item left without a known user in its audience loses its folded vector (cold again when no event
    is left)."""
    c = view.config
    for item_id, hit in hits.items():
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
            set_item_cf(rt.index, view.items, item_id, cf, len(audience))
        elif erased:
            clear_item_cf(rt.index, view.items, item_id, len(audience))


@dataclass(frozen=True)
class PastEvent:
    event_id: int
    item_id: str
    weight: float
    kind: str
    rec_id: str | None
    timestamp: datetime


def history_page(
    rt: Runtime, user_id: str, before: tuple[datetime, int] | None, limit: int
) -> tuple[list[PastEvent], tuple[datetime, int] | None]:
    """A user's events, newest first (by when they happened, then as recorded), those older than `before` (a
    (timestamp, event id) key); returns a page of at most `limit` and the key to continue before (None at the end).
    NotFoundError for a user with no events."""
    with rt.session() as session:
        query = select(Interaction).where(Interaction.user_id == user_id)
        if before is None:
            if session.scalar(query.with_only_columns(Interaction.id).limit(1)) is None:
                raise NotFoundError(f"user {user_id!r} has no recorded events")
        else:
            at, event_id = before
            query = query.where(
                or_(
                    Interaction.created_at < at,
                    and_(Interaction.created_at == at, Interaction.id < event_id),
                )
            )
        rows = session.scalars(
            query.order_by(Interaction.created_at.desc(), Interaction.id.desc()).limit(limit + 1)
        ).all()
        page = [
            PastEvent(r.id, r.item_id, float(r.weight), r.kind, r.rec_id, as_utc(r.created_at)) for r in rows[:limit]
        ]
    more = len(rows) > limit
    return page, (page[-1].timestamp, page[-1].event_id) if more and page else None


@dataclass(frozen=True)
class Erased:
    events: int
    exposures: int
    collections: list[str]  # the users collections that held the user's vector


def erase_user(rt: Runtime, user_id: str) -> Erased:
    """Erase a user: their events and experiment exposures (rec_ids, arms, lists), their vector in every version's
    users collection; the items they had touched get their CF vectors folded in again from the remaining audience, in
    every indexed version. NotFoundError when nothing of the user is left (a repeated erase)."""
    with rt.session() as session:
        touched = sorted(set(session.scalars(select(Interaction.item_id).where(Interaction.user_id == user_id))))
        events = session.execute(sql_delete(Interaction).where(Interaction.user_id == user_id))
        n_events = int(getattr(events, "rowcount", 0) or 0)
        n_exposures = experiments.forget_user(session, user_id)
        session.commit()
    held = delete_users(rt.index, [user_id])
    if not (n_events or n_exposures or held):
        raise NotFoundError(f"user {user_id!r} does not exist (or was erased already)")
    for version in indexed_versions(rt.index) if touched else []:
        try:
            view = rt.view(version)
        except (NotFoundError, ConflictError):  # collections of a version no longer trained here: nothing to fold
            continue
        hits = {h.item_id: h for h in get_items(rt.index, touched, vectors=[CONTENT], collection=view.items)}
        with rt.session() as session:
            _refold(rt, view, session, hits, erased=True)
    return Erased(n_events, n_exposures, held)


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
