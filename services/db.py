"""Services: the records of truth beside the index — items as uploaded, jobs and their outcome, interactions,
experiments and exposures (SQLAlchemy)."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    Connection,
    DateTime,
    Engine,
    Float,
    Index,
    Integer,
    Row,
    String,
    Text,
    create_engine,
    event,
    func,
    select,
    text,
    update,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from thaw.schema import UNFINISHED, ItemStatus, JobStatus


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    pass


class ItemRecord(Base):
    """An item as uploaded: metadata and which originals the media store holds. `revision` orders re-uploads."""

    __tablename__ = "items"
    item_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    metadata_: Mapped[dict[str, Any]] = mapped_column("metadata", JSON, default=dict)
    media: Mapped[dict[str, str]] = mapped_column(JSON, default=dict)  # modality -> sha256 of the original
    revision: Mapped[int] = mapped_column(Integer, default=1)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (Index("ix_jobs_status_created_at", "status", "created_at"),)
    job_id: Mapped[str] = mapped_column(String(32), primary_key=True, default=lambda: uuid.uuid4().hex)
    kind: Mapped[str] = mapped_column(String(16), default="embed")
    item_id: Mapped[str | None] = mapped_column(String(128), index=True)
    revision: Mapped[int] = mapped_column(Integer, default=1)
    status: Mapped[str] = mapped_column(String(16), default=JobStatus.QUEUED)
    error: Mapped[str | None] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    model_version: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # The outbox: when the job's message was last sent (or is due, for a retry) and how often it was sent.
    dispatched_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), index=True)
    dispatches: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # The embedding job whose task claimed this one into its batch (itself for the batch's leader); None until then.
    batch_id: Mapped[str | None] = mapped_column(String(32), index=True)


class ReembedJob(Base):
    """What a re-embedding job (the `jobs` row of kind "reembed" with the same id) was asked to do."""

    __tablename__ = "reembed_jobs"
    job_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    target_version: Mapped[str] = mapped_column(String(64))
    source_version: Mapped[str | None] = mapped_column(String(64))  # served when the job started
    filter: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    total: Mapped[int | None] = mapped_column(Integer)  # None until the item list is recorded
    chunk_size: Mapped[int] = mapped_column(Integer)
    max_failed_share: Mapped[float] = mapped_column(Float)
    keep_versions: Mapped[int] = mapped_column(Integer)
    switched: Mapped[bool] = mapped_column(Boolean, default=False)
    touched_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)  # last sign of life


class ReembedItem(Base):
    """One item of a re-embedding job: pending -> done | failed (with the reason); resume and counts read these."""

    __tablename__ = "reembed_items"
    __table_args__ = (Index("ix_reembed_items_job_status", "job_id", "status"),)
    job_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    item_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    status: Mapped[str] = mapped_column(String(16), default=ItemStatus.PENDING)
    error: Mapped[str | None] = mapped_column(Text)
    content_hash: Mapped[str | None] = mapped_column(String(64))
    skipped: Mapped[bool] = mapped_column(Boolean, default=False)  # unchanged content already in the version
    updated_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class Interaction(Base):
    __tablename__ = "interactions"
    # Events join exposures by rec_id, user and item (experiment reports); rec_id alone is its prefix.
    __table_args__ = (Index("ix_interactions_rec_user_item", "rec_id", "user_id", "item_id"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    user_id: Mapped[str] = mapped_column(String(128), index=True)
    item_id: Mapped[str] = mapped_column(String(128), index=True)
    weight: Mapped[float] = mapped_column(Float, default=1.0)
    kind: Mapped[str] = mapped_column(String(32), default="interaction")
    rec_id: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Experiment(Base):
    """An online experiment: arms (policy, parameters, traffic share) as thaw.experiments.spec defines them."""

    __tablename__ = "experiments"
    experiment_id: Mapped[str] = mapped_column(String(64), primary_key=True, default=lambda: uuid.uuid4().hex[:16])
    name: Mapped[str] = mapped_column(String(128))
    kind: Mapped[str] = mapped_column(String(16), default="ab")
    salt: Mapped[str] = mapped_column(String(64))
    control: Mapped[str] = mapped_column(String(64))
    arms: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    start_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    end_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Exposure(Base):
    """One served list in an experiment: who got which arm (None in an interleaving experiment, whose lists hold both
    arms' items). Its items are its `impressions`; events join by rec_id."""

    __tablename__ = "exposures"
    rec_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    experiment_id: Mapped[str] = mapped_column(String(64), index=True)
    arm: Mapped[str | None] = mapped_column(String(64))
    user_id: Mapped[str] = mapped_column(String(128), index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Impression(Base):
    """One item at one position of an exposure: the arm credited with it (the exposure's arm in A/B, the team that
    drafted the position in interleaving), its score and interactions, whether it was cold and its age (seconds
    since the item's first upload) when shown. Events join by (rec_id, item_id)."""

    __tablename__ = "impressions"
    rec_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    position: Mapped[int] = mapped_column(Integer, primary_key=True)
    item_id: Mapped[str] = mapped_column(String(128), index=True)
    arm: Mapped[str | None] = mapped_column(String(64))
    cold: Mapped[bool] = mapped_column(Boolean)
    age_s: Mapped[float | None] = mapped_column(Float)
    score: Mapped[float] = mapped_column(Float)
    interactions: Mapped[int] = mapped_column(Integer)


class ArmUser(Base):
    """A user's running counts in an arm of an experiment — lists served, impressions, cold impressions — raised with
    each list served: a report reads one row per arm and user instead of every exposure."""

    __tablename__ = "arm_users"
    experiment_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    arm: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[str] = mapped_column(String(128), primary_key=True, index=True)
    exposures: Mapped[int] = mapped_column(Integer)
    impressions: Mapped[int] = mapped_column(Integer)
    impressions_cold: Mapped[int] = mapped_column(Integer)


class ArmItem(Base):
    """An item an arm of an experiment has shown: when first, whether cold then and how old; whether ever shown cold,
    and warm. A report's coverage and new items read these; they hold no user data, so erasing a user leaves them."""

    __tablename__ = "arm_items"
    experiment_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    arm: Mapped[str] = mapped_column(String(64), primary_key=True)
    item_id: Mapped[str] = mapped_column(String(128), primary_key=True, index=True)
    first_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    first_cold: Mapped[bool] = mapped_column(Boolean)
    first_age_s: Mapped[float | None] = mapped_column(Float)
    shown_cold: Mapped[bool] = mapped_column(Boolean)
    shown_warm: Mapped[bool] = mapped_column(Boolean)


def as_utc(moment: datetime) -> datetime:
    """Datetimes read back from SQLite are naive: they were written in UTC."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


SCHEMA_LOCK = 0x7468_6177  # the advisory lock that serializes schema creation on PostgreSQL ("thaw")
JOB_LOG = logging.getLogger("thaw.jobs")  # the job lifecycle: queued, started, succeeded, failed


def unindexed(status: Any) -> Any:
    """A status column as an expression that no index serves, for statements whose rows are found otherwise (by
    primary key, by time). SQLite keeps no statistics, so for `status = ?` it would walk the status index (every
    queued job of a backlog) rather than the keys: a batch's statements would cost as much as the queue is long."""
    return status.concat("")


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
            unindexed(Job.status) == JobStatus.QUEUED,
            Job.dispatches > 0,
            Job.dispatched_at >= now - timedelta(seconds=WAKEUP_SECONDS),
            Job.dispatched_at <= now,
        )
    )
    return int(recent or 0) >= WAKEUPS


