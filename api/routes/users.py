"""API: recommendations (the default blend, or an experiment's arm, logged as an exposure) and interaction events."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, HTTPException, Query
from sqlalchemy.orm import Session

from api.deps import RuntimeDep
from api.routes.experiments import experiment_spec, interleave, is_running, joined_events
from api.schemas import EventIn, EventsAccepted, Recommendations, RecommendedItem
from api.serving import Served, VersionUnavailableError, exposure_items, model_view, seen_items, serve, user_vector
from indexer.collections import ITEMS
from indexer.search import get_items, get_user
from indexer.writer import set_item_cf
from thaw.db import Experiment, Exposure, Interaction, ItemRecord, item_audience, utcnow
from thaw.experiments.assignment import seed_of
from thaw.experiments.policies import Policy
from thaw.factors import fold_in
from thaw.schema import CF_SOURCE, InvalidIdError, check_id

router = APIRouter(tags=["recommendations"])


def _response(
    rec_id: str, user_id: str, served: Served, teams: list[str] | None = None, **extra: Any
) -> Recommendations:
    items = [
        RecommendedItem(item_id=i, score=sc, cold=n == 0, team=teams[p] if teams else None)
        for p, (i, sc, n) in enumerate(zip(served.items, served.scores, served.interactions, strict=True))
    ]
    return Recommendations(
        rec_id=rec_id, user_id=user_id, alpha=served.alpha, model_version=served.model_version, items=items, **extra
    )


@router.get("/users/{user_id}/recommendations", response_model=Recommendations)
def recommend(
    user_id: str,
    rt: RuntimeDep,
    k: Annotated[int, Query(ge=1, le=500)] = 10,
    alpha: Annotated[float | None, Query(ge=0.0, le=1.0)] = None,
    cold_only: bool = False,
    experiment: Annotated[str | None, Query(max_length=64, description="serve this experiment's arm")] = None,
) -> Recommendations:
    """The blended recommendations (the `thaw` policy on the active model); with `experiment`, the user's arm of a
    running experiment, logged as an exposure under the returned rec_id (outside its time window: the default,
    not logged)."""
    try:
        user_id = check_id(user_id, "user_id")
    except InvalidIdError as exc:
        raise HTTPException(422, str(exc)) from exc
    record = None
    if experiment is not None:
        with Session(rt.engine) as session:
            record = session.get(Experiment, experiment)
        if record is None:
            raise HTTPException(404, f"experiment {experiment!r} does not exist")
        if alpha is not None:
            raise HTTPException(422, "alpha is fixed by the experiment's arms: leave it out when experiment is given")
    user = user_vector(rt, user_id, model_view(rt))
    if user is None:  # the same for every arm, so eligibility cannot differ between arms
        raise HTTPException(404, f"user {user_id!r} is unknown: no learned factors and no events")
    seen = seen_items(rt, user_id)
    rec_id = uuid.uuid4().hex
    kw: dict[str, Any] = {"user_id": user_id, "seen": seen, "cold_only": cold_only, "seed": seed_of(rec_id)}
    if record is None or not is_running(record, utcnow()):
        return _response(rec_id, user_id, serve(rt, Policy("thaw", alpha), k, active_user=user, **kw))
    spec = experiment_spec(record)
    try:
        if spec.kind == "ab":
            arm = spec.assign(user_id)
            served, teams, arm_name = serve(rt, arm.policy, k, active_user=user, **kw), None, arm.name
        else:
            a, b = (serve(rt, arm.policy, k, active_user=user, **kw) for arm in spec.arms)
            served, teams = interleave(a, b, k, rec_id, (spec.arms[0].name, spec.arms[1].name))
            arm_name = None
    except VersionUnavailableError as exc:
        raise HTTPException(409, f"experiment {record.experiment_id!r} cannot serve its arm: {exc}") from exc
    with Session(rt.engine) as session:
        session.add(
            Exposure(
                rec_id=rec_id,
                experiment_id=record.experiment_id,
                arm=arm_name,
                user_id=user_id,
                items=exposure_items(rt, served, teams),
            )
        )
        session.commit()
    return _response(rec_id, user_id, served, teams, experiment_id=record.experiment_id, arm=arm_name)


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
        joined = joined_events(session, batch)
        for item_id, hit in indexed.items():
            audience = item_audience(session, item_id)
            if hit.payload.get(CF_SOURCE) == "als":
                continue  # learned by ALS on far more data; the next training run updates it
            users = [(get_user(rt.index, u), w) for u, w in audience]
            known_users = [(found[0], w) for found, w in users if found is not None]
            if known_users:
                vecs = np.stack([v for v, _ in known_users])
                cf = fold_in(vecs, np.array([1.0 + w for _, w in known_users]), reg)
                set_item_cf(rt.index, ITEMS, item_id, cf, len(audience))
    return EventsAccepted(accepted=len(batch), joined=joined)
