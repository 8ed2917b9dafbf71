"""Services: jobs — what a job's status is, the jobs newest first, starting and resuming re-embedding jobs with the
service's defaults, and sending again every job that is recorded but not finished (after a restart, or when a job
makes no progress)."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import CursorResult, and_, func, or_, select, update
from sqlalchemy.orm import Session

from services import reembed
from services.db import Job, as_utc, finish_job, running_reembeds, utcnow
from services.dispatch import BrokerUnavailableError, Dispatcher
from services.runtime import Runtime
from thaw.errors import NotFoundError
from thaw.schema import UNFINISHED, JobStatus

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReembedDefaults:
    chunk_size: int = 32  # items per re-embedding task
    max_failed_share: float = 0.01  # a job whose failed items exceed this share does not switch versions
    keep_versions: int = 3  # versions whose collections are kept after a switch


def read(session: Session, job_id: str) -> tuple[Job, dict[str, Any] | None]:
    """A job and, for a re-embedding job, its progress figures."""
    job = session.get(Job, job_id)
    if job is None:
        raise NotFoundError(f"job {job_id!r} does not exist")
    return job, reembed.progress(session, job) if job.kind == "reembed" else None


def listed(
    session: Session,
    before: tuple[datetime, str] | None,
    limit: int,
    *,
    status: JobStatus | None = None,
    kind: str | None = None,
) -> tuple[list[Job], tuple[datetime, str] | None]:
    """Jobs newest first (by creation, then id), of `status` and `kind` when given, older than `before` (a
    (created_at, job id) key); returns a page of at most `limit` and the key to continue before (None at the end)."""
    query = select(Job)
    if status is not None:
        query = query.where(Job.status == status)
    if kind is not None:
        query = query.where(Job.kind == kind)
    if before is not None:
        at, job_id = before
        query = query.where(or_(Job.created_at < at, and_(Job.created_at == at, Job.job_id < job_id)))
    rows = session.scalars(query.order_by(Job.created_at.desc(), Job.job_id.desc()).limit(limit + 1)).all()
    page = list(rows[:limit])
    more = len(rows) > limit
    return page, (as_utc(page[-1].created_at), page[-1].job_id) if more and page else None


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


def status_counts(session: Session) -> dict[tuple[str, str], int]:
    """The jobs recorded, by (kind, status), in one grouped count: queued and running are the queue's depth, succeeded
    and failed the outcomes (of jobs whose item still exists: deleting an item deletes its jobs)."""
    rows = session.execute(select(Job.kind, Job.status, func.count()).group_by(Job.kind, Job.status))
    return {(str(kind), str(status)): int(n) for kind, status, n in rows}


@dataclass(frozen=True)
class SweepPolicy:
    """When an unfinished embedding job's message is presumed lost and sent again, and when to give up on it."""

    resend_seconds: float = 300.0  # running this long (longer than any task), or queued this long while idle
    max_dispatches: int = 5  # a job sent this often without finishing fails with the reason
    reembed_stall_seconds: float = 300.0  # a re-embedding job with no progress for this long is resumed

    @property
    def tick_seconds(self) -> float:
        return max(1.0, min(self.resend_seconds, self.reembed_stall_seconds) / 4)


def record_dispatch(job: Job) -> None:
    """Mark a job as sent now, before its message goes out (a retry moves `dispatched_at` to when it is due)."""
    job.dispatched_at, job.dispatches = utcnow(), (job.dispatches or 0) + 1


WAKEUPS = 4  # queued embedding jobs with a message of their own that cover a new upload: as many workers drain at once
WAKEUP_SECONDS = 5.0  # how recent their messages must be to count


def covered(session: Session) -> bool:
    """Whether a new embedding job needs no message of its own: `WAKEUPS` queued embedding jobs were sent in the last
    `WAKEUP_SECONDS`, and the task that takes each of their messages claims the queued jobs batch after batch until
    none is left (services.embedding.embed_item). Such a job is recorded as dispatched now without a send (its count
    of sends stays 0); if the messages that cover it are lost, the job sweep sends it like any job presumed lost."""
    now = utcnow()
    recent = session.scalar(
        select(func.count()).where(
            Job.kind == "embed",
            Job.status == JobStatus.QUEUED,
            Job.dispatches > 0,
            Job.dispatched_at >= now - timedelta(seconds=WAKEUP_SECONDS),
            Job.dispatched_at <= now,
        )
    )
    return int(recent or 0) >= WAKEUPS


