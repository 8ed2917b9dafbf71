"""Services: embedding an item — read its originals, encode them with each version being written, write its vectors
to the index; and bootstrapping a version's collections from a dataset."""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
from prometheus_client import Histogram
from sqlalchemy import or_, select, update
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
from services.db import (
    JOB_ROW,
    ItemRecord,
    Job,
    as_utc,
    finish_job,
    finish_jobs,
    log_job,
    running_reembeds,
    unindexed,
    utcnow,
)
from services.dispatch import is_transient
from services.runtime import Runtime
from thaw.datasets import Dataset
from thaw.media import MediaError, decode_audio, decode_image
from thaw.schema import CF, CF_SOURCE, CONTENT, MODALITIES, UNFINISHED, JobStatus, item_text, item_tokens

if TYPE_CHECKING:
    from encoders.artifacts import ThawModel
    from encoders.features import EncodedItem, ItemInput

log = logging.getLogger(__name__)
T = TypeVar("T")
R = TypeVar("R")
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
    return ItemInput(record.item_id, text=text, image=image, audio=audio, tags=item_tokens(record.metadata_ or {}))


def prefetch(rt: Runtime, records: Iterable[ItemRecord]) -> None:
    """Start reading a batch's stored originals before `item_input` reads them one by one."""
    rt.store.prefetch((record.item_id, modality) for record in records for modality in record.media or {})


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


def warm_up(rt: Runtime) -> str:
    """Load the served model and run it once on a made-up item with each modality it learned from, so that a worker's
    first batch does not wait for the backbones to load. Returns the version."""
    from PIL import Image

    from encoders.audio import SAMPLE_RATE
    from encoders.features import ItemInput

    model = rt.model()
    has = set(model.config.modalities)
    item = ItemInput(
        "warm-up",
        text="warm-up" if "text" in has else None,
        image=Image.new("RGB", (64, 64)) if "image" in has else None,
        audio=np.zeros(SAMPLE_RATE, np.float32) if "audio" in has else None,
    )
    model.encode([item])
    return model.version


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


def _reason(exc: Exception) -> str:
    return str(exc) if isinstance(exc, PermanentError) else f"{type(exc).__name__}: {exc}"


def each(run: Callable[[list[T]], Sequence[R]], items: list[T]) -> list[R | Exception]:
    """`run` on the whole batch; if it fails permanently, on each item alone, so that a bad item fails by itself
    (its exception in its place). Transient errors propagate: the batch is tried again as a whole."""
    if not items:
        return []
    try:
        return list(run(items))
    except Exception as exc:
        if is_transient(exc):
            raise
        if len(items) == 1:
            return [exc]
    return [each(run, [item])[0] for item in items]


def claim_batch(rt: Runtime, job_id: str | None, size: int) -> list[str]:
    """One transaction that claims a batch of at most `size` embedding jobs. With `job_id` (the job of the task's
    message), its task leads the batch: its own job unless another batch holds it or it finished, the jobs an earlier
    batch it led still holds (its message came back after its worker died), then the oldest queued jobs that are due.
    Without its own job the batch is the oldest queued jobs, led by the first. Returns the claimed ids, the leader's
    first; none when nothing is left to do. A job another batch holds is that batch's: it finishes it, or its leader's
    message comes back and claims it again, or the job sweep sends it again."""
    now = utcnow()
    claim = update(Job).values(status=JobStatus.RUNNING, started_at=now, attempts=Job.attempts + 1).returning(*JOB_ROW)
    with rt.session() as session:
        taken: list[Any] = []  # the rows (JOB_ROW, as updated) of the jobs this transaction claims
        if job_id is not None:
            free = or_(Job.status == JobStatus.QUEUED, Job.batch_id.is_(None), Job.batch_id == job_id)
            own = claim.values(batch_id=job_id).where(Job.job_id == job_id, Job.status.in_(UNFINISHED), free)
            taken += session.execute(own).all()
            if taken:
                held = select(Job.job_id).where(
                    Job.batch_id == job_id, unindexed(Job.status) == JobStatus.RUNNING, Job.job_id != job_id
                )
                held_ids = held.order_by(Job.created_at).limit(size - 1).scalar_subquery()
                taken += session.execute(claim.values(batch_id=job_id).where(Job.job_id.in_(held_ids))).all()
        leader = taken[0].job_id if taken else None
        if size > len(taken):
            due = or_(Job.dispatched_at.is_(None), Job.dispatched_at <= now)
            queued = select(Job.job_id).where(Job.kind == "embed", Job.status == JobStatus.QUEUED, due)
            queued_ids = list(session.scalars(queued.order_by(Job.created_at).limit(size - len(taken))))
            leader = leader or (queued_ids[0] if queued_ids else None)
            if queued_ids:  # the status is tested again: another transaction (PostgreSQL) may have taken some first
                mark = claim.values(batch_id=leader).where(
                    Job.job_id.in_(queued_ids), unindexed(Job.status) == JobStatus.QUEUED
                )
                taken += session.execute(mark).all()
        if not taken:
            session.rollback()
            return []
        taken.sort(key=lambda r: (r.job_id != leader, as_utc(r.created_at)))
        for row in taken:
            log_job(row, "started")
        session.commit()
        return [row.job_id for row in taken]


