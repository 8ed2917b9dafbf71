"""Services: batch upload jobs (POST /items:batch) — many items checked, stored and recorded in one transaction with
one job whose items are rows of `reembed_items` (pending -> done | failed, with the reason), embedded by chunk tasks
on the workers (services.onboard); the job finishes when no item is pending. A bad item fails alone; a chunk sent
twice only embeds what is still pending; a job that shows no progress is sent again (services.jobs.sweep)."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from sqlalchemy import select

from services.db import ItemRecord, Job, ReembedItem, as_utc, finish_job, log_job, mark_started, utcnow
from services.embedding import write_versions
from services.items import check_media, check_modalities
from services.onboard import embed_records
from services.reembed import chunked, item_counts
from services.runtime import Runtime
from thaw.errors import InvalidInputError
from thaw.schema import UNFINISHED, ItemStatus, JobStatus, item_text

log = logging.getLogger(__name__)
KIND = "batch"
CHUNK_SIZE = 32  # items per chunk task


@dataclass
class BatchItem:
    """One line of a batch: the item, its metadata, its media files, and why it was refused already (None: not)."""

    item_id: str
    metadata: dict[str, Any]
    media: dict[str, bytes] = field(default_factory=dict)
    error: str | None = None


@dataclass
class Submitted:
    job_id: str
    total: int
    failed: int
    chunks: list[list[str]]


def _problem(rt: Runtime, item: BatchItem) -> str | None:
    """Why an item of a batch cannot be taken (None: it can)."""
    if item.error is not None:
        return item.error
    if not item.media and not item_text(item.metadata):
        return "an item needs text fields, an image or audio; none was given"
    try:
        check_modalities(rt, item.metadata, item.media)
        for modality, data in item.media.items():
            check_media(rt, modality, data)
    except InvalidInputError as exc:
        return str(exc)
    return None


def submit(rt: Runtime, items: Sequence[BatchItem], *, chunk_size: int = CHUNK_SIZE) -> Submitted:
    """Check every item (an item id sent twice, bad media, a modality the served model lacks: that item fails with
    the reason), keep the good items' originals, then write their records (new, or a new revision), the job and one
    row per item in one transaction. Returns the job and the chunks to send."""
    seen = Counter(item.item_id for item in items)
    failures = {i: f"item id {i!r} appears {n} times in the batch; send it once" for i, n in seen.items() if n > 1}
    good: list[BatchItem] = []
    for item in items:
        if item.item_id in failures:
            continue
        problem = _problem(rt, item)
        if problem is None:
            good.append(item)
        else:
            failures[item.item_id] = problem
    hashes = {i.item_id: {m: rt.store.put(i.item_id, m, d).sha256 for m, d in i.media.items()} for i in good}
    with rt.session() as session:
        ids = [i.item_id for i in good]
        records = {r.item_id: r for r in session.scalars(select(ItemRecord).where(ItemRecord.item_id.in_(ids)))}
        for item in good:
            record = records.get(item.item_id)
            if record is None:
                session.add(ItemRecord(item_id=item.item_id, metadata_=item.metadata, media=hashes[item.item_id]))
            else:
                record.revision, record.updated_at = record.revision + 1, utcnow()
                record.metadata_, record.media = item.metadata, {**(record.media or {}), **hashes[item.item_id]}
        job = Job(kind=KIND, status=JobStatus.QUEUED if good else JobStatus.FAILED, dispatched_at=utcnow())
        if not good:
            job.error, job.finished_at = "every item of the batch failed (the job lists why)", utcnow()
        session.add(job)
        session.flush()
        job_id = job.job_id
        now = utcnow()
        session.add_all(
            [ReembedItem(job_id=job_id, item_id=i, status=ItemStatus.PENDING, skipped=False) for i in ids]
            + [
                ReembedItem(job_id=job_id, item_id=i, status=ItemStatus.FAILED, error=e, skipped=False, updated_at=now)
                for i, e in sorted(failures.items())
            ]
        )
        session.commit()
        log_job(job, "queued" if good else JobStatus.FAILED)
    return Submitted(job_id, len(seen), len(failures), chunked(ids, chunk_size) if ids else [])


def _pending(session: Any, job_id: str, item_ids: Sequence[str] | None = None) -> list[ReembedItem]:
    query = select(ReembedItem).where(ReembedItem.job_id == job_id, ReembedItem.status == ItemStatus.PENDING)
    if item_ids is not None:
        query = query.where(ReembedItem.item_id.in_(item_ids))
    return list(session.scalars(query.order_by(ReembedItem.item_id)))


def run_chunk(rt: Runtime, job_id: str, item_ids: list[str]) -> str:
    """Embed the chunk's pending items with every version being written, mark each done or failed, and finish the
    job when none is pending. Transient errors are raised (the task retries the chunk)."""
    with rt.session() as session:
        job = session.get(Job, job_id)
        if job is None or job.kind != KIND:
            log.warning("batch chunk for unknown job %s dropped", job_id)
            return "unknown"
        if JobStatus(job.status).finished:
            return job.status
        mark_started(job)
        job.dispatched_at = utcnow()  # a sign of life for the sweep
        session.commit()
        rows = _pending(session, job_id, item_ids)
        ids = [row.item_id for row in rows]
        records = {r.item_id: r for r in session.scalars(select(ItemRecord).where(ItemRecord.item_id.in_(ids)))}
        versions = write_versions(rt, session) if records else []
        out = embed_records(rt, list(records.values()), versions) if records else None
        now = utcnow()
        for row in rows:
            reason = (
                f"item {row.item_id!r} no longer exists"
                if row.item_id not in records
                else out.failed.get(row.item_id)
                if out
                else None
            )
            row.status, row.error, row.updated_at = (ItemStatus.FAILED if reason else ItemStatus.DONE), reason, now
            row.skipped = out is not None and row.item_id in out.skipped
        job.model_version = versions[0] if versions else job.model_version
        session.commit()
    return finish(rt, job_id)


def fail_items(rt: Runtime, job_id: str, item_ids: list[str], reason: str) -> str:
    """A chunk that kept failing (retries exhausted): its pending items fail with the reason; then finish."""
    with rt.session() as session:
        for row in _pending(session, job_id, item_ids):
            row.status, row.error, row.updated_at = ItemStatus.FAILED, reason, utcnow()
        session.commit()
    return finish(rt, job_id)


def finish(rt: Runtime, job_id: str) -> str:
    """When no item is pending: the job succeeded (some items may have failed, each with its reason), or failed
    when every item did. Safe to run twice."""
    with rt.session() as session:
        job = session.get(Job, job_id)
        if job is None or JobStatus(job.status).finished:
            return job.status if job is not None else "unknown"
        counts = item_counts(session, job_id)
        if counts.get(ItemStatus.PENDING, 0):
            return job.status
        failed, done = counts.get(ItemStatus.FAILED, 0), counts.get(ItemStatus.DONE, 0)
        if done:
            finish_job(job, JobStatus.SUCCEEDED, f"{failed} of {failed + done} items failed" if failed else None)
        else:
            finish_job(job, JobStatus.FAILED, "every item of the batch failed (the job lists why)")
        session.commit()
        return job.status


def progress(session: Any, job: Job) -> dict[str, Any]:
    """A batch job's figures for GET /jobs/{id}: counts, and every item's status with the reason of each failure."""
    rows = session.execute(
        select(ReembedItem.item_id, ReembedItem.status, ReembedItem.error, ReembedItem.skipped)
        .where(ReembedItem.job_id == job.job_id)
        .order_by(ReembedItem.item_id)
    ).all()
    counts = Counter(status for _, status, _, _ in rows)
    return {
        "total": len(rows),
        "done": counts[ItemStatus.DONE],
        "failed": counts[ItemStatus.FAILED],
        "pending": counts[ItemStatus.PENDING],
        "skipped": sum(1 for *_, skipped in rows if skipped),
        "failures": [{"item_id": i, "error": e or ""} for i, s, e, _ in rows if s == ItemStatus.FAILED][:100],
        "items": [{"item_id": i, "status": s, "error": e} for i, s, e, _ in rows],
    }


def resume(rt: Runtime, job_id: str, chunk_size: int = CHUNK_SIZE) -> list[list[str]]:
    """The chunks to send again for an unfinished batch job (its pending items); marks it as sent now."""
    with rt.session() as session:
        job = session.get(Job, job_id)
        if job is None or JobStatus(job.status).finished:
            return []
        job.dispatched_at = utcnow()
        ids = [row.item_id for row in _pending(session, job_id)]
        session.commit()
    return chunked(ids, chunk_size) or [[]]


def stalled(rt: Runtime, stall_seconds: float | None) -> list[str]:
    """Unfinished batch jobs with no sign of life for `stall_seconds` (None: every unfinished one)."""
    with rt.session() as session:
        rows = session.execute(
            select(Job.job_id, Job.dispatched_at).where(Job.kind == KIND, Job.status.in_(UNFINISHED))
        ).all()
    if stall_seconds is None:
        return [job_id for job_id, _ in rows]
    bound = utcnow() - timedelta(seconds=stall_seconds)
    return [job_id for job_id, at in rows if at is None or as_utc(at) < bound]


def media_owner(name: str, item_ids: Mapping[str, Any]) -> tuple[str, str]:
    """A batch file's part name, `image:<item_id>` or `audio:<item_id>`, as (modality, item id); InvalidInputError
    for another name or an item that is not in the batch."""
    modality, _, item_id = name.partition(":")
    if modality not in ("image", "audio") or not item_id:
        raise InvalidInputError(f"file part {name!r}: name files image:<item_id> or audio:<item_id>")
    if item_id not in item_ids:
        raise InvalidInputError(f"file part {name!r} names item {item_id!r}, which no metadata line has")
    return modality, item_id
