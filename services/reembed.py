"""Services: re-embedding jobs — every item re-encoded with a model version into that version's collections by
chunk tasks, progress and failures per item in the database, then one atomic alias swap and keep-N retention.

Life of a job: `start` records the job (from then on uploads are embedded with the target version too), creates the
target's collections and one `reembed_items` row per item; the caller sends `chunks` as `thaw.reembed_chunk` tasks.
`run_chunk` embeds a chunk's pending rows and marks them done or failed; whichever chunk sees no pending row left
runs `finalize`: failure share check, the target's users and interaction counts brought up to date, the alias swap
(the serving truth), retention. Everything is idempotent, so a redelivered or re-sent
chunk (`resume`, `stalled_jobs`) only redoes what the database does not record as finished.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import numpy as np
from sqlalchemy import func, insert, select, update
from sqlalchemy.orm import Session

from indexer.collections import (
    ITEMS,
    USERS,
    active_collection_version,
    collection_name,
    ensure_collections,
    indexed_versions,
    remove_versions,
    versions_to_remove,
)
from indexer.search import get_items, payload_filter, payloads
from indexer.writer import set_item_cf, upsert_items, upsert_users
from services.db import (
    ItemRecord,
    Job,
    ReembedItem,
    ReembedJob,
    as_utc,
    audiences,
    finish_job,
    interaction_counts,
    log_job,
    mark_started,
    running_reembeds,
    utcnow,
)
from services.embedding import PermanentError, content_hash, drop_deleted, item_input, prefetch, stored_point
from services.onboard import encode_each
from services.runtime import Runtime
from thaw.errors import ConflictError, NotFoundError
from thaw.factors import Factors, fold_in_events
from thaw.schema import UNFINISHED, ItemStatus, JobStatus

if TYPE_CHECKING:
    from encoders.artifacts import ThawModel

log = logging.getLogger(__name__)

MAX_LISTED_FAILURES = 100


class JobConflictError(ConflictError):
    """The request contradicts the state of the service (a job already running, nothing served to filter)."""


# ---- pure parts -------------------------------------------------------------------------------------------------


def chunked(item_ids: Sequence[str], size: int) -> list[list[str]]:
    if size < 1:
        raise ValueError(f"chunk size must be at least 1, got {size}")
    return [list(item_ids[i : i + size]) for i in range(0, len(item_ids), size)]


def failure_verdict(failed: int, total: int, max_share: float) -> str | None:
    """None when the failed items are within the allowed share, else why the job must not switch versions."""
    if failed == 0 or failed <= max_share * total:
        return None
    return (
        f"{failed} of {total} items failed ({100 * failed / total:.1f}%), more than the "
        f"{100 * max_share:g}% allowed (THAW_REEMBED_MAX_FAILED_SHARE)"
    )


def is_stalled(touched_at: datetime, now: datetime, stall_seconds: float) -> bool:
    """No chunk started or finished, and nothing was re-sent, for `stall_seconds`."""
    return (as_utc(now) - as_utc(touched_at)).total_seconds() > stall_seconds


def rate_and_eta(finished: int, pending: int, elapsed_s: float) -> tuple[float | None, float | None]:
    """Items finished per second so far and the seconds the pending ones need at that rate (None: no rate yet)."""
    if finished <= 0 or elapsed_s <= 0:
        return None, None
    rate = finished / elapsed_s
    return rate, pending / rate


def cf_vectors(
    factors: Factors, audience: dict[str, list[tuple[str, float]]], *, reg: float, alpha: float
) -> dict[str, tuple[np.ndarray | None, int]]:
    """Each item's CF vector in this version's factor space and its interaction count: the learned factors of the
    items the version was trained on; for the others, the fold-in from their audience's learned user factors (as
    events do); none for items nobody known interacted with. CF spaces differ between versions, so vectors are
    never copied from another version."""
    warm = {item: k for k, item in enumerate(factors.item_ids)}
    users = {user: k for k, user in enumerate(factors.user_ids)}
    gram = factors.users.T.astype(np.float64) @ factors.users
    out: dict[str, tuple[np.ndarray | None, int]] = {}
    for item, events in audience.items():
        if item in warm:
            out[item] = (factors.items[warm[item]], len(events))
            continue
        known = [(users[u], w) for u, w in events if u in users]
        vector = None
        if known:
            rows = factors.users[[k for k, _ in known]]
            vector = fold_in_events(rows, np.array([w for _, w in known]), reg=reg, alpha=alpha, gram=gram)
        out[item] = (vector, len(events))
    return out


# ---- start, progress, resume ------------------------------------------------------------------------------------


@dataclass
class Started:
    job_id: str
    total: int
    chunks: list[list[str]]


def start(
    rt: Runtime,
    version: str,
    match: dict[str, Any] | None,
    *,
    chunk_size: int,
    max_failed_share: float,
    keep_versions: int,
) -> Started:
    """Record a job re-embedding every item (or those whose served payload matches `match`) with `version`; returns
    the chunks to send. The job is committed before the items are listed: an upload from then on is embedded with
    `version` too, and one from before is in the list."""
    config = rt.registry.config(version)  # UnknownVersionError before anything is recorded
    with rt.session() as session:
        running = running_reembeds(session)
        if running:
            other, target = running[0]
            raise JobConflictError(
                f"job {other} is still re-embedding into {target}; wait for it, or resume it with "
                f"POST /jobs/{other}/resume"
            )
        source = active_collection_version(rt.index)
        if match and source is None:
            raise JobConflictError("a filter selects items by the served payload, but no version is served yet")
        ensure_collections(rt.index, version, config.dim, config.embedding_dims)
        job = Job(kind="reembed", model_version=version, status=JobStatus.QUEUED)
        session.add(job)
        session.flush()
        job_id = job.job_id
        session.add(
            ReembedJob(
                job_id=job_id,
                target_version=version,
                source_version=source,
                filter=match or None,
                chunk_size=chunk_size,
                max_failed_share=max_failed_share,
                keep_versions=keep_versions,
            )
        )
        session.commit()
        log_job(job, "queued")
        if match:
            assert source is not None
            found = payloads(rt.index, collection_name(ITEMS, source), ["item_id"], payload_filter(match))
            item_ids = sorted({str(p["item_id"]) for p in found if "item_id" in p})
        else:
            item_ids = sorted(session.scalars(select(ItemRecord.item_id)))
        if item_ids:
            rows = [{"job_id": job_id, "item_id": i, "status": ItemStatus.PENDING, "skipped": False} for i in item_ids]
            session.execute(insert(ReembedItem), rows)
        session.execute(update(ReembedJob).where(ReembedJob.job_id == job_id).values(total=len(item_ids)))
        session.commit()
    log.info("re-embedding job %s: %d items into %s", job_id, len(item_ids), version)
    return Started(job_id, len(item_ids), chunked(item_ids, chunk_size) or [[]])


def item_counts(session: Session, job_id: str) -> dict[str, int]:
    rows = session.execute(
        select(ReembedItem.status, func.count()).where(ReembedItem.job_id == job_id).group_by(ReembedItem.status)
    )
    return {status: int(n) for status, n in rows}


def progress(session: Session, job: Job, now: datetime | None = None) -> dict[str, Any] | None:
    """A re-embedding job's figures for GET /jobs/{id}: counts, rate, ETA, the first failures with their reasons."""
    rj = session.get(ReembedJob, job.job_id)
    if rj is None:
        return None
    counts = item_counts(session, job.job_id)
    done, failed, pending = (
        counts.get(ItemStatus.DONE, 0),
        counts.get(ItemStatus.FAILED, 0),
        counts.get(ItemStatus.PENDING, 0),
    )
    skipped = session.scalar(
        select(func.count()).where(ReembedItem.job_id == job.job_id, ReembedItem.skipped.is_(True))
    )
    end = job.finished_at or now or utcnow()
    elapsed = (as_utc(end) - as_utc(job.started_at)).total_seconds() if job.started_at else 0.0
    rate, eta = rate_and_eta(done + failed, pending, elapsed)
    failures = session.execute(
        select(ReembedItem.item_id, ReembedItem.error)
        .where(ReembedItem.job_id == job.job_id, ReembedItem.status == ItemStatus.FAILED)
        .order_by(ReembedItem.item_id)
        .limit(MAX_LISTED_FAILURES)
    )
    return {
        "total": rj.total if rj.total is not None else done + failed + pending,
        "done": done,
        "failed": failed,
        "pending": pending,
        "skipped": int(skipped or 0),
        "items_per_s": None if rate is None else round(rate, 2),
        "eta_s": None if eta is None or not math.isfinite(eta) else round(eta, 1),
        "source_version": rj.source_version,
        "target_version": rj.target_version,
        "filter": rj.filter,
        "switched": rj.switched,
        "failures": [{"item_id": i, "error": e or ""} for i, e in failures],
    }