@dataclass
class EncodedBatch:
    """A claimed batch, encoded: the points to write per version, and how each job ends unless writing fails."""

    job_ids: list[str]
    jobs: Sequence[Any]  # (job_id, item_id, revision) rows
    points: dict[str, list[ItemPoint]] = field(default_factory=dict)  # version -> points
    outcome: dict[str, tuple[JobStatus, str | None]] = field(default_factory=dict)  # jobs that end otherwise
    failed: dict[str, Exception] = field(default_factory=dict)  # item -> why it could not be embedded


def _guarded(rt: Runtime, job_ids: list[str], step: Callable[[], R]) -> R | dict[str, str]:
    """`step` for a claimed batch: a transient error gives the jobs back to the queue and propagates (the task
    retries); any other error fails them all with the reason (their statuses are returned instead)."""
    try:
        return step()
    except Exception as exc:
        if is_transient(exc):
            release(rt, job_ids)
            raise
        log.exception("batch of job %s failed", job_ids[0])
        return {job_id: fail_job(rt, job_id, _reason(exc)) for job_id in job_ids}


def encode_batch(rt: Runtime, job_ids: list[str]) -> EncodedBatch | dict[str, str]:
    """Read and encode the claimed jobs' items together: each modality's encoder runs once on the batch for every
    version being written (the served one, and the target of any running re-embedding job). An item that cannot be
    decoded or encoded fails its own job with the reason; a job whose item was re-uploaded since (a newer revision)
    succeeds without writing stale vectors. Errors as `_guarded`."""

    def step() -> EncodedBatch:
        with rt.session() as session:
            jobs = session.execute(select(Job.job_id, Job.item_id, Job.revision).where(Job.job_id.in_(job_ids))).all()
            batch = EncodedBatch(job_ids, jobs)
            wanted = {j.item_id for j in jobs if j.item_id is not None}
            records = {r.item_id: r for r in session.scalars(select(ItemRecord).where(ItemRecord.item_id.in_(wanted)))}
            prefetch(rt, records.values())
            inputs: dict[str, ItemInput | Exception] = {}
            for job in jobs:
                record = records.get(str(job.item_id))
                if record is None:
                    batch.outcome[job.job_id] = JobStatus.FAILED, f"item {job.item_id!r} does not exist"
                elif record.revision > job.revision:
                    batch.outcome[job.job_id] = JobStatus.SUCCEEDED, "superseded by a newer upload of the same item"
                elif record.item_id not in inputs:
                    inputs[record.item_id] = each(lambda rs: [item_input(rt, r) for r in rs], [record])[0]
            good = [inp for inp in inputs.values() if not isinstance(inp, Exception)]
            payloads = {inp.item_id: record_payload(records[inp.item_id]) for inp in good}
            versions = write_versions(rt, session) if good else []
        batch.failed = {i: e for i, e in inputs.items() if isinstance(e, Exception)}
        for version in versions:
            todo = [i for i in good if i.item_id not in batch.failed]
            batch.points[version] = encode_version(rt.model(version), todo, payloads, batch.failed)
        return batch

    return _guarded(rt, job_ids, step)


def encode_version(
    model: ThawModel, inputs: list[ItemInput], payloads: dict[str, dict[str, Any]], failed: dict[str, Exception]
) -> list[ItemPoint]:
    """The items' points for `model`'s version, encoded in one pass; an item that fails alone goes into `failed`."""
    points = []
    for inp, enc in zip(inputs, each(lambda batch: encode(model, batch), inputs), strict=True):
        if isinstance(enc, Exception):
            failed[inp.item_id] = enc
        else:
            points.append(item_point(model, inp.item_id, enc, payloads[inp.item_id]))
    return points


