"""Indexer: the scale-out engine — a Qdrant server (or cluster) through qdrant-client, with the same HNSW, quantization,
payload-index and search settings as the embedded engine. Aliases and collections are the server's own."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from qdrant_client import QdrantClient
from qdrant_client.http import models as qm

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

_DISTANCE = {"cosine": qm.Distance.COSINE, "dot": qm.Distance.DOT}
_PAYLOAD = {"keyword": qm.PayloadSchemaType.KEYWORD, "integer": qm.PayloadSchemaType.INTEGER}
_HNSW = qm.HnswConfigDiff(m=HNSW_M, ef_construct=HNSW_EF_CONSTRUCT, full_scan_threshold=FULL_SCAN_KB)
_PARAMS = qm.SearchParams(
    hnsw_ef=HNSW_EF, quantization=qm.QuantizationSearchParams(rescore=True, oversampling=OVERSAMPLING)
)


def server_filter(flt: Filter | None) -> qm.Filter | None:
    if flt is None:
        return None
    must: list[qm.Condition] = [qm.FieldCondition(key=k, match=qm.MatchValue(value=v)) for k, v in flt.match.items()]
    must += [qm.FieldCondition(key=k, range=qm.Range(gt=v)) for k, v in flt.greater.items()]
    must_not: list[qm.Condition] = [qm.HasIdCondition(has_id=list(flt.exclude_ids))] if flt.exclude_ids else []
    if not must and not must_not:
        return None
    return qm.Filter(must=must or None, must_not=must_not or None)


def _record(p: Any) -> Record:
    raw = p.vector if isinstance(p.vector, dict) else {}
    vectors = {k: np.asarray(v, np.float32) for k, v in raw.items()}
    score = getattr(p, "score", None)
    return Record(str(p.id), dict(p.payload or {}), vectors, 1.0 if score is None else float(score))


def _request(q: Query) -> qm.QueryRequest:
    if q.vector is not None:
        query: Any = np.asarray(q.vector, np.float32).tolist()
    elif q.order_by is not None:
        query = qm.OrderByQuery(order_by=qm.OrderBy(key=q.order_by, direction=qm.Direction.DESC))
    else:
        query = qm.SampleQuery(sample=qm.Sample.RANDOM)
    return qm.QueryRequest(
        query=query,
        using=q.using,
        limit=q.limit,
        filter=server_filter(q.filter),
        with_vector=q.with_vectors,
        with_payload=q.with_payload,
        params=_PARAMS if q.vector is not None else None,
    )


class ServerEngine(Engine):
    """A Qdrant server at `url`; one client shared by threads."""

    def __init__(self, url: str, api_key: str | None = None) -> None:
        super().__init__()
        self.client = QdrantClient(url=url, api_key=api_key, timeout=30)

    def collections(self) -> list[str]:
        return sorted(c.name for c in self.client.get_collections().collections)

    def create_collection(self, name: str, spec: CollectionSpec) -> None:
        q8 = qm.ScalarQuantization(scalar=qm.ScalarQuantizationConfig(type=qm.ScalarType.INT8, quantile=0.99))
        vectors = {
            n: qm.VectorParams(
                size=v.size, distance=_DISTANCE[v.distance], quantization_config=q8 if n in spec.quantized else None
            )
            for n, v in spec.vectors.items()
        }
        self.client.create_collection(name, vectors_config=vectors, hnsw_config=_HNSW)
        for field_name, kind in spec.payload_indexes.items():
            self.client.create_payload_index(name, field_name, field_schema=_PAYLOAD[kind])

    def delete_collection(self, name: str) -> None:
        self.client.delete_collection(name)

    def aliases(self) -> dict[str, str]:
        return {a.alias_name: a.collection_name for a in self.client.get_aliases().aliases}

    def set_aliases(self, aliases: dict[str, str]) -> None:
        current = self.aliases()
        ops: list[qm.CreateAliasOperation | qm.DeleteAliasOperation] = []
        for alias, target in aliases.items():
            if alias in current:
                ops.append(qm.DeleteAliasOperation(delete_alias=qm.DeleteAlias(alias_name=alias)))
            ops.append(qm.CreateAliasOperation(create_alias=qm.CreateAlias(collection_name=target, alias_name=alias)))
        self.client.update_collection_aliases(change_aliases_operations=ops)

    def retrieve(
        self, collection: str, ids: Sequence[str], with_vectors: Selection, with_payload: Selection = True
    ) -> list[Record]:
        if not ids:
            return []
        found = self.client.retrieve(collection, list(ids), with_vectors=with_vectors, with_payload=with_payload)
        return [_record(p) for p in found]

    def query_batch(self, collection: str, queries: Sequence[Query]) -> list[list[Record]]:
        if not queries:
            return []
        found = self.client.query_batch_points(collection, [_request(q) for q in queries])
        return [[_record(p) for p in res.points] for res in found]

    def count(self, collection: str, flt: Filter | None = None) -> int:
        return int(self.client.count(collection, count_filter=server_filter(flt), exact=True).count)

    def scroll(
        self, collection: str, flt: Filter | None, fields: list[str], offset: str | None, limit: int
    ) -> tuple[list[Record], str | None]:
        page, next_offset = self.client.scroll(
            collection, scroll_filter=server_filter(flt), limit=limit, offset=offset, with_payload=fields
        )
        return [_record(p) for p in page], None if next_offset is None else str(next_offset)

    def write(self, collection: str, points: Sequence[Record]) -> None:
        structs = [
            qm.PointStruct(
                id=p.id,
                vector={k: np.asarray(v, np.float32).tolist() for k, v in p.vectors.items()},
                payload=p.payload,
            )
            for p in points
        ]
        for start in range(0, len(structs), 512):
            self.client.upsert(collection, points=structs[start : start + 512], wait=True)

    def update(self, collection: str, point: str, vectors: dict[str, np.ndarray], payload: dict[str, Any]) -> None:
        if vectors:
            named = {k: np.asarray(v, np.float32).tolist() for k, v in vectors.items()}
            self.client.update_vectors(collection, points=[qm.PointVectors(id=point, vector=named)], wait=True)
        if payload:
            self.client.set_payload(collection, payload=payload, points=[point], wait=True)

    def delete(self, collection: str, ids: Sequence[str]) -> None:
        if ids:
            self.client.delete(collection, points_selector=qm.PointIdsList(points=list(ids)), wait=True)

    def close(self) -> None:
        self.client.close()
