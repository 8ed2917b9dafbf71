"""Workers: the logic behind each task — read an item's originals, encode, write its vectors to Qdrant."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import numpy as np
from sqlalchemy.orm import Session
from tqdm import tqdm

from indexer.collections import ITEMS, USERS, activate, ensure_collections
from indexer.writer import ItemPoint, upsert_items, upsert_users
from thaw.datasets import Dataset
from thaw.db import ItemRecord, Job, utcnow
from thaw.runtime import Runtime
from thaw.schema import CF, CONTENT, MODALITIES, item_tags, item_text
from workers.media import MediaError, decode_audio, decode_image

if TYPE_CHECKING:
    from encoders.artifacts import EncodedItem, ItemInput, ThawModel

log = logging.getLogger(__name__)


class PermanentError(Exception):
    """A failure that retrying cannot fix (bad media, unknown item): the job fails with the reason."""


def item_input(rt: Runtime, record: ItemRecord) -> ItemInput:
    """Decode an item's stored originals into encoder input; PermanentError says which original is bad."""
    from encoders.artifacts import SAMPLE_RATE, ItemInput

    text = item_text(record.metadata_ or {}) or None
    image = audio = None
    try:
        if "image" in record.media:
            data = rt.store.get(record.item_id, "image")
            if data is None:
                raise PermanentError(f"image original of item {record.item_id!r} is missing from the media store")
            image = decode_image(data, max_pixels=rt.max_image_pixels)
        if "audio" in record.media:
            data = rt.store.get(record.item_id, "audio")
            if data is None:
                raise PermanentError(f"audio original of item {record.item_id!r} is missing from the media store")
            audio = decode_audio(data, sample_rate=SAMPLE_RATE, max_seconds=rt.max_audio_seconds)
    except MediaError as exc:
        raise PermanentError(str(exc)) from exc
    if text is None and image is None and audio is None:
        raise PermanentError(f"item {record.item_id!r} has no text, image or audio to embed")
    return ItemInput(record.item_id, text=text, image=image, audio=audio, tags=item_tags(record.metadata_ or {}))


def item_point(model: ThawModel, item_id: str, encoded: EncodedItem, extra: dict[str, Any]) -> ItemPoint:
    vectors: dict[str, np.ndarray] = {CONTENT: encoded.content, **encoded.embeddings}
    payload = {
        "modalities": [m for m in MODALITIES if m in encoded.embeddings],
        "model_version": model.version,
        "updated_at": datetime.now(UTC).isoformat(),
        **extra,
    }
    return ItemPoint(item_id, vectors, payload)


def _finish(session: Session, job: Job, status: str, error: str | None = None) -> None:
    job.status, job.error, job.finished_at = status, error, utcnow()
    session.commit()


def embed_item(rt: Runtime, item_id: str, job_id: str) -> str:
    """Embed one uploaded item with the active model. Idempotent: a repeat overwrites the same point, and a job
    whose item was re-uploaded since (a newer revision) is finished without writing stale vectors."""
    with Session(rt.engine) as session:
        job = session.get(Job, job_id)
        if job is None:
            raise PermanentError(f"job {job_id!r} does not exist")
        if job.status in ("succeeded", "failed"):
            return job.status
        job.status, job.started_at, job.attempts = "running", utcnow(), job.attempts + 1
        session.commit()
        record = session.get(ItemRecord, item_id)
        try:
            if record is None:
                raise PermanentError(f"item {item_id!r} does not exist")
            if record.revision > job.revision:
                _finish(session, job, "succeeded", "superseded by a newer upload of the same item")
                return job.status
            model = rt.model()
            encoded = model.encode([item_input(rt, record)])[0]
            extra = {"metadata": record.metadata_, "created_at": record.created_at.isoformat()}
            upsert_items(rt.index, ITEMS, [item_point(model, item_id, encoded, extra)])
            job.model_version = model.version
        except PermanentError as exc:
            _finish(session, job, "failed", str(exc))
            log.warning("job %s failed: %s", job_id, exc)
            return job.status
        except Exception:
            job.status = "queued"  # transient: the task is retried
            session.commit()
            raise
        _finish(session, job, "succeeded")
        return job.status


def fail_job(rt: Runtime, job_id: str, reason: str) -> None:
    """Record a job's permanent failure (after retries ran out, or an unexpected error)."""
    with Session(rt.engine) as session:
        job = session.get(Job, job_id)
        if job is not None and job.status not in ("succeeded", "failed"):
            _finish(session, job, "failed", reason)


def index_dataset(rt: Runtime, model: ThawModel, ds: Dataset, item_ids: Sequence[str], *, batch_size: int = 32) -> int:
    """Bootstrap a model version's collections from a dataset: keep each item's originals in the media store and
    its record in the database, write its content vectors, the warm items' learned CF vectors and interaction
    counts, and the users' factors; then point the aliases at this version. Returns the items indexed."""
    ensure_collections(rt.index, model.version, model.dim, model.embedding_dims)
    items_coll, users_coll = f"{ITEMS}__{model.version}", f"{USERS}__{model.version}"
    warm = {item: i for i, item in enumerate(model.item_ids)}
    counts = Counter(ds.interactions.item_ids.tolist())
    records: list[ItemRecord] = []
    for item_id in item_ids:
        item = ds.items[item_id]
        media = {}
        for modality, path in (("image", item.image), ("audio", item.audio)):
            if path is not None:
                media[modality] = rt.store.put(item_id, modality, path.read_bytes()).sha256
        records.append(ItemRecord(item_id=item_id, metadata_=item.fields, media=media))
    with Session(rt.engine) as session:
        for rec in records:
            session.merge(rec)
        session.commit()
    for start in tqdm(range(0, len(records), batch_size), desc="index", unit="batch", disable=None):
        chunk = records[start : start + batch_size]
        inputs = []
        for rec in chunk:
            try:
                inputs.append(item_input(rt, rec))
            except PermanentError as exc:
                log.warning("skipping %s: %s", rec.item_id, exc)
        points = []
        for inp, enc in zip(inputs, model.encode(inputs) if inputs else [], strict=True):
            point = item_point(model, inp.item_id, enc, {"metadata": ds.items[inp.item_id].fields})
            if inp.item_id in warm:
                point.vectors[CF] = model.item_factors[warm[inp.item_id]]
                point.payload["interactions"] = counts[inp.item_id]
            points.append(point)
        upsert_items(rt.index, items_coll, points, keep_cf=False)
    upsert_users(rt.index, users_coll, model.user_ids, model.user_factors, [{"source": "als"}] * len(model.user_ids))
    activate(rt.index, model.version)
    return len(records)