def resume(rt: Runtime, job_id: str) -> list[list[str]]:
    """The chunks to send again for an unfinished job: its pending items (none pending: one empty chunk, which
    finalizes). NotFoundError for an unknown job, JobConflictError for a finished one or one of another kind."""
    with rt.session() as session:
        job, rj = session.get(Job, job_id), session.get(ReembedJob, job_id)
        if job is None:
            raise NotFoundError(f"job {job_id!r} does not exist")
        if rj is None:
            raise JobConflictError(f"job {job_id} is a {job.kind} job, not a re-embedding job")
        if JobStatus(job.status).finished:
            raise JobConflictError(f"job {job_id} has already {job.status}; nothing to resume")
        if rj.total is None:  # the process that started it stopped before its items were listed
            finish_job(job, JobStatus.FAILED, "interrupted while its items were being listed; start a new job")
            session.commit()
            raise JobConflictError(f"job {job_id} {job.error}")
        pending = session.scalars(
            select(ReembedItem.item_id)
            .where(ReembedItem.job_id == job_id, ReembedItem.status == ItemStatus.PENDING)
            .order_by(ReembedItem.item_id)
        ).all()
        rj.touched_at = utcnow()
        session.commit()
        return chunked(pending, rj.chunk_size) or [[]]


def stalled_jobs(rt: Runtime, stall_seconds: float) -> list[str]:
    """Unfinished jobs with no sign of life for `stall_seconds` (their messages were lost with a broker restart, or
    are held by a dead worker until the visibility timeout): the ones to resume."""
    now = utcnow()
    with rt.session() as session:
        rows = session.execute(
            select(ReembedJob.job_id, ReembedJob.touched_at)
            .join(Job, Job.job_id == ReembedJob.job_id)
            .where(Job.status.in_(UNFINISHED))
        )
        return [job_id for job_id, touched in rows if is_stalled(touched, now, stall_seconds)]


