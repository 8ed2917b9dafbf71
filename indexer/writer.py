"""Indexer: idempotent upserts of items and users (point ids are uuid5 of the ids, so repeats overwrite)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from qdrant_client.http import models as qm

from indexer.collections import SIMILARITY_VECTORS, Index
from thaw.schema import CF, CF_SOURCE, point_id, user_point_id


@dataclass
class ItemPoint:
    item_id: str
    vectors: dict[str, np.ndarray]
    payload: dict[str, Any] = field(default_factory=dict)


def _vec(v: np.ndarray) -> list[float]:
    return np.asarray(v, dtype=np.float32).tolist()


def _with_twins(vectors: dict[str, list[float]]) -> dict[str, list[float]]:
    """The vectors with the cosine twin that similar-item search reads of each that has one."""
    return vectors | {twin: vectors[name] for name, twin in SIMILARITY_VECTORS.items() if name in vectors}


def upsert_items(index: Index, collection: str, points: Sequence[ItemPoint], *, keep_cf: bool = True) -> list[str]:
    """Write items; returns the ids written. With `keep_cf` an item that already has a learned CF vector and
    interaction count keeps them (a re-upload replaces content, not the interactions the item has earned). A point
    whose payload carries a `revision` never replaces a stored point of a newer revision: a slow re-embedding of an
    item cannot overwrite the vectors of a newer upload (read and write share one session, which holds the storage
    lock in embedded modes)."""
    if not points:
        return []
    ids = [point_id(p.item_id) for p in points]
    guarded = any("revision" in p.payload for p in points)
    with index.session() as client:
        target = index.collection(client, collection)
        existing = {}
        if keep_cf or guarded:
            recs = client.retrieve(
                target,
                ids,
                with_vectors=[CF] if keep_cf else False,
                with_payload=["interactions", "revision", CF_SOURCE],
            )
            existing = {str(rec.id): rec for rec in recs}
        structs, written = [], []
        for pid, p in zip(ids, points, strict=True):
            old = existing.get(pid)
            old_payload = (old.payload or {}) if old is not None else {}
            if "revision" in p.payload and int(old_payload.get("revision", 0)) > int(p.payload["revision"]):
                continue
            vectors = {name: _vec(v) for name, v in p.vectors.items()}
            payload = dict(p.payload, item_id=p.item_id)
            if keep_cf and old is not None and CF not in vectors and isinstance(old.vector, dict) and CF in old.vector:
                vectors[CF] = list(old.vector[CF])  # type: ignore[arg-type]
                payload["interactions"] = old_payload.get("interactions", payload.get("interactions", 0))
                if CF_SOURCE in old_payload:
                    payload[CF_SOURCE] = old_payload[CF_SOURCE]
            payload.setdefault("interactions", 0)
            structs.append(qm.PointStruct(id=pid, vector=_with_twins(vectors), payload=payload))  # type: ignore[arg-type]
            written.append(p.item_id)
        if structs:
            client.upsert(target, points=structs, wait=True)
    return written


def set_item_cf(index: Index, collection: str, item_id: str, cf: np.ndarray, interactions: int) -> None:
    """Move an item towards its learned CF vector as it gains interactions (vector + count, nothing else)."""
    pid = point_id(item_id)
    with index.session() as client:
        name = index.collection(client, collection)
        vectors = _with_twins({CF: _vec(cf)})
        client.update_vectors(name, points=[qm.PointVectors(id=pid, vector=vectors)], wait=True)  # type: ignore[arg-type]
        client.set_payload(name, payload={"interactions": interactions}, points=[pid], wait=True)


def upsert_users(
    index: Index, collection: str, user_ids: Sequence[str], vectors: np.ndarray, payloads: Sequence[dict[str, Any]]
) -> None:
    structs = [
        qm.PointStruct(id=user_point_id(u), vector={CF: _vec(v)}, payload=dict(p, user_id=u))
        for u, v, p in zip(user_ids, vectors, payloads, strict=True)
    ]
    with index.session() as client:
        name = index.collection(client, collection)
        for start in range(0, len(structs), 512):
            client.upsert(name, points=structs[start : start + 512], wait=True)