def log_job(job: Job | Row[*tuple[Any, ...]], event: str, *, level: int = logging.INFO) -> None:
    """One lifecycle line of a job (or of its JOB_ROW, as an UPDATE ... RETURNING gives it), with its id, kind, item,
    attempt, and (once it ended) the seconds since it started (or was queued) and the reason; the fields are also
    record attributes, so a JSON log line carries them."""
    if not JOB_LOG.isEnabledFor(level):
        return
    fields: dict[str, Any] = {"job_id": job.job_id, "kind": job.kind, "item_id": job.item_id, "event": event}
    text = f"job {job.job_id} {event}: {job.kind}" + (f" of {job.item_id}" if job.item_id else "")
    if job.attempts:  # embedding jobs count their tries; a re-embedding job's items are tried in chunks
        fields["attempt"] = job.attempts
    if job.finished_at is not None:
        since = job.started_at or job.created_at
        if since is not None:
            fields["duration_s"] = round((as_utc(job.finished_at) - as_utc(since)).total_seconds(), 3)
            text += f" in {fields['duration_s']}s"
        if job.error:
            fields["reason"] = job.error
            text += f" ({job.error})"
    JOB_LOG.log(level, "%s", text, extra=fields)


def mark_started(job: Job) -> None:
    """A queued job whose first chunk begins is running from now (the caller commits)."""
    if job.status == JobStatus.QUEUED:
        job.status, job.started_at = JobStatus.RUNNING, utcnow()
        log_job(job, "started")


