"""Indexer: reads for the API — one item, similar items, a user's vector, recommendation candidates (one batch of
searches per request)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from indexer.collections import ITEMS, USERS, Index
from indexer.engine import Filter, Query, Record, Selection
from thaw.errors import NotFoundError
from thaw.schema import CF, CONTENT, SIMILARITY_VECTORS, point_id, user_point_id


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
    exclude_items: Sequence[str] | None = None,
    cold_only: bool = False,
    warm_only: bool = False,
) -> Filter | None:
    must = dict(match or {})
    if cold_only:
        must["interactions"] = 0
    greater = {"interactions": 0.0} if warm_only else {}
    exclude = tuple(point_id(i) for i in exclude_items or ())
    return Filter(must, greater, exclude) if (must or greater or exclude) else None


def _hits(records: list[Record]) -> list[Hit]:
    return [Hit(str(r.payload.get("item_id")), r.score, r.payload, r.vectors) for r in records]


def _vectors(with_vectors: Selection) -> Selection:
    """`True` asks for the vectors scoring uses (CF and content), not every stored one."""
    return [CF, CONTENT] if with_vectors is True else with_vectors


def get_item(index: Index, item_id: str, *, vectors: Selection = False) -> Hit | None:
    found = get_items(index, [item_id], vectors=vectors)
    return found[0] if found else None


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
    query = nearest(item.vectors[using], SIMILARITY_VECTORS.get(using, using), k, flt, fields=["item_id"])
    return query_batch(index, [query])[0]


def nearest(
    vector: np.ndarray,
    using: str,
    k: int,
    query_filter: Filter | None = None,
    *,
    with_vectors: Selection = False,
    fields: Selection = True,
) -> Query:
    """The query for the k items nearest to `vector` by the named vector `using`, with the payload `fields`."""
    vector = np.asarray(vector, np.float32)
    return Query(k, vector, using, filter=query_filter, with_vectors=_vectors(with_vectors), with_payload=fields)


def largest(
    key: str, k: int, query_filter: Filter | None = None, *, with_vectors: Selection = False, fields: Selection = True
) -> Query:
    """The query for the k items with the largest integer payload `key` (e.g. `interactions`; it has an index)."""
    return Query(k, order_by=key, filter=query_filter, with_vectors=_vectors(with_vectors), with_payload=fields)


def random_sample(
    k: int, query_filter: Filter | None = None, *, with_vectors: Selection = False, fields: Selection = True
) -> Query:
    """The query for k items drawn at random by the engine (not seeded)."""
    return Query(k, filter=query_filter, with_vectors=_vectors(with_vectors), with_payload=fields)


def query_batch(index: Index, queries: Sequence[Query], *, collection: str = ITEMS) -> list[list[Hit]]:
    """Several searches of one collection in one engine call, one list of hits per query."""
    found = index.engine().query_batch(index.collection(collection), queries)
    return [_hits(records) for records in found]


def search(
    index: Index,
    vector: np.ndarray,
    using: str,
    k: int,
    query_filter: Filter | None = None,
    *,
    with_vectors: Selection = False,
    collection: str = ITEMS,
) -> list[Hit]:
    """The k items nearest to `vector` by the named vector `using`; `with_vectors=True` returns CF and content."""
    query = nearest(vector, using, k, query_filter, with_vectors=with_vectors)
    return query_batch(index, [query], collection=collection)[0]


def top_by(
    index: Index,
    key: str,
    k: int,
    query_filter: Filter | None = None,
    *,
    with_vectors: Selection = False,
    collection: str = ITEMS,
) -> list[Hit]:
    """The k items with the largest integer payload `key`."""
    return query_batch(index, [largest(key, k, query_filter, with_vectors=with_vectors)], collection=collection)[0]


def sample(
    index: Index,
    k: int,
    query_filter: Filter | None = None,
    *,
    with_vectors: Selection = False,
    collection: str = ITEMS,
) -> list[Hit]:
    """k items drawn at random by the engine (not seeded)."""
    return query_batch(index, [random_sample(k, query_filter, with_vectors=with_vectors)], collection=collection)[0]


def count(index: Index, query_filter: Filter | None = None, *, collection: str = ITEMS) -> int:
    return index.engine().count(index.collection(collection), query_filter)


def get_items(
    index: Index, item_ids: list[str], *, vectors: Selection, collection: str = ITEMS, fields: Selection = True
) -> list[Hit]:
    """The stored items among `item_ids`, with the named `vectors` and the payload `fields`."""
    if not item_ids:
        return []
    found = index.engine().retrieve(index.collection(collection), [point_id(i) for i in item_ids], vectors, fields)
    return [Hit(str(r.payload.get("item_id")), 1.0, r.payload, r.vectors) for r in found]


def get_user(index: Index, user_id: str, *, collection: str = USERS) -> tuple[np.ndarray, dict[str, Any]] | None:
    found = index.engine().retrieve(index.collection(collection), [user_point_id(user_id)], [CF])
    if not found or CF not in found[0].vectors:
        return None
    return found[0].vectors[CF], found[0].payload


def get_users(index: Index, user_ids: list[str], *, collection: str = USERS) -> dict[str, np.ndarray]:
    """The CF vectors of those of `user_ids` that are in the users collection, in one read."""
    if not user_ids:
        return {}
    ids = {user_point_id(u): u for u in user_ids}
    found = index.engine().retrieve(index.collection(collection), list(ids), [CF], False)
    return {ids[r.id]: r.vectors[CF] for r in found if CF in r.vectors}


def payloads(
    index: Index, collection: str, fields: list[str], query_filter: Filter | None = None
) -> list[dict[str, Any]]:
    """The `fields` of every point of a collection matching the filter (a scroll, page by page)."""
    out: list[dict[str, Any]] = []
    offset: str | None = None
    engine, name = index.engine(), index.collection(collection)
    while True:
        page, offset = engine.scroll(name, query_filter, fields, offset, 1000)
        out.extend(r.payload for r in page)
        if offset is None:
            return out
