"""Services: embedding an item — read its originals, encode them with each version being written, write its vectors
to the index; and bootstrapping a version's collections from a dataset."""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import numpy as np
from prometheus_client import Histogram
from sqlalchemy import select
from sqlalchemy.orm import Session
from tqdm import tqdm

from indexer.collections import (
    ITEMS,
    USERS,
    IndexError_,
    active_collection_version,
    collection_name,
    ensure_collections,
)
from indexer.writer import ItemPoint, delete_items, upsert_items, upsert_users
from services.db import ItemRecord, Job, finish_job, log_job, running_reembeds, utcnow
from services.dispatch import is_transient
from services.runtime import Runtime
from thaw.datasets import Dataset
from thaw.media import MediaError, decode_audio, decode_image
from thaw.schema import CF, CF_SOURCE, CONTENT, MODALITIES, JobStatus, item_tags, item_text

if TYPE_CHECKING:
    from encoders.artifacts import ThawModel
    from encoders.features import EncodedItem, ItemInput

log = logging.getLogger(__name__)
# Observed in the process that encodes: the API's (embedded worker) or a worker's. Registered by the API's registry.
ENCODE_SECONDS = Histogram(
    "thaw_encode_seconds",
    "Seconds one modality's encoder spends on one item (a batch's time shared among its items with that modality)",
    ["modality"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
    registry=None,
)


class PermanentError(Exception):
    """A failure that retrying cannot fix (bad media, unknown item): the job fails with the reason."""


def item_input(rt: Runtime, record: ItemRecord) -> ItemInput:
    """Decode an item's stored originals into encoder input; PermanentError says which original is bad."""
    from encoders.audio import SAMPLE_RATE
    from encoders.features import ItemInput

    text = item_text(record.metadata_ or {}) or None
    image = audio = None
    try:
        if "image" in record.media:
            data = rt.store.get(record.item_id, "image")
            if data is None:
                raise PermanentError(f"image original of item {record.item_id!r} is missing from the media store")
            image = decode_image(data, max_pixels=rt.limits.max_image_pixels)
        if "audio" in record.media:
            data = rt.store.get(record.item_id, "audio")
            if data is None:
                raise PermanentError(f"audio original of item {record.item_id!r} is missing from the media store")
            audio = decode_audio(data, sample_rate=SAMPLE_RATE, max_seconds=rt.limits.max_audio_seconds)
    except MediaError as exc:
        raise PermanentError(str(exc)) from exc
    if text is None and image is None and audio is None:
        raise PermanentError(f"item {record.item_id!r} has no text, image or audio to embed")
    return ItemInput(record.item_id, text=text, image=image, audio=audio, tags=item_tags(record.metadata_ or {}))


def content_hash(metadata: dict[str, Any], media: dict[str, str]) -> str:
    """What an item's vectors of one model version are a function of: its metadata and its originals' sha256s.
    Stored in the point's payload, so re-embedding an unchanged item into a version that holds it is skipped."""
    canonical = json.dumps({"metadata": metadata, "media": media}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def record_payload(record: ItemRecord) -> dict[str, Any]:
    """The payload an item's record contributes to its point in any version."""
    return {
        "metadata": record.metadata_,
        "created_at": record.created_at.isoformat(),
        "revision": record.revision,
        "content_hash": content_hash(record.metadata_ or {}, record.media or {}),
    }


def write_versions(rt: Runtime, session: Session) -> list[str]:
    """The versions an upload is embedded with: the served one, then every version a re-embedding job is filling.
    The jobs are read before the alias: a job that finishes in between has already swapped the alias to its
    target, so no write is lost at the switch."""
    targets = [target for _, target in running_reembeds(session)]
    served = active_collection_version(rt.index)
    if served is None:
        raise IndexError_("no collection is served yet: index a model version first (thaw train)")
    return [served, *(t for t in targets if t != served)]


def encode(model: ThawModel, inputs: list[ItemInput]) -> list[EncodedItem]:
    """`model.encode`, with each modality's time per item observed in ENCODE_SECONDS."""
    timings: dict[str, float] = {}
    encoded = model.encode(inputs, timings)
    present = {
        "text": sum(1 for i in inputs if i.text),
        "image": sum(1 for i in inputs if i.image is not None),
        "audio": sum(1 for i in inputs if i.audio is not None),
    }
    for modality, seconds in timings.items():
        n = present.get(modality, 0)
        for _ in range(n):
            ENCODE_SECONDS.labels(modality).observe(seconds / n)
    return encoded


def item_point(model: ThawModel, item_id: str, encoded: EncodedItem, extra: dict[str, Any]) -> ItemPoint:
    vectors: dict[str, np.ndarray] = {CONTENT: encoded.content, **encoded.embeddings}
    payload = {
        "modalities": [m for m in MODALITIES if m in encoded.embeddings],
        "model_version": model.version,
        "updated_at": datetime.now(UTC).isoformat(),
        **extra,
    }
    return ItemPoint(item_id, vectors, payload)


def stored_point(
    model: ThawModel,
    record: ItemRecord,
    encoded: EncodedItem,
    cf: tuple[np.ndarray | None, int],
    trained: set[str],
) -> ItemPoint:
    """A stored item's point for `model`'s version: its record's payload, the content `encoded`, and `cf`, its CF
    vector (learned, or folded in from its audience; None without one) with its interaction count; `trained` are the
    version's own items, whose CF vector is the learned one."""
    vector, count = cf
    point = item_point(model, record.item_id, encoded, {**record_payload(record), "interactions": count})
    if vector is not None:
        point.vectors[CF] = vector
    if record.item_id in trained:
        point.payload[CF_SOURCE] = "als"
    return point


def drop_deleted(rt: Runtime, item_ids: Sequence[str]) -> set[str]:
    """After writing points: those of items deleted meanwhile (their record gone, read afresh) are taken back out of
    every collection, so an embedding that races a deletion leaves nothing. Returns the items taken back."""
    if not item_ids:
        return set()
    with rt.session() as session:
        alive = set(session.scalars(select(ItemRecord.item_id).where(ItemRecord.item_id.in_(item_ids))))
    gone = set(item_ids) - alive
    if gone:
        delete_items(rt.index, sorted(gone))
    return gone


def _finish(session: Session, job: Job, status: JobStatus, error: str | None = None) -> None:
    finish_job(job, status, error)
    session.commit()


def embed_item(rt: Runtime, item_id: str, job_id: str) -> str:
    """Embed one uploaded item with the served model version, and with the target version of any running
    re-embedding job (each into its own collection). Idempotent: a repeat overwrites the same point, and a job whose
    item was re-uploaded since (a newer revision) is finished without writing stale vectors."""
    with rt.session() as session:
        job = session.get(Job, job_id)
        if job is None:
            raise PermanentError(f"job {job_id!r} does not exist")
        if JobStatus(job.status).finished:
            return job.status
        job.status, job.started_at, job.attempts = JobStatus.RUNNING, utcnow(), job.attempts + 1
        log_job(job, "started")  # before the commit, which expires what the line reads
        session.commit()
        record = session.get(ItemRecord, item_id)
        try:
            if record is None:
                raise PermanentError(f"item {item_id!r} does not exist")
            if record.revision > job.revision:
                _finish(session, job, JobStatus.SUCCEEDED, "superseded by a newer upload of the same item")
                return job.status
            versions = write_versions(rt, session)
            inp = item_input(rt, record)
            for version in versions:
                model = rt.model(version)
                point = item_point(model, item_id, encode(model, [inp])[0], record_payload(record))
                upsert_items(rt.index, collection_name(ITEMS, version), [point])
            if drop_deleted(rt, [item_id]):
                return JobStatus.FAILED  # deleted while it was embedded: its job went with it
            job.model_version = versions[0]
        except Exception as exc:
            session.rollback()
            if is_transient(exc):
                raise  # the task retries it (workers.tasks)
            reason = str(exc) if isinstance(exc, PermanentError) else f"{type(exc).__name__}: {exc}"
            _finish(session, job, JobStatus.FAILED, reason)
            return job.status
        _finish(session, job, JobStatus.SUCCEEDED)
        return job.status


def requeue(rt: Runtime, job_id: str, due: datetime) -> None:
    """A job back in the queue after a transient failure, its retry due at `due` (the job sweep waits for that)."""
    with rt.session() as session:
        job = session.get(Job, job_id)
        if job is not None and not JobStatus(job.status).finished:
            job.status, job.dispatched_at = JobStatus.QUEUED, due
            session.commit()


def fail_job(rt: Runtime, job_id: str, reason: str) -> None:
    """Record a job's permanent failure (after retries ran out, or an unexpected error)."""
    with rt.session() as session:
        job = session.get(Job, job_id)
        if job is not None and not JobStatus(job.status).finished:
            _finish(session, job, JobStatus.FAILED, reason)


def index_dataset(rt: Runtime, model: ThawModel, ds: Dataset, item_ids: Sequence[str], *, batch_size: int = 32) -> int:
    """Bootstrap a model version's collections from a dataset: keep each item's originals in the media store and
    its record in the database, write its content vectors, the warm items' learned CF vectors and interaction
    counts, and the users' factors; then serve this version (the alias swap). The model must be saved in the
    models directory. Returns the items indexed."""
    ensure_collections(rt.index, model.version, model.dim, model.embedding_dims)
    items_coll, users_coll = collection_name(ITEMS, model.version), collection_name(USERS, model.version)
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
    with rt.session() as session:
        records = [session.merge(rec) for rec in records]
        session.commit()
        payloads = {rec.item_id: record_payload(rec) for rec in records}
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
            point = item_point(model, inp.item_id, enc, payloads[inp.item_id])
            if inp.item_id in warm:
                point.vectors[CF] = model.item_factors[warm[inp.item_id]]
                point.payload.update({"interactions": counts[inp.item_id], CF_SOURCE: "als"})
            points.append(point)
        upsert_items(rt.index, items_coll, points, keep_cf=False)
    upsert_users(rt.index, users_coll, model.user_ids, model.user_factors, [{"source": "als"}] * len(model.user_ids))
    rt.activate(model.version)
    return len(records)