def finish_job(job: Job, status: str, error: str | None = None) -> None:
    """Mark a job finished now (the caller commits) and log it: every job ends through here or finish_jobs."""
    job.status, job.error, job.finished_at = status, error, utcnow()
    log_job(job, status, level=logging.WARNING if status == "failed" else logging.INFO)


# What log_job reads of a job, for statements that return the rows they change (UPDATE ... RETURNING).
JOB_ROW = (Job.job_id, Job.kind, Job.item_id, Job.attempts, Job.created_at, Job.started_at, Job.finished_at, Job.error)


def finish_jobs(
    session: Session, job_ids: Sequence[str], status: str, error: str | None = None, **values: Any
) -> list[str]:
    """finish_job for many jobs in one statement (the unfinished ones of `job_ids`; `values` sets more columns);
    returns the ids it finished."""
    done = update(Job).where(Job.job_id.in_(job_ids), unindexed(Job.status).in_(UNFINISHED))
    rows = session.execute(done.values(status=status, error=error, finished_at=utcnow(), **values).returning(*JOB_ROW))
    level = logging.WARNING if status == "failed" else logging.INFO
    finished = []
    for row in rows:
        log_job(row, status, level=level)
        finished.append(row.job_id)
    return finished


SQLITE_MMAP_BYTES = 1 << 30


def make_engine(url: str) -> Engine:
    """An engine for any SQLAlchemy URL; SQLite gets WAL and a busy timeout so API and workers can share it, and reads
    through a memory map (reports probe large tables at random)."""
    is_sqlite = url.startswith("sqlite")
    engine = create_engine(url, connect_args={"timeout": 30} if is_sqlite else {}, pool_pre_ping=not is_sqlite)
    if is_sqlite:

        @event.listens_for(engine, "connect")
        def _pragmas(conn: Any, _record: Any) -> None:
            cur = conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute(f"PRAGMA mmap_size={SQLITE_MMAP_BYTES}")
            cur.close()

    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":  # API and worker processes start at once: one migrates, the others wait
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": SCHEMA_LOCK})
        migrate(conn)
    return engine


MIGRATIONS = Path(__file__).with_name("migrations")


def migrate(conn: Connection, revision: str = "head") -> None:
    """Bring the schema to `revision` with the revisions in services/migrations (Alembic), inside the caller's
    transaction. A new database gets every revision; one created before the schema had revisions gets the baseline's
    missing columns and indexes, then the rest; one at the newest revision is left as it is."""
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = conn
    command.upgrade(config, revision)


def history(session: Session, user_id: str, limit: int = 500) -> list[tuple[str, float]]:
    rows = session.execute(
        select(Interaction.item_id, Interaction.weight)
        .where(Interaction.user_id == user_id)
        .order_by(Interaction.id.desc())
        .limit(limit)
    )
    return [(item, float(w)) for item, w in rows]


def item_audience(session: Session, item_id: str) -> list[tuple[str, float]]:
    rows = session.execute(select(Interaction.user_id, Interaction.weight).where(Interaction.item_id == item_id))
    return [(user, float(w)) for user, w in rows]


def audiences(session: Session, item_ids: list[str]) -> dict[str, list[tuple[str, float]]]:
    """Each item's (user, weight) events, for many items in one query."""
    out: dict[str, list[tuple[str, float]]] = {i: [] for i in item_ids}
    for start in range(0, len(item_ids), 500):
        rows = session.execute(
            select(Interaction.item_id, Interaction.user_id, Interaction.weight).where(
                Interaction.item_id.in_(item_ids[start : start + 500])
            )
        )
        for item, user, w in rows:
            out[item].append((user, float(w)))
    return out


def interaction_counts(session: Session) -> dict[str, int]:
    rows = session.execute(select(Interaction.item_id, func.count()).group_by(Interaction.item_id))
    return {item: int(n) for item, n in rows}


def running_reembeds(session: Session) -> list[tuple[str, str]]:
    """(job id, target version) of the unfinished re-embedding jobs: uploads are embedded with those versions too."""
    targets = dict(session.execute(select(ReembedJob.job_id, ReembedJob.target_version)).tuples().all())
    if not targets:  # read on every embedding batch: its cost follows the re-embedding jobs, not the queue
        return []
    live = select(Job.job_id).where(Job.job_id.in_(targets), unindexed(Job.status).in_(UNFINISHED))
    return [(job_id, targets[job_id]) for job_id in session.scalars(live.order_by(Job.created_at))]