def write_points(rt: Runtime, collection: str, points: list[ItemPoint], failed: dict[str, Exception]) -> None:
    """One upsert of the points; an item whose write fails alone goes into `failed`."""
    written = each(lambda batch: [upsert_items(rt.index, collection, batch)] * len(batch), points)
    failed.update({p.item_id: w for p, w in zip(points, written, strict=True) if isinstance(w, Exception)})


def write_batch(rt: Runtime, batch: EncodedBatch) -> dict[str, str]:
    """Write an encoded batch: one upsert per version (an item whose write fails alone fails its job), then the jobs
    finish in one transaction. Idempotent: a repeat overwrites the same points. Errors as `_guarded`. Returns each
    job's status (none for a job deleted with its item meanwhile)."""

    def step() -> dict[str, str]:
        for version, points in batch.points.items():
            write_points(rt, collection_name(ITEMS, version), points, batch.failed)
        embedded = {p.item_id for points in batch.points.values() for p in points}
        drop_deleted(rt, sorted(embedded))  # deleted while embedded: their jobs went with them
        outcome = dict(batch.outcome)
        for job in batch.jobs:
            if job.job_id not in outcome and str(job.item_id) in batch.failed:
                outcome[job.job_id] = JobStatus.FAILED, _reason(batch.failed[str(job.item_id)])
        statuses: dict[str, str] = {}
        with rt.session() as session:  # the jobs still unfinished (not deleted with their item meanwhile) finish
            embedded_jobs = [job.job_id for job in batch.jobs if job.job_id not in outcome]
            if embedded_jobs:
                served = next(iter(batch.points))
                done = finish_jobs(session, embedded_jobs, JobStatus.SUCCEEDED, model_version=served)
                statuses.update(dict.fromkeys(done, JobStatus.SUCCEEDED))
            for job_id, (status, reason) in outcome.items():
                statuses.update(dict.fromkeys(finish_jobs(session, [job_id], status, reason), status))
            session.commit()
        return statuses

    return _guarded(rt, batch.job_ids, step)


def release(rt: Runtime, job_ids: Sequence[str]) -> None:
    """Unfinished jobs back in the queue (after a transient failure): the next batch, or the job sweep, takes them."""
    with rt.session() as session:
        back = update(Job).where(Job.job_id.in_(job_ids), unindexed(Job.status) == JobStatus.RUNNING)
        session.execute(back.values(status=JobStatus.QUEUED, batch_id=None))
        session.commit()


def embed_item(rt: Runtime, item_id: str, job_id: str, *, batch_size: int = 1) -> str:
    """The task of one uploaded item's job: embed it in a batch with up to `batch_size` - 1 other embedding jobs
    that are queued, at once, without waiting for more (claim_batch, encode_batch, write_batch); then batch after
    batch of the queued jobs until none is left (uploads that no message of their own was sent for, jobs
    services.db.covered). A batch is written in a thread while the next one is claimed and encoded, so the index
    owner's work and the database's overlap the encoder; one batch is written at a time, in order. Returns the job's
    status."""
    lead: str | None = job_id
    with ThreadPoolExecutor(1, thread_name_prefix="thaw-write") as writer:
        writing: Future[dict[str, str]] | None = None
        while claimed := claim_batch(rt, lead, batch_size):
            lead = None
            encoded = encode_batch(rt, claimed)
            if writing is not None:
                try:
                    writing.result()
                except BaseException:
                    release(rt, claimed)  # not written: the batch just encoded goes back to the queue too
                    raise
            writing = writer.submit(write_batch, rt, encoded) if isinstance(encoded, EncodedBatch) else None
        if writing is not None:
            writing.result()
    with rt.session() as session:
        job = session.get(Job, job_id)
        return job.status if job is not None else "deleted"


def requeue(rt: Runtime, job_id: str, due: datetime) -> None:
    """A job back in the queue after a transient failure, its retry due at `due` (the job sweep waits for that)."""
    with rt.session() as session:
        job = session.get(Job, job_id)
        if job is not None and not JobStatus(job.status).finished:
            job.status, job.dispatched_at = JobStatus.QUEUED, due
            session.commit()


def fail_job(rt: Runtime, job_id: str, reason: str) -> str:
    """Record a job's permanent failure (after retries ran out, or an unexpected error); returns its status."""
    with rt.session() as session:
        job = session.get(Job, job_id)
        if job is None:
            return JobStatus.FAILED
        if not JobStatus(job.status).finished:
            finish_job(job, JobStatus.FAILED, reason)
            session.commit()
        return job.status


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
