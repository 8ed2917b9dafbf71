"""Indexer: the embedded engine — Qdrant Edge in this process. Edge stores one shard per directory and has no
aliases, so each collection is one shard under `shards/` and the aliases live in `aliases.json`, replaced atomically
(written aside, then renamed over). One process owns a storage directory (Edge's WAL lock)."""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import qdrant_edge as qe

from indexer.engine import (
    FULL_SCAN_KB,
    HNSW_EF,
    HNSW_EF_CONSTRUCT,
    HNSW_M,
    OVERSAMPLING,
    CollectionSpec,
    Engine,
    Filter,
    Query,
    Record,
    Selection,
)
from thaw.errors import UnavailableError

log = logging.getLogger(__name__)

_DISTANCE = {"cosine": qe.Distance.Cosine, "dot": qe.Distance.Dot}
_PAYLOAD = {"keyword": qe.PayloadSchemaType.Keyword, "integer": qe.PayloadSchemaType.Integer}
_HNSW = qe.HnswIndexConfig(m=HNSW_M, ef_construct=HNSW_EF_CONSTRUCT, full_scan_threshold=FULL_SCAN_KB)
_PARAMS = qe.SearchParams(
    hnsw_ef=HNSW_EF, quantization=qe.QuantizationSearchParams(rescore=True, oversampling=OVERSAMPLING)
)


class EdgeStorageError(UnavailableError):
    """The embedded storage cannot be opened (held by another process, or damaged)."""


def edge_filter(flt: Filter | None) -> qe.Filter | None:
    if flt is None:
        return None
    must: list[Any] = [qe.FieldCondition(key=k, match=qe.MatchValue(v)) for k, v in flt.match.items()]
    must += [qe.FieldCondition(key=k, range=qe.RangeFloat(gt=v)) for k, v in flt.greater.items()]
    must_not: list[Any] = [qe.HasIdCondition(set(flt.exclude_ids))] if flt.exclude_ids else []
    if not must and not must_not:
        return None
    return qe.Filter(must=must or None, must_not=must_not or None)


def _record(p: Any) -> Record:
    raw = p.vector if isinstance(p.vector, dict) else {}
    vectors = {k: np.asarray(v, np.float32) for k, v in raw.items()}
    return Record(str(p.id), dict(p.payload or {}), vectors, float(getattr(p, "score", 1.0)))


def _point(r: Record) -> qe.Point:
    vectors = {k: np.asarray(v, np.float32).tolist() for k, v in r.vectors.items()}
    return qe.Point(uuid.UUID(r.id), vectors, r.payload)


def _request(q: Query) -> qe.QueryRequest:
    if q.vector is not None:
        query: Any = qe.Query.Nearest(np.asarray(q.vector, np.float32).tolist(), using=q.using)
    elif q.order_by is not None:
        query = qe.OrderBy(q.order_by, qe.Direction.Desc)
    else:
        query = qe.Sample.Random
    return qe.QueryRequest(
        limit=q.limit,
        query=query,
        filter=edge_filter(q.filter),
        with_vector=q.with_vectors,
        with_payload=q.with_payload,
        params=_PARAMS if q.vector is not None else None,
    )


