"""Indexer: idempotent upserts of items and users (point ids are uuid5 of the ids, so repeats overwrite)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from indexer.collections import ITEMS, USERS, Index, version_collections
from indexer.engine import Record, with_twins
from thaw.schema import CF, SIMILARITY_VECTORS, point_id, user_point_id


@dataclass
class ItemPoint:
    item_id: str
    vectors: dict[str, np.ndarray]
    payload: dict[str, Any] = field(default_factory=dict)


def upsert_items(index: Index, collection: str, points: Sequence[ItemPoint], *, keep_cf: bool = True) -> list[str]:
    """Write items; returns the ids written. With `keep_cf` an item that already has a learned CF vector and
    interaction count keeps them (a re-upload replaces content, not the interactions the item has earned). A point
    whose payload carries a `revision` never replaces a stored point of a newer revision: a slow re-embedding of an
    item cannot overwrite the vectors of a newer upload (the engine reads and writes under one lock of the process
    that owns the index)."""
    if not points:
        return []
    records = [
        Record(
            point_id(p.item_id),
            dict(p.payload, item_id=p.item_id),
            {k: np.asarray(v, np.float32) for k, v in p.vectors.items()},
        )
        for p in points
    ]
    guarded = any("revision" in p.payload for p in points)
    written = set(index.engine().upsert(index.collection(collection), records, keep_cf=keep_cf, guarded=guarded))
    return [p.item_id for p in points if point_id(p.item_id) in written]


def set_item_cf(index: Index, collection: str, item_id: str, cf: np.ndarray, interactions: int) -> None:
    """Move an item towards its learned CF vector as it gains interactions (vector + count, nothing else)."""
    index.engine().update(
        index.collection(collection),
        point_id(item_id),
        with_twins({CF: np.asarray(cf, np.float32)}),
        {"interactions": interactions},
    )


def clear_item_cf(index: Index, collection: str, item_id: str, interactions: int) -> None:
    """Drop an item's CF vector (and its cosine twin) and set its interaction count: the point is rewritten whole."""
    engine, name = index.engine(), index.collection(collection)
    found = engine.retrieve(name, [point_id(item_id)], True, True)
    if found:
        point, dropped = found[0], {CF, SIMILARITY_VECTORS[CF]}
        vectors = {k: v for k, v in point.vectors.items() if k not in dropped}
        engine.write(name, [Record(point.id, dict(point.payload, interactions=interactions), vectors)])


def upsert_users(
    index: Index, collection: str, user_ids: Sequence[str], vectors: np.ndarray, payloads: Sequence[dict[str, Any]]
) -> None:
    records = [
        Record(user_point_id(u), dict(p, user_id=u), {CF: np.asarray(v, np.float32)})
        for u, v, p in zip(user_ids, vectors, payloads, strict=True)
    ]
    engine, name = index.engine(), index.collection(collection)
    for start in range(0, len(records), 2048):
        engine.write(name, records[start : start + 2048])


def delete_items(index: Index, item_ids: Sequence[str]) -> list[str]:
    """Remove the items' points from every version's items collection; returns the collections that held one."""
    return _delete_everywhere(index, ITEMS, [point_id(i) for i in item_ids])


def delete_users(index: Index, user_ids: Sequence[str]) -> list[str]:
    """Remove the users' points from every version's users collection; returns the collections that held one."""
    return _delete_everywhere(index, USERS, [user_point_id(u) for u in user_ids])


def _delete_everywhere(index: Index, kind: str, ids: list[str]) -> list[str]:
    engine, held = index.engine(), []
    for name in version_collections(index, kind):
        if engine.retrieve(name, ids, False, False):
            held.append(name)
        engine.delete(name, ids)  # even where none was read: a write may have landed since
    return held
