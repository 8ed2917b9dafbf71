"""Indexer: reads for the API — one item, similar items, a user's vector, recommendation candidates."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from qdrant_client.http import models as qm

from indexer.collections import ITEMS, SIMILARITY_VECTORS, USERS, Index
from thaw.errors import NotFoundError
from thaw.schema import CF, CONTENT, point_id, user_point_id


@dataclass
class Hit:
    item_id: str
    score: float
    payload: dict[str, Any] = field(default_factory=dict)
    vectors: dict[str, np.ndarray] = field(default_factory=dict)


class NotIndexedError(NotFoundError):
    """The item or user is not in the index (or lacks the vector asked for)."""


def payload_filter(
    match: Mapping[str, str | int | bool] | None = None,
    *,
    exclude_items: list[str] | None = None,
    cold_only: bool = False,
    warm_only: bool = False,
) -> qm.Filter | None:
    must: list[qm.Condition] = [
        qm.FieldCondition(key=key, match=qm.MatchValue(value=value)) for key, value in (match or {}).items()
    ]
    if cold_only:
        must.append(qm.FieldCondition(key="interactions", match=qm.MatchValue(value=0)))
    if warm_only:
        must.append(qm.FieldCondition(key="interactions", range=qm.Range(gt=0)))
    must_not: list[qm.Condition] = []
    if exclude_items:
        must_not.append(qm.HasIdCondition(has_id=[point_id(i) for i in exclude_items]))
    return qm.Filter(must=must or None, must_not=must_not or None) if (must or must_not) else None


def _vectors(raw: object) -> dict[str, np.ndarray]:
    if not isinstance(raw, dict):
        return {}
    return {k: np.asarray(v, dtype=np.float32) for k, v in raw.items()}


def _hits(points: list[Any]) -> list[Hit]:
    """Qdrant points (scored or retrieved: score 1.0) as Hits."""
    out = []
    for p in points:
        score = getattr(p, "score", None)
        out.append(
            Hit(
                str((p.payload or {}).get("item_id")),
                1.0 if score is None else float(score),
                p.payload or {},
                _vectors(p.vector),
            )
        )
    return out


def get_item(index: Index, item_id: str, *, vectors: list[str] | bool = False) -> Hit | None:
    with index.session() as client:
        recs = client.retrieve(
            index.collection(client, ITEMS), [point_id(item_id)], with_vectors=vectors, with_payload=True
        )
    if not recs:
        return None
    return Hit(item_id, 1.0, recs[0].payload or {}, _vectors(recs[0].vector))


def similar(
    index: Index, item_id: str, using: str, k: int, match: Mapping[str, str | int | bool] | None = None
) -> list[Hit]:
    """The k items most similar to `item_id` by its `using` vector (cosine, in [-1, 1]), the item itself excluded."""
    item = get_item(index, item_id, vectors=[using])
    if item is None:
        raise NotIndexedError(f"item {item_id!r} is not indexed")
    if using not in item.vectors:
        raise NotIndexedError(
            f"item {item_id!r} has no {using!r} vector (modalities: {item.payload.get('modalities')})"
        )
    flt = payload_filter(match, exclude_items=[item_id])
    return search(index, item.vectors[using], SIMILARITY_VECTORS.get(using, using), k, flt)


def search(
    index: Index,
    vector: np.ndarray,
    using: str,
    k: int,
    query_filter: qm.Filter | None = None,
    *,
    with_vectors: bool | list[str] = False,
    collection: str = ITEMS,
) -> list[Hit]:
    """The k items nearest to `vector` by the named vector `using`; `with_vectors=True` returns CF and content."""
    query = np.asarray(vector, np.float32).tolist()
    vectors = [CF, CONTENT] if with_vectors is True else with_vectors
    return _query(index, query, k, query_filter, vectors, collection, using=using)


def _query(
    index: Index,
    query: Any,
    k: int,
    query_filter: qm.Filter | None,
    with_vectors: list[str] | bool,
    collection: str,
    *,
    using: str | None = None,
) -> list[Hit]:
    with index.session() as client:
        res = client.query_points(
            index.collection(client, collection),
            query=query,
            using=using,
            limit=k,
            query_filter=query_filter,
            with_payload=True,
            with_vectors=with_vectors,
        )
    return _hits(res.points)


def top_by(
    index: Index,
    key: str,
    k: int,
    query_filter: qm.Filter | None = None,
    *,
    with_vectors: list[str] | bool = False,
    collection: str = ITEMS,
) -> list[Hit]:
    """The k items with the largest integer payload `key` (e.g. `interactions`; needs its payload index)."""
    order = qm.OrderByQuery(order_by=qm.OrderBy(key=key, direction=qm.Direction.DESC))
    return _query(index, order, k, query_filter, with_vectors, collection)


def sample(
    index: Index,
    k: int,
    query_filter: qm.Filter | None = None,
    *,
    with_vectors: list[str] | bool = False,
    collection: str = ITEMS,
) -> list[Hit]:
    """k items drawn at random by Qdrant (not seeded)."""
    return _query(index, qm.SampleQuery(sample=qm.Sample.RANDOM), k, query_filter, with_vectors, collection)


def count(index: Index, query_filter: qm.Filter | None = None, *, collection: str = ITEMS) -> int:
    with index.session() as client:
        return int(client.count(index.collection(client, collection), count_filter=query_filter, exact=True).count)


def get_items(index: Index, item_ids: list[str], *, vectors: list[str] | bool, collection: str = ITEMS) -> list[Hit]:
    if not item_ids:
        return []
    with index.session() as client:
        recs = client.retrieve(
            index.collection(client, collection),
            [point_id(i) for i in item_ids],
            with_vectors=vectors,
            with_payload=True,
        )
    return _hits(recs)


def get_user(index: Index, user_id: str, *, collection: str = USERS) -> tuple[np.ndarray, dict[str, Any]] | None:
    with index.session() as client:
        recs = client.retrieve(
            index.collection(client, collection), [user_point_id(user_id)], with_vectors=[CF], with_payload=True
        )
    if not recs:
        return None
    return _vectors(recs[0].vector)[CF], recs[0].payload or {}


def get_users(index: Index, user_ids: list[str], *, collection: str = USERS) -> dict[str, np.ndarray]:
    """The CF vectors of those of `user_ids` that are in the users collection, in one read."""
    if not user_ids:
        return {}
    with index.session() as client:
        recs = client.retrieve(
            index.collection(client, collection), [user_point_id(u) for u in user_ids], with_vectors=[CF]
        )
    ids = {user_point_id(u): u for u in user_ids}
    return {ids[str(r.id)]: _vectors(r.vector)[CF] for r in recs}


def payloads(
    index: Index, collection: str, fields: list[str], query_filter: qm.Filter | None = None
) -> list[dict[str, Any]]:
    """The `fields` of every point of a collection matching the filter (a scroll, page by page)."""
    out: list[dict[str, Any]] = []
    offset: Any = None
    with index.session() as client:
        name = index.collection(client, collection)
        while True:
            page, offset = client.scroll(
                name, scroll_filter=query_filter, limit=1000, offset=offset, with_payload=fields, with_vectors=False
            )
            out.extend(p.payload or {} for p in page)
            if offset is None:
                return out
