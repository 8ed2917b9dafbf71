"""API: serving one policy online — its candidates fetched from the index (indexer/search.py) and ranked by the pure
policies of thaw.experiments.policies. The default recommendations are the `thaw` policy on the active model; an
experiment's arms are the other policies, or `thaw` with another alpha or model version."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from api.blend import profile, served_vector
from indexer.collections import ITEMS, USERS, collection_name
from indexer.search import Hit, get_items, get_user, payload_filter, sample, search, top_by
from indexer.writer import upsert_users
from thaw.db import ItemRecord, as_utc, history, utcnow
from thaw.experiments.policies import KNN_MODALITIES, Candidates, Policy, UserContext, knn_matrix, rank
from thaw.factors import fold_in
from thaw.runtime import Runtime
from thaw.schema import CF, CONTENT


class VersionUnavailableError(LookupError):
    """A model version named by an arm is not trained, or its items are not indexed."""


@dataclass
class ModelView:
    """One model version as serving sees it: its collections (the aliases for the active version) and defaults."""

    version: str
    items: str
    users: str
    alpha: float
    reg: float
    shrinkage: float
    embedding_dims: dict[str, int] = field(default_factory=dict)


def model_view(rt: Runtime, version: str | None = None) -> ModelView:
    """The active model (ModelNotReadyError without one), or `version`, whose collections must exist."""
    from encoders.artifacts import list_versions

    active = rt.active_version()
    if version is None or version == active:
        config, items, users = rt.model_config(), ITEMS, USERS
    else:
        versions = list_versions(rt.models_dir)
        if version not in versions:
            raise VersionUnavailableError(f"model version {version!r} is not trained; have {versions}")
        items, users = collection_name(ITEMS, version), collection_name(USERS, version)
        with rt.index.session() as client:
            indexed = client.collection_exists(items) and client.collection_exists(users)
        if not indexed:
            raise VersionUnavailableError(
                f"model version {version!r} has no indexed collections {items}, {users}: index its items first"
            )
        config = json.loads((rt.models_dir / version / "config.json").read_text())
    return ModelView(
        version if version is not None else str(config.get("version", active)),
        items,
        users,
        float(config.get("alpha", 0.5)),
        float(config.get("als_reg", 0.05)),
        float(config.get("cf_shrinkage", 10.0)),
        {str(k): int(v) for k, v in (config.get("embedding_dims") or {}).items()},
    )


def _served(hit: Hit, shrinkage: float) -> np.ndarray | None:
    return served_vector(
        hit.vectors.get(CF), hit.vectors.get(CONTENT), int(hit.payload.get("interactions", 0)), shrinkage
    )


def user_vector(rt: Runtime, user_id: str, view: ModelView) -> np.ndarray | None:
    """The user's factors: learned by ALS, else folded in from their events against the items' served vectors."""
    found = get_user(rt.index, user_id, collection=view.users)
    if found is not None and found[1].get("source") == "als":
        return found[0]
    with Session(rt.engine) as session:
        events = history(session, user_id)
    if not events:
        return found[0] if found else None
    weights = dict(events)
    hits = get_items(rt.index, list(weights), vectors=[CF, CONTENT], collection=view.items)
    hits = [h for h in hits if _served(h, view.shrinkage) is not None]
    if not hits:
        return None
    vecs = np.stack([_served(h, view.shrinkage) for h in hits])  # type: ignore[misc]
    vector = fold_in(vecs, np.array([1.0 + weights[h.item_id] for h in hits]), view.reg)
    upsert_users(rt.index, view.users, [user_id], vector[None, :], [{"source": "events", "events": len(events)}])
    return vector


def seen_items(rt: Runtime, user_id: str) -> list[str]:
    with Session(rt.engine) as session:
        return [item for item, _ in history(session, user_id)]


def _knn(hits: list[Hit], dims: dict[str, int]) -> np.ndarray:
    """content_knn vectors of hits from their stored unit text and image embeddings (zeros where absent)."""
    parts = []
    for m in KNN_MODALITIES:
        d = dims.get(m) or next((len(h.vectors[m]) for h in hits if m in h.vectors), 0)
        parts.append(np.stack([h.vectors.get(m, np.zeros(d, np.float32)) for h in hits]) if hits else np.zeros((0, d)))
    return knn_matrix(*parts)


def _rows(hits: list[Hit], name: str, dim: int) -> np.ndarray:
    missing = np.full(dim, np.nan, np.float32)
    return np.stack([h.vectors.get(name, missing) for h in hits]).astype(np.float32)


@dataclass
class Served:
    """A ranked list of one policy, with what the exposure log needs about each item when it was served."""

    policy: Policy
    model_version: str
    alpha: float | None
    items: list[str]
    scores: list[float]
    interactions: list[int]  # when served


def serve(
    rt: Runtime,
    policy: Policy,
    k: int,
    *,
    user_id: str,
    seen: list[str],
    cold_only: bool = False,
    seed: int = 0,
    active_user: np.ndarray | None = None,
) -> Served:
    """Rank up to k unseen items for a user with one policy. `active_user`: the user's vector on the active model,
    already computed by the caller. VersionUnavailableError when the policy's model version cannot be served."""
    view = model_view(rt, policy.model_version)
    n = max(100, 5 * k)
    query_filter = payload_filter(exclude_items=seen, cold_only=cold_only)
    ctx = UserContext()
    hits: dict[str, Hit] = {}

    def add(found: list[Hit]) -> None:
        for h in found:
            hits.setdefault(h.item_id, h)

    if policy.name in ("thaw", "cf_only"):
        ctx.vector = active_user if active_user is not None and view.items == ITEMS else user_vector(rt, user_id, view)
    if policy.name == "thaw" and ctx.vector is not None:
        for using in (CONTENT, CF):
            add(search(rt.index, ctx.vector, using, n, query_filter, with_vectors=True, collection=view.items))
        history_hits = get_items(rt.index, seen[:200], vectors=[CONTENT], collection=view.items)
        ctx.profile = profile([h.vectors[CONTENT] for h in history_hits if CONTENT in h.vectors])
    elif policy.name == "cf_only" and ctx.vector is not None and not cold_only:
        warm = payload_filter(exclude_items=seen, warm_only=True)
        add(search(rt.index, ctx.vector, CF, n, warm, with_vectors=[CF], collection=view.items))
    elif policy.name == "content_knn":
        history_hits = get_items(rt.index, seen[:200], vectors=list(KNN_MODALITIES), collection=view.items)
        ctx.knn_profile = profile(list(_knn(history_hits, view.embedding_dims))) if history_hits else None
        if ctx.knn_profile is not None:
            offset = 0
            for m in KNN_MODALITIES:  # candidates: nearest by each modality; ranked below by the joint cosine
                d = view.embedding_dims.get(m) or next((len(h.vectors[m]) for h in history_hits if m in h.vectors), 0)
                part = ctx.knn_profile[offset : offset + d]
                offset += d
                if d and np.linalg.norm(part) > 0:
                    vecs = list(KNN_MODALITIES)
                    add(search(rt.index, part, m, n, query_filter, with_vectors=vecs, collection=view.items))
    elif policy.name == "popularity":
        add(top_by(rt.index, "interactions", n, query_filter, collection=view.items))
    elif policy.name == "random":
        add(sample(rt.index, n, query_filter, collection=view.items))
    found = list(hits.values())
    dim = len(ctx.vector) if ctx.vector is not None else 0
    cands = Candidates(
        [h.item_id for h in found],
        np.array([int(h.payload.get("interactions", 0)) for h in found], np.int64),
        _rows(found, CONTENT, dim) if policy.name == "thaw" and found else None,
        _rows(found, CF, dim) if policy.name in ("thaw", "cf_only") and found else None,
        _knn(found, view.embedding_dims) if policy.name == "content_knn" and found else None,
    )
    order, scores = rank(policy, cands, ctx, k, default_alpha=view.alpha, shrinkage=view.shrinkage, seed=seed)
    items = [cands.item_ids[i] for i in order]
    payloads = {h.item_id: h.payload for h in found}
    if view.items != ITEMS:  # interaction counts are kept current on the active collection
        payloads.update({h.item_id: h.payload for h in get_items(rt.index, items, vectors=False)})
    alpha = (view.alpha if policy.alpha is None else policy.alpha) if policy.name == "thaw" else None
    return Served(
        policy,
        view.version,
        alpha,
        items,
        scores,
        [int(payloads[i].get("interactions", 0)) for i in items],
    )


def item_ages(rt: Runtime, item_ids: list[str]) -> list[float | None]:
    """Seconds since each item was first uploaded (the database's record), None where unknown."""
    if not item_ids:
        return []
    with Session(rt.engine) as session:
        rows = session.execute(
            select(ItemRecord.item_id, ItemRecord.created_at).where(ItemRecord.item_id.in_(item_ids))
        ).all()
    created = {item: as_utc(at) for item, at in rows}
    now = utcnow()
    return [(now - created[i]).total_seconds() if i in created else None for i in item_ids]


def exposure_items(rt: Runtime, served: Served, teams: list[str] | None = None) -> list[dict[str, Any]]:
    """The exposure log's view of a served list: position, score, interactions and cold when shown, age, team."""
    ages = item_ages(rt, served.items)
    return [
        {
            "item_id": item,
            "position": p,
            "score": served.scores[p],
            "interactions": served.interactions[p],
            "cold": served.interactions[p] == 0,
            "age_s": ages[p],
            "team": teams[p] if teams else None,
        }
        for p, item in enumerate(served.items)
    ]
