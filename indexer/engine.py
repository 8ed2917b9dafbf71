"""Indexer: what every vector engine offers Thaw — collection specs, filters, queries, records, and the `Engine` base
that Qdrant Edge (in-process), a Qdrant server (qdrant-client) and a peer of the owning process implement. Code above
the indexer sees these types only, never an engine's own."""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from thaw.schema import CF, CF_SOURCE, SIMILARITY_VECTORS

Distance = Literal["cosine", "dot"]
PayloadType = Literal["keyword", "integer"]
Selection = list[str] | bool  # which vectors / payload fields a read returns: all, none, or these names

# Settings shared by every engine. Graphs: HNSW_M links per node, built with a beam of HNSW_EF_CONSTRUCT. The query
# planner scans a filter's matches exactly (through the payload index) only while their vectors take under
# FULL_SCAN_KB; above it, it searches the graph with the filter. Qdrant's default (10 MB: 78k points of 32-d) made
# every warm-only or cold-only search at 100k items an exact scan of 30k-70k points (docs/benchmarks.md). Search: a
# beam of HNSW_EF, and int8-quantized candidates rescored with the originals.
HNSW_M = 16
HNSW_EF_CONSTRUCT = 100
FULL_SCAN_KB = 1_000
HNSW_EF = 128
OVERSAMPLING = 2.0


@dataclass(frozen=True)
class VectorSpec:
    size: int
    distance: Distance


@dataclass(frozen=True)
class CollectionSpec:
    vectors: dict[str, VectorSpec]
    payload_indexes: dict[str, PayloadType] = field(default_factory=dict)
    quantized: tuple[str, ...] = ()  # named vectors stored with int8 scalar quantization (rescored with originals)


@dataclass(frozen=True)
class Filter:
    """Points whose payload has each `match` value, whose `greater` fields exceed the bound, and whose id is not in
    `exclude_ids`."""

    match: dict[str, str | int | bool] = field(default_factory=dict)
    greater: dict[str, float] = field(default_factory=dict)
    exclude_ids: tuple[str, ...] = ()


@dataclass(frozen=True)
class Query:
    """One read of a collection: nearest to `vector` by the named vector `using`, else the largest `order_by`
    payload value first, else a random sample."""

    limit: int
    vector: np.ndarray | None = None
    using: str | None = None
    order_by: str | None = None
    filter: Filter | None = None
    with_vectors: Selection = False
    with_payload: Selection = True

    def __post_init__(self) -> None:
        if (self.vector is None) != (self.using is None):
            raise ValueError(f"a nearest-vector query needs both vector and using; got using={self.using!r}")
        if self.vector is not None and self.order_by is not None:
            raise ValueError("a query is either nearest to a vector or ordered by a payload field, not both")


@dataclass
class Record:
    id: str
    payload: dict[str, Any] = field(default_factory=dict)
    vectors: dict[str, np.ndarray] = field(default_factory=dict)
    score: float = 1.0


def with_twins(vectors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The vectors with the cosine twin that similar-item search reads of each that has one."""
    return vectors | {twin: vectors[name] for name, twin in SIMILARITY_VECTORS.items() if name in vectors}


def merge_items(existing: dict[str, Record], points: Sequence[Record], *, keep_cf: bool) -> list[Record]:
    """What an item upsert writes, given the stored points: a point of an older `revision` than the stored one is
    dropped; with `keep_cf` a stored CF vector, its interaction count and its CF source are kept when the new point
    brings no CF vector (a re-upload replaces content, not what the item has earned)."""
    out = []
    for p in points:
        old = existing.get(p.id)
        old_payload = old.payload if old is not None else {}
        if "revision" in p.payload and int(old_payload.get("revision", 0)) > int(p.payload["revision"]):
            continue
        vectors, payload = dict(p.vectors), dict(p.payload)
        if keep_cf and old is not None and CF not in vectors and CF in old.vectors:
            vectors[CF] = old.vectors[CF]
            payload["interactions"] = old_payload.get("interactions", payload.get("interactions", 0))
            if CF_SOURCE in old_payload:
                payload[CF_SOURCE] = old_payload[CF_SOURCE]
        payload.setdefault("interactions", 0)
        out.append(Record(p.id, payload, with_twins(vectors)))
    return out


class Engine(ABC):
    """Collections of points with named vectors and payloads; `items`/`users` style aliases name collections.
    Every method accepts an alias where it takes a collection name. Methods are safe to call from several threads."""

    def __init__(self) -> None:
        self._write_lock = threading.RLock()

    @abstractmethod
    def collections(self) -> list[str]: ...

    @abstractmethod
    def create_collection(self, name: str, spec: CollectionSpec) -> None: ...

    @abstractmethod
    def delete_collection(self, name: str) -> None: ...

    @abstractmethod
    def aliases(self) -> dict[str, str]: ...

    @abstractmethod
    def set_aliases(self, aliases: dict[str, str]) -> None:
        """Point each alias at its collection, all in one atomic change."""

    @abstractmethod
    def retrieve(
        self, collection: str, ids: Sequence[str], with_vectors: Selection, with_payload: Selection = True
    ) -> list[Record]: ...

    @abstractmethod
    def query_batch(self, collection: str, queries: Sequence[Query]) -> list[list[Record]]: ...

    @abstractmethod
    def count(self, collection: str, flt: Filter | None = None) -> int: ...

    @abstractmethod
    def scroll(
        self, collection: str, flt: Filter | None, fields: list[str], offset: str | None, limit: int
    ) -> tuple[list[Record], str | None]: ...

    @abstractmethod
    def write(self, collection: str, points: Sequence[Record]) -> None:
        """Insert or replace whole points."""

    @abstractmethod
    def update(self, collection: str, point: str, vectors: dict[str, np.ndarray], payload: dict[str, Any]) -> None:
        """Replace some named vectors and set some payload fields of one stored point."""

    @abstractmethod
    def delete(self, collection: str, ids: Sequence[str]) -> None:
        """Remove these points (ids absent from the collection are ignored)."""

    def optimize(self, collection: str) -> None:  # noqa: B027 - a server indexes on its own
        """Build the collection's search index now (after a bulk load); engines that index on their own ignore it."""

    def close(self) -> None:  # noqa: B027 - engines without resources need no close
        """Release the engine's resources."""

    def upsert(self, collection: str, points: Sequence[Record], *, keep_cf: bool, guarded: bool) -> list[str]:
        """Write items after `merge_items` against the stored points (read when `keep_cf` or `guarded`); returns the
        ids written. The read and the write happen under one lock of the process that writes."""
        with self._write_lock:
            existing: dict[str, Record] = {}
            if keep_cf or guarded:
                fields = ["interactions", "revision", CF_SOURCE]
                found = self.retrieve(collection, [p.id for p in points], [CF] if keep_cf else False, fields)
                existing = {r.id: r for r in found}
            merged = merge_items(existing, points, keep_cf=keep_cf)
            if merged:
                self.write(collection, merged)
        return [p.id for p in merged]