# ---- chunks -----------------------------------------------------------------------------------------------------


def run_chunk(rt: Runtime, job_id: str, item_ids: list[str]) -> str:
    """Embed the chunk's pending items with the job's target version; then finalize if nothing is pending."""
    with rt.session() as session:
        job, rj = session.get(Job, job_id), session.get(ReembedJob, job_id)
        if job is None or rj is None:
            log.warning("re-embedding chunk for unknown job %s dropped", job_id)
            return "unknown"
        if JobStatus(job.status).finished:
            return job.status
        mark_started(job)
        rj.touched_at = utcnow()
        session.commit()
        rows = _pending(session, job_id, item_ids)
        if rows:
            _embed_rows(rt, session, rj.target_version, rows)
            rj.touched_at = utcnow()
            session.commit()
    return finalize(rt, job_id)


def _embed_rows(rt: Runtime, session: Session, version: str, rows: list[ReembedItem]) -> None:
    model = rt.model(version)
    collection = collection_name(ITEMS, version)
    ids = [row.item_id for row in rows]
    records = {r.item_id: r for r in session.scalars(select(ItemRecord).where(ItemRecord.item_id.in_(ids)))}
    stored = {
        h.item_id: h.payload.get("content_hash") for h in get_items(rt.index, ids, vectors=False, collection=collection)
    }
    todo, inputs = [], []
    hashes = {i: content_hash(r.metadata_ or {}, r.media or {}) for i, r in records.items()}
    prefetch(rt, (r for i, r in records.items() if stored.get(i) != hashes[i]))  # the unchanged are not read
    for row in rows:
        record = records.get(row.item_id)
        if record is None:
            _fail(row, f"item {row.item_id!r} no longer exists")
            continue
        row.content_hash = hashes[row.item_id]
        if stored.get(row.item_id) == row.content_hash:
            row.status, row.skipped, row.updated_at = ItemStatus.DONE, True, utcnow()
            continue
        try:
            inputs.append(item_input(rt, record))
        except PermanentError as exc:
            _fail(row, str(exc))
            continue
        todo.append((row, record))
    encoded, kept = [], []
    for (row, record), enc in zip(todo, encode_each(model, inputs), strict=True):
        if isinstance(enc, str):  # the encoder failed on this item; the others go on
            _fail(row, enc)
        else:
            encoded.append(enc)
            kept.append((row, record))
    todo = kept
    if not todo:
        return
    cf = _cf_vectors(model, audiences(session, [r.item_id for r, _ in todo]))
    trained = set(model.item_ids)
    points = [
        stored_point(model, record, enc, cf[row.item_id], trained)
        for (row, record), enc in zip(todo, encoded, strict=True)
    ]
    upsert_items(rt.index, collection, points)  # a newer upload already written there is left alone
    drop_deleted(rt, [row.item_id for row, _ in todo])
    for row, _ in todo:
        row.status, row.updated_at = ItemStatus.DONE, utcnow()


