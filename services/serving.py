"""Services: serving recommendations — per request, each model view resolved once, the user's history and its items'
vectors read once, each policy's candidate searches (its `queries`) sent to the index as one batch, and the
candidates ranked by the policy (thaw.experiments.policies). Serving reads the index and never writes it."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from indexer.engine import Query
from indexer.search import Hit, get_items, get_user, largest, nearest, payload_filter, query_batch, random_sample
from services.db import history
from services.runtime import ModelView, Runtime
from thaw.experiments.policies import (
    KNN_MODALITIES,
    Candidates,
    Policy,
    Search,
    TopBy,
    UserContext,
    index_vectors,
    rank,
)
from thaw.factors import fold_in_events
from thaw.schema import CF, CONTENT
from thaw.scoring import knn_matrix, profile, served_vector, strongest

HISTORY_EVENTS = 500  # the newest events a user's folded-in vector is solved from
PROFILE_ITEMS = 200  # the newest history items a content profile averages
FIELDS = ["item_id", "interactions"]  # the payload ranking and the exposure log read


@dataclass
class Request:
    """One recommendation request: the user, their newest events (item, weight) from the database, and options."""

    user_id: str
    events: list[tuple[str, float]]
    cold_only: bool = False
    seed: int = 0
    match: Mapping[str, str | int | bool] | None = None  # candidates' payload must match (e.g. {"modalities": "image"})
    exclude: Sequence[str] = ()  # items never served, besides the user's history
    explain: bool = False  # say which history items put each served item there (Served.because)
    views: dict[str | None, ModelView] = field(default_factory=dict)  # resolved once per request, by version asked

    def view(self, rt: Runtime, version: str | None = None) -> ModelView:
        """The model view of `version` (None: the served one), resolved on first use and kept for the request."""
        if version not in self.views:
            view = rt.view(version)
            self.views[version] = self.views[view.version] = view
            if view.served:
                self.views[None] = view
        return self.views[version]

    @property
    def seen(self) -> list[str]:
        return list(dict.fromkeys(item for item, _ in self.events))


def read_request(
    rt: Runtime,
    user_id: str,
    *,
    cold_only: bool = False,
    seed: int = 0,
    match: Mapping[str, str | int | bool] | None = None,
    exclude: Sequence[str] = (),
    explain: bool = False,
) -> Request:
    with rt.session() as session:
        events = history(session, user_id, HISTORY_EVENTS)
    return Request(user_id, events, cold_only, seed, match, tuple(exclude), explain)


@dataclass(frozen=True)
class Because:
    """Why an item was served: `source` "history" names the user's history `items` whose content vectors are
    closest to the item's (the largest terms of the content similarity in its score), with their cosines; otherwise
    the signal that ranked it alone: "cf" (the user's CF factors), "popularity", or another policy's name."""

    source: str
    items: tuple[str, ...] = ()
    similarity: tuple[float, ...] = ()


@dataclass
class Served:
    """A ranked list of one policy, with what the exposure log needs about each item when it was served."""

    policy: Policy
    model_version: str
    alpha: float | None
    items: list[str]
    scores: list[float]
    interactions: list[int]  # when served
    because: list[Because] | None = None  # with Request.explain

    def take(self, positions: Sequence[int] | slice) -> Served:
        """The list reduced to these positions (in this order)."""
        picks = range(len(self.items))[positions] if isinstance(positions, slice) else positions
        because = None if self.because is None else [self.because[p] for p in picks]
        return replace(
            self,
            items=[self.items[p] for p in picks],
            scores=[self.scores[p] for p in picks],
            interactions=[self.interactions[p] for p in picks],
            because=because,
        )


def _served(hit: Hit, shrinkage: float) -> np.ndarray | None:
    interactions = int(hit.payload.get("interactions", 0))
    return served_vector(hit.vectors.get(CF), hit.vectors.get(CONTENT), interactions, shrinkage)


def user_vector(rt: Runtime, view: ModelView, req: Request, hits: dict[str, Hit]) -> np.ndarray | None:
    """The user's factors: learned by ALS, else folded in from their events against the items' served vectors
    (computed per request, never written to the index)."""
    found = get_user(rt.index, req.user_id, collection=view.users)
    if found is not None and found[1].get("source") == "als":
        return found[0]
    weights: dict[str, float] = defaultdict(float)
    for item, w in req.events:
        weights[item] += w  # repeated events add up, as in training's confidence matrix
    c = view.config
    rows = [(v, weights[i]) for i in weights if i in hits and (v := _served(hits[i], c.cf_shrinkage)) is not None]
    if not rows:
        return None
    vecs, counts = np.stack([v for v, _ in rows]), np.array([n for _, n in rows])
    return fold_in_events(vecs, counts, reg=c.als_reg, alpha=c.als_alpha, gram=view.item_gram)


def _knn(hits: list[Hit], dims: dict[str, int]) -> np.ndarray:
    """content_knn vectors of hits from their stored unit text and image embeddings (zeros where absent; a modality
    the model lacks has no columns)."""
    parts = [np.stack([h.vectors.get(m, np.zeros(dims.get(m, 0), np.float32)) for h in hits]) for m in KNN_MODALITIES]
    return knn_matrix(*parts)


def user_context(rt: Runtime, view: ModelView, req: Request, needs: frozenset[str]) -> UserContext:
    """What the policies need of the user, from one read of their history items' vectors."""
    vectors = ([CF, CONTENT] if needs & {"vector", "profile"} else []) + (
        [m for m in KNN_MODALITIES if m in view.config.embedding_dims] if needs & {"knn_profile", "knn_history"} else []
    )
    seen = req.seen
    found = get_items(rt.index, seen, vectors=vectors, collection=view.items, fields=FIELDS) if vectors else []
    hits = {h.item_id: h for h in found}
    recent = [hits[i] for i in seen[:PROFILE_ITEMS] if i in hits]
    ctx = UserContext()
    if "vector" in needs:
        ctx.vector = user_vector(rt, view, req, hits)
    if "profile" in needs:
        with_content = [h for h in recent if CONTENT in h.vectors]
        ctx.profile = profile([h.vectors[CONTENT] for h in with_content])
        ctx.history = [h.item_id for h in with_content]
        ctx.history_content = np.stack([h.vectors[CONTENT] for h in with_content]) if with_content else None
    if needs & {"knn_profile", "knn_history"} and recent:
        knn = _knn(recent, view.config.embedding_dims)
        ctx.knn_profile = profile(list(knn)) if "knn_profile" in needs else None
        ctx.knn_history = knn if "knn_history" in needs else None
    return ctx


def _rows(hits: list[Hit], name: str, dim: int) -> np.ndarray:
    missing = np.full(dim, np.nan, np.float32)
    return np.stack([h.vectors.get(name, missing) for h in hits]).astype(np.float32)


def _candidates(
    rt: Runtime, view: ModelView, policy: Policy, arrays: Sequence[str], ctx: UserContext, req: Request, k: int
) -> list[Hit]:
    n = max(100, 5 * k)
    dims = view.config.embedding_dims
    with_vectors = index_vectors(arrays)
    batch: list[Query] = []
    for q in policy.queries(ctx, cold_only=req.cold_only, knn_dims=[dims.get(m, 0) for m in KNN_MODALITIES]):
        warm_only = isinstance(q, Search) and q.warm_only
        flt = payload_filter(
            req.match, exclude_items=[*req.seen, *req.exclude], cold_only=req.cold_only, warm_only=warm_only
        )
        if isinstance(q, Search):
            batch.append(nearest(q.vector, q.using, n, flt, with_vectors=with_vectors, fields=FIELDS))
        elif isinstance(q, TopBy):
            batch.append(largest(q.key, n, flt, fields=FIELDS))
        else:
            batch.append(random_sample(n, flt, fields=FIELDS))
    hits: dict[str, Hit] = {}
    for found in query_batch(rt.index, batch, collection=view.items):
        for h in found:
            hits.setdefault(h.item_id, h)
    return list(hits.values())


def needs(policies: Sequence[Policy], knn_weight: float) -> frozenset[str]:
    """The UserContext fields these policies read under a model whose knn weight is `knn_weight`."""
    return frozenset().union(*(p.reads(knn_weight)[0] for p in policies))


def serve(
    rt: Runtime, policies: Sequence[Policy], k: int, req: Request, contexts: dict[str, UserContext] | None = None
) -> list[Served]:
    """Rank up to k unseen items for the user with each policy. The user's context is built once per model version
    (`contexts` may hold it already, by version). UnknownVersionError / VersionNotIndexedError when a policy's model
    version cannot be served."""
    contexts = {} if contexts is None else contexts
    out = []
    for policy in policies:
        view = req.view(rt, policy.model_version)
        if view.version not in contexts:
            contexts[view.version] = user_context(rt, view, req, needs(policies, view.config.knn_weight))
        ctx = contexts[view.version]
        arrays = policy.reads(view.config.knn_weight)[1]
        found = _candidates(rt, view, policy, arrays, ctx, req, k)
        dim = len(ctx.vector) if ctx.vector is not None else view.config.dim
        cands = Candidates(
            [h.item_id for h in found],
            np.array([int(h.payload.get("interactions", 0)) for h in found], np.int64),
            _rows(found, CONTENT, dim) if "content" in arrays and found else None,
            _rows(found, CF, dim) if "cf" in arrays and found else None,
            _knn(found, view.config.embedding_dims) if "knn" in arrays and found else None,
        )
        c = view.config
        order, scores = rank(
            policy,
            cands,
            ctx,
            k,
            default_alpha=c.alpha,
            shrinkage=c.cf_shrinkage,
            seed=req.seed,
            default_knn_weight=c.knn_weight,
            default_knn_beta=c.knn_beta,
        )
        items = [cands.item_ids[i] for i in order]
        payloads = {h.item_id: h.payload for h in found}
        if not view.served:  # interaction counts are kept current on the served collection
            payloads.update({h.item_id: h.payload for h in get_items(rt.index, items, vectors=False)})
        alpha = (c.alpha if policy.alpha is None else policy.alpha) if policy.tunable else None
        interactions = [int(payloads[i].get("interactions", 0)) for i in items]
        contents = None if cands.content is None else cands.content[order]
        because = _because(policy, ctx, contents, len(order)) if req.explain else None
        out.append(Served(policy, view.version, alpha, items, scores, interactions, because))
    return out


def _because(policy: Policy, ctx: UserContext, contents: np.ndarray | None, n: int, top: int = 3) -> list[Because]:
    """A by-product of the ranking: for each served item (its content vector a row of `contents`), the history items
    of the user's content profile that contribute most to its content similarity, else the policy's own signal."""
    signal = "cf" if policy.name == "thaw" else policy.name
    if contents is None or ctx.history_content is None:
        return [Because(signal)] * n
    picks = strongest(contents, ctx.history_content, top)
    return [
        Because("history", tuple(ctx.history[j] for j, _ in row), tuple(round(c, 4) for _, c in row))
        if row
        else Because(signal)
        for row in picks
    ]
