"""The job outbox: which unfinished embedding jobs are presumed lost and sent again, the claim that keeps two
sweeps from sending one job twice, the dispatch cap, the schema upgrade, the one error classification, and the claim
of an embedding batch."""

from __future__ import annotations

import sqlite3
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import event, update
from sqlalchemy.exc import OperationalError

from entrypoints.runtime import build_runtime
from services import db, jobs
from services.db import Job, make_engine, utcnow
from services.dispatch import BrokerUnavailableError, is_transient
from services.embedding import claim_batch, release
from services.runtime import Runtime
from thaw.errors import InvalidInputError, UnavailableError
from thaw.schema import JobStatus
from thaw.settings import Settings

POLICY = jobs.SweepPolicy(resend_seconds=60, max_dispatches=3, reembed_stall_seconds=60)


class Recorder:
    """A dispatcher that records what it is asked to send (or refuses, like an unreachable broker)."""

    def __init__(self, down: bool = False) -> None:
        self.sent: list[tuple[str, str]] = []
        self.down = down

    def embed(self, item_id: str, job_id: str) -> None:
        if self.down:
            raise BrokerUnavailableError("connection refused")
        self.sent.append((item_id, job_id))

    def reembed_chunks(self, job_id: str, chunks: list[list[str]]) -> None:
        raise AssertionError("no re-embedding job in these tests")

    def batch_chunks(self, job_id: str, chunks: list[list[str]]) -> None:
        raise AssertionError("no batch job in these tests")


@pytest.fixture()
def rt(tmp_path: Path) -> Runtime:
    return build_runtime(Settings(data_dir=tmp_path))


def add_job(
    rt: Runtime,
    job_id: str,
    status: JobStatus,
    sent_ago: float | None,
    started_ago: float | None = None,
    dispatches: int = 1,
) -> None:
    now = utcnow()
    ago = lambda s: None if s is None else now - timedelta(seconds=s)  # noqa: E731
    with rt.session() as session:
        session.add(
            Job(
                job_id=job_id,
                kind="embed",
                item_id=f"item-{job_id}",
                status=status,
                dispatched_at=ago(sent_ago),
                started_at=ago(started_ago),
                dispatches=dispatches,
                attempts=0 if started_ago is None else 1,
            )
        )
        session.commit()


def test_idle_workers_and_a_long_queued_job_mean_its_message_was_lost(rt: Runtime) -> None:
    add_job(rt, "old", JobStatus.QUEUED, sent_ago=120)
    add_job(rt, "fresh", JobStatus.QUEUED, sent_ago=10)  # may still be in the queue
    add_job(rt, "done", JobStatus.SUCCEEDED, sent_ago=500, started_ago=500)
    rec = Recorder()
    assert jobs.sweep(rt, rec, POLICY) == 1
    assert rec.sent == [("item-old", "old")]
    assert jobs.sweep(rt, rec, POLICY) == 0  # just sent: not due again
    with rt.session() as session:
        job = session.get(Job, "old")
        assert job is not None and job.dispatches == 2


def test_a_queued_job_that_later_jobs_overtook_is_sent_again(rt: Runtime) -> None:
    add_job(rt, "skipped", JobStatus.QUEUED, sent_ago=30)
    add_job(rt, "later", JobStatus.RUNNING, sent_ago=20, started_ago=1)  # workers busy: not idle
    add_job(rt, "same-time", JobStatus.QUEUED, sent_ago=20)  # within the grace of the started one
    add_job(rt, "long-running", JobStatus.RUNNING, sent_ago=200, started_ago=100)  # longer than any task
    rec = Recorder()
    jobs.sweep(rt, rec, POLICY)
    assert sorted(job for _, job in rec.sent) == ["long-running", "skipped"]
    with rt.session() as session:  # its worker is presumed dead: queued again, its new message waits its turn
        job = session.get(Job, "long-running")
        assert job is not None and job.status == JobStatus.QUEUED and job.dispatches == 2
    assert jobs.sweep(rt, rec, POLICY) == 0


def test_a_re_sent_job_taken_from_its_first_message_says_nothing_about_the_queue(rt: Runtime) -> None:
    add_job(rt, "waiting", JobStatus.QUEUED, sent_ago=30)  # still behind the re-sent job's first message
    add_job(rt, "re-sent", JobStatus.RUNNING, sent_ago=5, started_ago=1, dispatches=2)
    rec = Recorder()
    assert jobs.sweep(rt, rec, POLICY) == 0 and rec.sent == []


def test_the_claim_lets_one_of_two_sweeps_send(rt: Runtime) -> None:
    add_job(rt, "j", JobStatus.QUEUED, sent_ago=120)
    with rt.session() as first, rt.session() as second:
        seen_first = jobs.lost_embeds(first, POLICY, utcnow())
        seen_second = jobs.lost_embeds(second, POLICY, utcnow())
        assert seen_first == seen_second == [("j", "item-j", 1)]
        assert jobs._claim(first, "j", 1, utcnow()) is True
        assert jobs._claim(second, "j", 1, utcnow()) is False


