"""Services: rebuilding a model version's collections from the records of truth — every item in the database with
its originals from the media store, encoded by the model; the model's learned factors; the interactions — then
building the search indexes and serving the version. The index holds derived vectors only, so it can always be
rebuilt this way (`thaw reindex`), e.g. after a change of engine or of storage format."""

from __future__ import annotations

import logging
from collections.abc import Callable

from sqlalchemy import select

from indexer.collections import ITEMS, USERS, collection_name, ensure_collections, optimize, remove_versions
from indexer.writer import upsert_items, upsert_users
from services.db import ItemRecord, audiences
from services.embedding import PermanentError, item_input, prefetch, stored_point
from services.reembed import cf_vectors
from services.runtime import ModelNotReadyError, Runtime
from thaw.factors import Factors

log = logging.getLogger(__name__)


def rebuild(
    rt: Runtime,
    version: str | None = None,
    *,
    batch_size: int = 64,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[str, int, list[str]]:
    """Drop and rebuild `version`'s collections (default: the served version, else the newest trained one), then
    serve it. Returns the version, the items indexed, and the ids of items whose originals cannot be encoded
    (skipped, with the reason logged). While it runs, that version serves nothing."""
    if version is None:
        known = rt.registry.versions()
        served = rt.index.resolved(ITEMS)
        version = served.split("__", 1)[1] if served else (known[-1] if known else None)
        if version is None:
            raise ModelNotReadyError("no trained model version: run `thaw train` first")
    model = rt.model(version)
    remove_versions(rt.index, [version])
    ensure_collections(rt.index, version, model.dim, model.embedding_dims)
    items_coll, users_coll = collection_name(ITEMS, version), collection_name(USERS, version)
    factors = Factors(model.user_ids, model.item_ids, model.user_factors, model.item_factors)
    trained = set(model.item_ids)
    with rt.session() as session:
        ids = list(session.scalars(select(ItemRecord.item_id).order_by(ItemRecord.item_id)))
    indexed, skipped = 0, []
    for start in range(0, len(ids), batch_size):
        with rt.session() as session:
            chunk = list(
                session.scalars(select(ItemRecord).where(ItemRecord.item_id.in_(ids[start : start + batch_size])))
            )
            cf = cf_vectors(
                factors,
                audiences(session, [r.item_id for r in chunk]),
                reg=model.config.als_reg,
                alpha=model.config.als_alpha,
            )
        inputs, records = [], []
        prefetch(rt, chunk)
        for record in chunk:
            try:
                inputs.append(item_input(rt, record))
                records.append(record)
            except PermanentError as exc:
                log.warning("reindex: skipping %s: %s", record.item_id, exc)
                skipped.append(record.item_id)
        encoded = model.encode(inputs) if inputs else []
        points = [stored_point(model, r, e, cf[r.item_id], trained) for r, e in zip(records, encoded, strict=True)]
        indexed += len(upsert_items(rt.index, items_coll, points, keep_cf=False))
        if progress is not None:
            progress(min(start + batch_size, len(ids)), len(ids))
    upsert_users(rt.index, users_coll, model.user_ids, model.user_factors, [{"source": "als"}] * len(model.user_ids))
    optimize(rt.index, version)
    rt.activate(version)
    return version, indexed, skipped