class EdgeEngine(Engine):
    """Collections as Edge shards under `root/shards/<name>`, aliases in `root/aliases.json`; shards open on first
    use and stay open."""

    def __init__(self, root: Path) -> None:
        super().__init__()
        self.root = root
        self._shards_dir = root / "shards"
        self._shards_dir.mkdir(parents=True, exist_ok=True)
        self._alias_file = root / "aliases.json"
        self._aliases: dict[str, str] = json.loads(self._alias_file.read_text()) if self._alias_file.exists() else {}
        self._shards: dict[str, qe.EdgeShard] = {}
        self._open_lock = threading.Lock()
        if (root / "meta.json").exists() and not self._aliases:
            log.warning("%s holds qdrant-client local-mode data, which is not read: run `thaw reindex`", root)

    def open_all(self) -> None:
        """Open every collection an alias names (at start-up, so the first request does not pay for it)."""
        for name in set(self._aliases.values()):
            self._shard(name)

    def _resolve(self, name: str) -> str:
        return self._aliases.get(name, name)

    def _shard(self, collection: str) -> qe.EdgeShard:
        name = self._resolve(collection)
        shard = self._shards.get(name)
        if shard is not None:
            return shard
        with self._open_lock:
            if name not in self._shards:
                path = self._shards_dir / name
                if not (path / "edge_config.json").exists():
                    raise EdgeStorageError(f"collection {name!r} does not exist under {self._shards_dir}")
                try:
                    self._shards[name] = qe.EdgeShard.load(str(path))
                except Exception as exc:  # Edge raises a bare Exception (e.g. the WAL lock of another process)
                    raise EdgeStorageError(f"cannot open the index shard {path}: {exc}") from exc
            return self._shards[name]

    def collections(self) -> list[str]:
        found = self._shards_dir.iterdir()
        return sorted(p.name for p in found if not p.name.startswith(".") and (p / "edge_config.json").exists())

    def create_collection(self, name: str, spec: CollectionSpec) -> None:
        q8 = qe.ScalarQuantizationConfig(type=qe.ScalarType.Int8, quantile=0.99, always_ram=True)
        vectors = {
            n: qe.EdgeVectorParams(
                size=v.size, distance=_DISTANCE[v.distance], quantization_config=q8 if n in spec.quantized else None
            )
            for n, v in spec.vectors.items()
        }
        config = qe.EdgeConfig(
            vectors=vectors,
            hnsw_config=_HNSW,
            optimizers=qe.EdgeOptimizersConfig(default_segment_number=2),
            payload_memory=qe.Memory.Cached,  # warmed into the page cache at open: candidates read their payload
        )
        with self._write_lock, self._open_lock:
            path = self._shards_dir / name
            if path.exists():
                shutil.rmtree(path)  # a creation that died half-way: no edge_config.json
            shard = qe.EdgeShard.create(str(path), config)
            for field_name, kind in spec.payload_indexes.items():
                shard.update(qe.UpdateOperation.create_field_index(field_name, _PAYLOAD[kind]))
            shard.flush()
            self._shards[name] = shard

    def delete_collection(self, name: str) -> None:
        with self._write_lock, self._open_lock:
            shard = self._shards.pop(name, None)
            if shard is not None:
                shard.close()
            path = self._shards_dir / name
            if path.exists():
                trash = self._shards_dir / f".deleting-{name}-{uuid.uuid4().hex}"
                path.rename(trash)  # gone from the listing at once, even if the removal is interrupted
                shutil.rmtree(trash, ignore_errors=True)

    def aliases(self) -> dict[str, str]:
        return dict(self._aliases)

    def set_aliases(self, aliases: dict[str, str]) -> None:
        with self._write_lock:
            new = {**self._aliases, **aliases}
            tmp = self._alias_file.with_suffix(f".{uuid.uuid4().hex}.tmp")
            with tmp.open("w") as fh:
                json.dump(new, fh)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self._alias_file)
            self._aliases = new

    def retrieve(
        self, collection: str, ids: Sequence[str], with_vectors: Selection, with_payload: Selection = True
    ) -> list[Record]:
        if not ids:
            return []
        found = self._shard(collection).retrieve(
            [uuid.UUID(i) for i in ids], with_payload=with_payload, with_vector=with_vectors
        )
        return [_record(p) for p in found]

    def query_batch(self, collection: str, queries: Sequence[Query]) -> list[list[Record]]:
        if not queries:
            return []
        shard = self._shard(collection)
        if len(queries) == 1:
            return [[_record(p) for p in shard.query(_request(queries[0]))]]
        found = shard.query_batch(qe.QueryBatchRequest([_request(q) for q in queries]))
        return [[_record(p) for p in points] for points in found]

    def count(self, collection: str, flt: Filter | None = None) -> int:
        return int(self._shard(collection).count(qe.CountRequest(filter=edge_filter(flt), exact=True)))

    def scroll(
        self, collection: str, flt: Filter | None, fields: list[str], offset: str | None, limit: int
    ) -> tuple[list[Record], str | None]:
        request = qe.ScrollRequest(
            offset=uuid.UUID(offset) if offset else None,
            limit=limit,
            filter=edge_filter(flt),
            with_payload=fields,
            with_vector=False,
        )
        page, next_offset = self._shard(collection).scroll(request)
        return [_record(p) for p in page], None if next_offset is None else str(next_offset)

    def write(self, collection: str, points: Sequence[Record]) -> None:
        self._shard(collection).update(qe.UpdateOperation.upsert_points([_point(p) for p in points]))

    def update(self, collection: str, point: str, vectors: dict[str, np.ndarray], payload: dict[str, Any]) -> None:
        shard, pid = self._shard(collection), uuid.UUID(point)
        with self._write_lock:
            if vectors:
                named = {k: np.asarray(v, np.float32).tolist() for k, v in vectors.items()}
                shard.update(qe.UpdateOperation.update_vectors([qe.PointVectors(pid, named)]))
            if payload:
                shard.update(qe.UpdateOperation.set_payload([pid], payload))

    def delete(self, collection: str, ids: Sequence[str]) -> None:
        if ids:
            with self._write_lock:  # not between an upsert's read and its write
                self._shard(collection).update(qe.UpdateOperation.delete_points([uuid.UUID(i) for i in ids]))

    def optimize(self, collection: str) -> None:
        """Build HNSW graphs and quantized copies for the points written so far. Holds the GIL for its duration
        (minutes per 100k items on two cores): call it after a bulk load, before the collection is served."""
        shard = self._shard(collection)
        shard.optimize()
        shard.flush()

    def close(self) -> None:
        with self._open_lock:
            for shard in self._shards.values():
                shard.close()
            self._shards.clear()