def test_a_job_sent_too_often_fails_with_the_reason(rt: Runtime) -> None:
    add_job(rt, "j", JobStatus.QUEUED, sent_ago=120, dispatches=3)
    rec = Recorder()
    assert jobs.sweep(rt, rec, POLICY) == 0 and rec.sent == []
    with rt.session() as session:
        job = session.get(Job, "j")
        assert job is not None and job.status == JobStatus.FAILED
        assert job.error is not None and "sent 3 times without finishing" in job.error


def test_an_unreachable_broker_costs_no_dispatch(rt: Runtime) -> None:
    add_job(rt, "j", JobStatus.QUEUED, sent_ago=None, dispatches=0)  # recorded while the broker was down
    assert jobs.sweep(rt, Recorder(down=True), POLICY) == 0
    with rt.session() as session:
        job = session.get(Job, "j")
        assert job is not None and job.dispatches == 0 and job.status == JobStatus.QUEUED
        session.execute(update(Job).values(dispatched_at=None))
        session.commit()
    rec = Recorder()
    assert jobs.sweep(rt, rec, POLICY) == 1 and rec.sent == [("item-j", "j")]


def test_an_upload_is_accepted_when_the_broker_is_down_and_sent_later(rt: Runtime) -> None:
    from indexer.collections import activate, ensure_collections
    from services import items
    from tests.helpers import plant_version

    plant_version(rt.registry.root, "v1", dim=4, embedding_dims={"text": 4}, modalities=["text"])
    ensure_collections(rt.index, "v1", 4, {"text": 4})
    activate(rt.index, "v1")  # uploads need a served model
    job_id = items.submit(rt, Recorder(down=True), "x1", {"title": "a night in the city"}, {})
    with rt.session() as session:
        job = session.get(Job, job_id)
        assert job is not None and job.status == JobStatus.QUEUED and job.dispatches == 1
        session.execute(update(Job).values(dispatched_at=utcnow() - timedelta(seconds=120)))
        session.commit()
    rec = Recorder()
    assert jobs.sweep(rt, rec, POLICY) == 1 and rec.sent == [("x1", job_id)]