def lost_embeds(session: Session, policy: SweepPolicy, now: datetime) -> list[tuple[str, str, int]]:
    """(job id, item id, dispatches) of the unfinished embedding jobs whose message is presumed lost:
    - running for longer than `resend_seconds` (its worker died and the broker lost or still holds the message);
    - queued, while a job sent more than a grace period after it has started: the queue is first in, first out, so
      its message would have been taken before that one;
    - queued for `resend_seconds`, while no embedding job started for as long (the workers are idle);
    - never sent (recorded while the broker was down, or before dispatches were recorded)."""
    bound = now - timedelta(seconds=policy.resend_seconds)
    started = (Job.kind == "embed", Job.started_at.is_not(None))
    last_start = session.scalar(select(func.max(Job.started_at)).where(*started))
    # The newest message a worker took, known from jobs sent once and started once: a re-sent job may have been
    # taken from its first message, a retried one from a delayed message; neither says where the queue is.
    passed = session.scalar(select(func.max(Job.dispatched_at)).where(*started, Job.dispatches == 1, Job.attempts == 1))
    lost = [Job.dispatched_at.is_(None), and_(Job.status == JobStatus.RUNNING, Job.started_at < bound)]
    if passed is not None:
        grace = timedelta(seconds=min(5.0, policy.resend_seconds / 10))
        lost.append(and_(Job.status == JobStatus.QUEUED, Job.dispatched_at < as_utc(passed) - grace))
    if last_start is None or as_utc(last_start) < bound:
        lost.append(and_(Job.status == JobStatus.QUEUED, Job.dispatched_at < bound))
    rows = session.execute(
        select(Job.job_id, Job.item_id, Job.dispatches)
        .where(Job.kind == "embed", Job.status.in_(UNFINISHED), or_(*lost))
        .order_by(Job.created_at)
    )
    return [(job_id, str(item_id), int(n or 0)) for job_id, item_id, n in rows]


def _claim(session: Session, job_id: str, seen: int, now: datetime) -> bool:
    """Compare-and-set on the dispatch count: of several sweeps (API processes) that saw the same job, one sends.
    The job is queued again: a worker that had it is presumed dead, and its new message waits its turn."""
    claimed = session.execute(
        update(Job)
        .where(Job.job_id == job_id, Job.dispatches == seen, Job.status.in_(UNFINISHED))
        .values(dispatched_at=now, dispatches=seen + 1, status=JobStatus.QUEUED)
    )
    session.commit()
    return cast("CursorResult[Any]", claimed).rowcount == 1


def resend_embeds(rt: Runtime, dispatcher: Dispatcher, policy: SweepPolicy, *, everything: bool = False) -> int:
    """Send again the embedding jobs whose message is presumed lost (`everything`: every unfinished one, at the
    start of the one process that owns the queue); a job sent `max_dispatches` times fails. Returns the jobs sent."""
    now, sent = utcnow(), 0
    with rt.session() as session:
        if everything:
            found = session.execute(
                select(Job.job_id, Job.item_id, Job.dispatches).where(Job.kind == "embed", Job.status.in_(UNFINISHED))
            ).all()
            due = [(job_id, str(item_id), int(n or 0)) for job_id, item_id, n in found]
        else:
            due = lost_embeds(session, policy, now)
        for job_id, item_id, seen in due:
            if seen >= policy.max_dispatches:
                job = session.get(Job, job_id)
                if job is not None and not JobStatus(job.status).finished:
                    reason = f"sent {seen} times without finishing (messages lost, or workers died on it)"
                    finish_job(job, JobStatus.FAILED, reason)
                    session.commit()
                continue
            if not _claim(session, job_id, seen, now):
                continue  # another sweep sent it, or it finished meanwhile
            try:
                dispatcher.embed(item_id, job_id)
            except BrokerUnavailableError as exc:  # not sent after all: the count goes back, try on a later tick
                unsent = update(Job).where(Job.job_id == job_id, Job.dispatches == seen + 1)
                session.execute(unsent.values(dispatches=seen))
                session.commit()
                log.warning("broker unreachable, %d jobs wait for it: %s", len(due) - sent, exc)
                break
            sent += 1
    return sent


def resend_unfinished(rt: Runtime, dispatcher: Dispatcher, policy: SweepPolicy) -> int:
    """At the start of the process that owns the embedded queue: send every unfinished job again."""
    with rt.session() as session:
        reembeds = [job_id for job_id, _ in running_reembeds(session)]
    sent = resend_embeds(rt, dispatcher, policy, everything=True)
    for job_id in reembeds:
        try:
            resume(rt, dispatcher, job_id)
        except reembed.JobConflictError as exc:
            log.warning("%s", exc)
    return sent + len(reembeds)


def sweep(rt: Runtime, dispatcher: Dispatcher, policy: SweepPolicy) -> int:
    """One pass of the outbox: embedding jobs presumed lost are sent again, and the pending chunks of re-embedding
    jobs that show no progress for `reembed_stall_seconds` (duplicates are harmless: tasks are idempotent, and a
    chunk only embeds items the database still records as pending). Returns the jobs sent again."""
    sent = resend_embeds(rt, dispatcher, policy)
    if sent:
        log.warning("re-sent %d embedding jobs whose messages were presumed lost", sent)
    for job_id in reembed.stalled_jobs(rt, policy.reembed_stall_seconds):
        try:
            chunks = resume(rt, dispatcher, job_id)
        except reembed.JobConflictError as exc:  # finished meanwhile, or failed as unresumable
            log.warning("%s", exc)
            continue
        sent += 1
        log.warning(
            "re-embedding job %s made no progress for %ss: re-sent %d chunks",
            job_id,
            policy.reembed_stall_seconds,
            chunks,
        )
    return sent


def supervise(rt: Runtime, dispatcher: Dispatcher, policy: SweepPolicy, stop: threading.Event) -> None:
    """Until `stop`: sweep every `tick_seconds`. Every API process runs one; the claims keep them from sending a
    job twice."""
    while not stop.wait(policy.tick_seconds):
        try:
            sweep(rt, dispatcher, policy)
        except Exception:  # the broker or database may be down for a while; try again on the next tick
            log.exception("job sweep failed")
