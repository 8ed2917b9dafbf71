"""Services: jobs — what a job's status is, starting and resuming re-embedding jobs with the service's defaults, and
sending again every job that is recorded but not finished (after a restart, or when a job makes no progress)."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from services import reembed
from services.db import Job, running_reembeds
from services.dispatch import BrokerUnavailableError, Dispatcher
from services.runtime import Runtime
from thaw.errors import NotFoundError
from thaw.schema import UNFINISHED

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReembedDefaults:
    chunk_size: int = 32  # items per re-embedding task
    max_failed_share: float = 0.01  # a job whose failed items exceed this share does not switch versions
    keep_versions: int = 3  # versions whose collections are kept after a switch
    stall_seconds: float = 300.0  # a job with no progress for this long has its pending items sent again


def read(session: Session, job_id: str) -> tuple[Job, dict[str, Any] | None]:
    """A job and, for a re-embedding job, its progress figures."""
    job = session.get(Job, job_id)
    if job is None:
        raise NotFoundError(f"job {job_id!r} does not exist")
    return job, reembed.progress(session, job) if job.kind == "reembed" else None


def start_reembed(
    rt: Runtime,
    dispatcher: Dispatcher,
    defaults: ReembedDefaults,
    version: str,
    match: dict[str, Any] | None = None,
    *,
    chunk_size: int | None = None,
    max_failed_share: float | None = None,
) -> reembed.Started:
    """Record a re-embedding job (the defaults fill what the request leaves out) and send its chunks. When the
    broker is down the job stays recorded, and the stall supervisor sends it once it is back."""
    started = reembed.start(
        rt,
        version,
        match,
        chunk_size=chunk_size or defaults.chunk_size,
        max_failed_share=defaults.max_failed_share if max_failed_share is None else max_failed_share,
        keep_versions=defaults.keep_versions,
    )
    try:
        dispatcher.reembed_chunks(started.job_id, started.chunks)
    except BrokerUnavailableError as exc:
        raise BrokerUnavailableError(
            f"job {started.job_id} recorded but the broker is unreachable ({exc}); it resumes when it is back"
        ) from exc
    return started


def resume(rt: Runtime, dispatcher: Dispatcher, job_id: str) -> int:
    """Send a re-embedding job's pending items again (safe at any time: finished items are not redone); returns
    the chunks sent."""
    chunks = reembed.resume(rt, job_id)
    dispatcher.reembed_chunks(job_id, chunks)
    return len(chunks)


def resend_unfinished(rt: Runtime, dispatcher: Dispatcher) -> int:
    """Jobs recorded but not finished when the last process stopped are sent again (tasks are idempotent)."""
    with rt.session() as session:
        pending = session.execute(
            select(Job.job_id, Job.item_id).where(Job.kind == "embed", Job.status.in_(UNFINISHED))
        ).all()
        reembeds = [job_id for job_id, _ in running_reembeds(session)]
    for job_id, item_id in pending:
        dispatcher.embed(str(item_id), job_id)
    for job_id in reembeds:
        try:
            resume(rt, dispatcher, job_id)
        except reembed.JobConflictError as exc:
            log.warning("%s", exc)
    return len(pending) + len(reembeds)


def supervise_reembeds(rt: Runtime, dispatcher: Dispatcher, stall_seconds: float, stop: threading.Event) -> None:
    """Until `stop`: send again the pending chunks of re-embedding jobs that show no progress for `stall_seconds`
    (messages lost with a broker restart, or held by a dead worker until the visibility timeout). Duplicates are
    harmless: a chunk only embeds items the database still records as pending."""
    while not stop.wait(max(1.0, stall_seconds / 4)):
        try:
            for job_id in reembed.stalled_jobs(rt, stall_seconds):
                try:
                    sent = resume(rt, dispatcher, job_id)
                except reembed.JobConflictError as exc:  # finished meanwhile, or failed as unresumable
                    log.warning("%s", exc)
                    continue
                log.warning(
                    "re-embedding job %s made no progress for %ss: re-sent %d chunks", job_id, stall_seconds, sent
                )
        except Exception:  # the broker or database may be down for a while; try again on the next tick
            log.exception("re-embedding supervisor tick failed")
