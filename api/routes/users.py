"""API: blended recommendations and interaction events."""

from __future__ import annotations

import uuid
from typing import Annotated

import numpy as np
from fastapi import APIRouter, HTTPException, Query
from sqlalchemy.orm import Session

from api.blend import profile, score_items, served_vector
from api.deps import RuntimeDep
from api.schemas import EventIn, EventsAccepted, Recommendations, ScoredItem
from indexer.collections import ITEMS, USERS
from indexer.search import Hit, get_items, get_user, payload_filter, search
from indexer.writer import set_item_cf, upsert_users
from thaw.db import Interaction, ItemRecord, history, item_audience
from thaw.factors import fold_in
from thaw.runtime import Runtime
from thaw.schema import CF, CONTENT, InvalidIdError, check_id

router = APIRouter(tags=["recommendations"])


def _served(hit: Hit, shrinkage: float) -> np.ndarray | None:
    return served_vector(
        hit.vectors.get(CF), hit.vectors.get(CONTENT), int(hit.payload.get("interactions", 0)), shrinkage
    )


def user_vector(rt: Runtime, user_id: str, reg: float, shrinkage: float) -> np.ndarray | None:
    """The user's factors: learned by ALS, else folded in from their events against the items' served vectors."""
    found = get_user(rt.index, user_id)
    if found is not None and found[1].get("source") == "als":
        return found[0]
    with Session(rt.engine) as session:
        events = history(session, user_id)
    if not events:
        return found[0] if found else None
    weights = dict(events)
    hits = [h for h in get_items(rt.index, list(weights), vectors=[CF, CONTENT]) if _served(h, shrinkage) is not None]
    if not hits:
        return None
    vecs = np.stack([_served(h, shrinkage) for h in hits])  # type: ignore[misc]
    vector = fold_in(vecs, np.array([1.0 + weights[h.item_id] for h in hits]), reg)
    upsert_users(rt.index, USERS, [user_id], vector[None, :], [{"source": "events", "events": len(events)}])
    return vector


@router.get("/users/{user_id}/recommendations", response_model=Recommendations)
def recommend(
    user_id: str,
    rt: RuntimeDep,
    k: Annotated[int, Query(ge=1, le=500)] = 10,
    alpha: Annotated[float | None, Query(ge=0.0, le=1.0)] = None,
    cold_only: bool = False,
) -> Recommendations:
    try:
        user_id = check_id(user_id, "user_id")
    except InvalidIdError as exc:
        raise HTTPException(422, str(exc)) from exc
    config = rt.model_config()
    reg, shrinkage = float(config.get("als_reg", 0.05)), float(config.get("cf_shrinkage", 10.0))
    alpha = float(config.get("alpha", 0.5)) if alpha is None else alpha
    user = user_vector(rt, user_id, reg, shrinkage)
    if user is None:
        raise HTTPException(404, f"user {user_id!r} is unknown: no learned factors and no events")
    with Session(rt.engine) as session:
        seen = [item for item, _ in history(session, user_id)]
    query_filter = payload_filter(exclude_items=seen, cold_only=cold_only)
    n = max(100, 5 * k)
    candidates: dict[str, Hit] = {}
    for using in (CONTENT, CF):
        for hit in search(rt.index, user, using, n, query_filter, with_vectors=True):
            candidates.setdefault(hit.item_id, hit)
    hits = [h for h in candidates.values() if _served(h, shrinkage) is not None]
    if not hits:
        return Recommendations(
            rec_id=uuid.uuid4().hex, user_id=user_id, alpha=alpha, model_version=config["version"], items=[]
        )
    served = np.stack([_served(h, shrinkage) for h in hits])  # type: ignore[misc]
    seen_hits = get_items(rt.index, seen[:200], vectors=[CONTENT])
    user_profile = profile([h.vectors[CONTENT] for h in seen_hits if CONTENT in h.vectors])
    contents = None
    if user_profile is not None and all(CONTENT in h.vectors for h in hits):
        contents = np.stack([h.vectors[CONTENT] for h in hits])
    scores = score_items(user, served, contents, user_profile, alpha)
    order = np.argsort(-scores, kind="stable")[:k]
    items = [ScoredItem(item_id=hits[i].item_id, score=float(scores[i])) for i in order]
    return Recommendations(
        rec_id=uuid.uuid4().hex, user_id=user_id, alpha=alpha, model_version=config["version"], items=items
    )


@router.post("/events", response_model=EventsAccepted)
def post_events(events: EventIn | list[EventIn], rt: RuntimeDep) -> EventsAccepted:
    """Record user-item interactions; each touched item slides towards a CF vector learned from its audience."""
    batch = events if isinstance(events, list) else [events]
    if not batch:
        raise HTTPException(422, "no events given")
    if len(batch) > 10_000:
        raise HTTPException(413, f"at most 10000 events per request, got {len(batch)}")
    config = rt.model_config()
    reg = float(config.get("als_reg", 0.05))
    item_ids = sorted({e.item_id for e in batch})
    indexed = {h.item_id: h for h in get_items(rt.index, item_ids, vectors=False)}
    with Session(rt.engine) as session:
        known = {r.item_id for r in session.query(ItemRecord.item_id).filter(ItemRecord.item_id.in_(item_ids))}
        unknown = [i for i in item_ids if i not in indexed and i not in known]
        if unknown:
            raise HTTPException(404, f"unknown item ids {unknown[:10]}: upload them before sending events")
        for e in batch:
            session.add(
                Interaction(user_id=e.user_id, item_id=e.item_id, weight=e.weight, kind=e.type, rec_id=e.rec_id)
            )
        session.commit()
        for item_id, hit in indexed.items():
            audience = item_audience(session, item_id)
            if hit.payload.get("cf_source") == "als":
                continue  # learned by ALS on far more data; the next training run updates it
            users = [(get_user(rt.index, u), w) for u, w in audience]
            known_users = [(found[0], w) for found, w in users if found is not None]
            if known_users:
                vecs = np.stack([v for v, _ in known_users])
                cf = fold_in(vecs, np.array([1.0 + w for _, w in known_users]), reg)
                set_item_cf(rt.index, ITEMS, item_id, cf, len(audience))
    return EventsAccepted(accepted=len(batch))