def _fail(row: ReembedItem, reason: str) -> None:
    row.status, row.error, row.updated_at = ItemStatus.FAILED, reason, utcnow()
    log.warning("re-embedding of %s failed: %s", row.item_id, reason)


def _cf_vectors(
    model: ThawModel, audience: dict[str, list[tuple[str, float]]]
) -> dict[str, tuple[np.ndarray | None, int]]:
    factors = Factors(model.user_ids, model.item_ids, model.user_factors, model.item_factors)
    return cf_vectors(factors, audience, reg=model.config.als_reg, alpha=model.config.als_alpha)


def _pending(session: Session, job_id: str, item_ids: list[str]) -> list[ReembedItem]:
    """The rows of these items that the job still records as pending."""
    query = select(ReembedItem).where(
        ReembedItem.job_id == job_id, ReembedItem.item_id.in_(item_ids), ReembedItem.status == ItemStatus.PENDING
    )
    return list(session.scalars(query))


def fail_items(rt: Runtime, job_id: str, item_ids: list[str], reason: str) -> str:
    """A chunk that kept failing (retries exhausted): its pending items fail with the reason; then finalize."""
    with rt.session() as session:
        rows = _pending(session, job_id, item_ids)
        for row in rows:
            _fail(row, reason)
        session.commit()
    return finalize(rt, job_id)


# ---- the switch -------------------------------------------------------------------------------------------------


def finalize(rt: Runtime, job_id: str) -> str:
    """When no item is pending: refuse the switch if too many failed; else bring the target's users and interaction
    counts up to date, swap the aliases to it (not for a filtered job, which fills the version but must not serve a
    partial catalogue, nor for an in-place job into the version served when it started), mark the job succeeded,
    and apply keep-N retention. Safe to run twice."""
    with rt.session() as session:
        job, rj = session.get(Job, job_id), session.get(ReembedJob, job_id)
        if job is None or rj is None or JobStatus(job.status).finished or rj.total is None:
            return job.status if job is not None else "unknown"
        counts = item_counts(session, job_id)
        if counts.get(ItemStatus.PENDING, 0):
            return job.status
        served = active_collection_version(rt.index)
        target = rj.target_version
        reason = failure_verdict(counts.get(ItemStatus.FAILED, 0), rj.total, rj.max_failed_share)
        if reason is not None:
            because = f"{reason}; {served} stays served (the failed items are listed in the job)"
            finish_job(job, JobStatus.FAILED, because)
            session.commit()
            return job.status
        model = rt.model(target)
        upsert_users(
            rt.index,
            collection_name(USERS, target),
            model.user_ids,
            model.user_factors,
            [{"source": "als"}] * len(model.user_ids),
        )
        _sync_interactions(rt, session, model, collection_name(ITEMS, target))
        in_place = rj.source_version == target  # e.g. the catch-up after a rollback: never switches
        switch = not in_place and not rj.filter and served != target
        if switch:
            rt.activate(target)
            rj.switched = True
        elif rj.filter and not in_place and served != target:
            job.error = (
                f"filtered job: {target} holds only the matching items and {served} stays served; "
                f"POST /models/{target}/activate serves it anyway"
            )
        finish_job(job, JobStatus.SUCCEEDED, job.error)
        keep = rj.keep_versions
        session.commit()
        protected = {target, *(v for v in (served,) if v), *(t for _, t in running_reembeds(session))}
    if switch:
        gone = versions_to_remove(indexed_versions(rt.index), keep, protected)
        remove_versions(rt.index, gone)
        log.info("job %s: %s served (was %s); removed %s", job_id, target, served, gone or "nothing")
    return JobStatus.SUCCEEDED


def _sync_interactions(rt: Runtime, session: Session, model: ThawModel, collection: str) -> None:
    """Items whose interaction count in the target differs from the database's (events that arrived after the item
    was re-embedded) get their count and CF vector recomputed, so no event is lost at the switch."""
    counts = interaction_counts(session)
    stale = [
        str(p["item_id"])
        for p in payloads(rt.index, collection, ["item_id", "interactions"])
        if "item_id" in p and int(p.get("interactions", 0)) != counts.get(str(p["item_id"]), 0)
    ]
    if not stale:
        return
    for item_id, (vector, count) in _cf_vectors(model, audiences(session, stale)).items():
        if vector is not None:
            set_item_cf(rt.index, collection, item_id, vector, count)