def test_columns_missing_from_an_older_database_are_added(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as conn:
        conn.execute(
            "CREATE TABLE jobs (job_id VARCHAR(32) PRIMARY KEY, kind VARCHAR(16), item_id VARCHAR(128), "
            "revision INTEGER, status VARCHAR(16), error TEXT, attempts INTEGER, model_version VARCHAR(64), "
            "created_at DATETIME, started_at DATETIME, finished_at DATETIME)"
        )
        conn.execute("INSERT INTO jobs (job_id, kind, status) VALUES ('a', 'embed', 'queued')")
    engine = make_engine(f"sqlite:///{path}")
    make_engine(f"sqlite:///{path}")  # a second start changes nothing
    from sqlalchemy.orm import Session

    with Session(engine) as session:
        job = session.get(Job, "a")
        assert job is not None and job.dispatches == 0 and job.dispatched_at is None


def test_errors_are_classified_once() -> None:
    def raised_from(cause: Exception) -> Exception:
        try:
            try:
                raise cause
            except Exception as exc:
                raise RuntimeError("wrapped") from exc
        except RuntimeError as outer:
            return outer

    assert is_transient(ConnectionRefusedError())
    assert is_transient(UnavailableError("no model served"))
    assert is_transient(OperationalError("select", {}, sqlite3.OperationalError("database is locked")))
    assert is_transient(raised_from(httpx.ConnectError("refused")))
    assert not is_transient(TypeError("cannot encode a lone surrogate"))
    assert not is_transient(InvalidInputError("bad image"))
    assert not is_transient(RecursionError())


def test_embedded_mode_sends_a_lost_job_again_and_it_ends(tmp_path: Path) -> None:
    """The embedded runtime runs the sweep too: a job recorded while the service runs but never sent (a lost
    message) is sent and ends, here failed with its reason (the planted version has no weights), not retried."""
    from fastapi.testclient import TestClient

    from entrypoints.runtime import create_app
    from indexer.collections import activate, ensure_collections
    from services.db import ItemRecord
    from tests.helpers import plant_version

    settings = Settings(data_dir=tmp_path, job_resend_seconds=30, task_max_retries=0)
    plant_version(settings.models_dir, "v1", dim=8, embedding_dims={"text": 384})
    runtime = build_runtime(settings)
    ensure_collections(runtime.index, "v1", 8, {"text": 384})
    activate(runtime.index, "v1")
    with TestClient(create_app(settings, runtime=runtime)) as client:
        with runtime.session() as session:
            session.add(ItemRecord(item_id="lost", metadata_={"title": "a lost message"}, media={}))
            session.add(Job(job_id="lost-job", kind="embed", item_id="lost", status=JobStatus.QUEUED))
            session.commit()
        deadline = time.monotonic() + 120  # a bound on waiting, not a performance claim
        while (job := client.get("/jobs/lost-job").json())["status"] not in ("succeeded", "failed"):
            assert time.monotonic() < deadline, job
            time.sleep(0.2)
    assert job["status"] == "failed" and job["error"].startswith("TypeError"), job  # permanent: no retry


def test_a_task_claims_its_job_and_the_oldest_queued_ones_that_are_due(rt: Runtime) -> None:
    for k in range(6):
        add_job(rt, f"j{k}", JobStatus.QUEUED, sent_ago=10 - k)
    add_job(rt, "later", JobStatus.QUEUED, sent_ago=-30)  # a retry due in 30 s
    assert claim_batch(rt, "j3", 3) == ["j3", "j0", "j1"]
    with rt.session() as session:
        batch = {j.job_id: j.batch_id for j in session.query(Job).filter(Job.status == JobStatus.RUNNING)}
    assert batch == {"j0": "j3", "j1": "j3", "j3": "j3"}
    # the message of a job another batch holds takes the oldest queued jobs instead, led by the first
    assert claim_batch(rt, "j1", 2) == ["j2", "j4"]
    with rt.session() as session:
        session.execute(update(Job).where(Job.job_id == "j4").values(status=JobStatus.SUCCEEDED))
        session.commit()
    assert claim_batch(rt, "j4", 3) == ["j5"]  # so does a finished job's; the retry is not due yet
    assert claim_batch(rt, None, 3) == []


def test_a_leader_message_that_comes_back_claims_its_batch_again(rt: Runtime) -> None:
    """Its worker died mid-batch: the redelivered message of the leader takes back the jobs the batch held."""
    for k in range(3):
        add_job(rt, f"j{k}", JobStatus.QUEUED, sent_ago=10 - k)
    assert claim_batch(rt, "j0", 8) == ["j0", "j1", "j2"]
    add_job(rt, "new", JobStatus.QUEUED, sent_ago=1)
    claimed = claim_batch(rt, "j0", 8)
    assert claimed == ["j0", "j1", "j2", "new"]
    with rt.session() as session:
        assert [j.attempts for j in session.query(Job).order_by(Job.job_id)] == [2, 2, 2, 1]
    release(rt, claimed)  # a transient failure: back in the queue, for any batch
    assert claim_batch(rt, "new", 2) == ["new", "j0"]


def test_an_upload_gets_a_message_of_its_own_until_enough_queued_jobs_were_sent(rt: Runtime) -> None:
    for k in range(db.WAKEUPS):
        with rt.session() as session:
            assert not db.covered(session)
        add_job(rt, f"j{k}", JobStatus.QUEUED, sent_ago=1)
    add_job(rt, "stale", JobStatus.QUEUED, sent_ago=db.WAKEUP_SECONDS + 1)
    with rt.session() as session:
        assert db.covered(session)
        session.execute(update(Job).where(Job.job_id == "j0").values(status=JobStatus.RUNNING))
        session.commit()
        assert not db.covered(session)  # a taken message covers nothing; nor does one sent long ago


def test_a_batch_finds_its_jobs_by_key_whatever_the_backlog(rt: Runtime) -> None:
    """The statements of an embedding batch that name their jobs (the claim, the finish, giving jobs back) and the
    read of the running re-embeddings go by primary key on SQLite, not through the status index, which holds every
    queued job: a batch must not cost as much as the queue is long. Checked on SQLite's own query plans."""
    for k in range(40):
        add_job(rt, f"q{k:02d}", JobStatus.QUEUED, sent_ago=30)
    plans: list[tuple[str, str]] = []

    @event.listens_for(rt.engine, "after_cursor_execute")
    def explain(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, many: bool) -> None:
        if statement.lstrip().upper().startswith(("SELECT", "UPDATE")) and " jobs" in statement:
            rows = cursor.connection.execute(f"EXPLAIN QUERY PLAN {statement}", parameters).fetchall()
            plans.append((statement, " / ".join(str(row[-1]) for row in rows)))

    claimed = claim_batch(rt, "q00", 32)
    release(rt, claimed[16:])
    with rt.session() as session:
        db.finish_jobs(session, claimed[:16], JobStatus.SUCCEEDED)
        db.running_reembeds(session)
        session.commit()
    event.remove(rt.engine, "after_cursor_execute", explain)
    assert len(claimed) == 32
    keyed = [(sql, plan) for sql, plan in plans if "jobs.job_id IN" in sql or "FROM reembed_jobs" in sql]
    assert len(keyed) >= 4, plans  # the claim's marks, the release, the finish, the re-embeddings' read
    for sql, plan in keyed:
        assert "ix_jobs_status" not in plan and "SCAN jobs" not in plan, (sql, plan)
