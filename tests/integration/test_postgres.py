"""The database path compose.yaml uses, on a real PostgreSQL server: an upload through the live API becomes servable
by a real worker (and a failing one fails with its reason), seen in /metrics and in the JSON job log lines; the schema
upgrade of an older database; the sweep's compare-and-set claim under concurrent sweeps."""

from __future__ import annotations

import io
import json
import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import inspect
from sqlalchemy.orm import Session

from services import jobs
from services.db import Job, make_engine, utcnow
from services.media_store import MediaStore
from tests.helpers import free_port
from tests.integration.conftest import ApiServer, PostgresServer, Worker, make_service_env, wait_job
from tests.unit.test_report_sql import check_sql_report
from thaw.schema import JobStatus

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def pg_env(
    tmp_path_factory: pytest.TempPathFactory, trained: tuple[Any, Any, Any], redis_url: str, postgres: PostgresServer
) -> dict[str, str]:
    broker = redis_url.rsplit("/", 1)[0] + "/3"  # a queue of its own: other modules' API sweeps send to /0
    data_dir = tmp_path_factory.mktemp("thaw-pg")
    env = make_service_env(data_dir, trained, broker, postgres.database("service"), warm_items=24)
    return {**env, "THAW_LOG_JSON": "true", "THAW_LOG_LEVEL": "INFO"}


@pytest.fixture(scope="module")
def logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("logs")


@pytest.fixture(scope="module")
def pg_client(pg_env: dict[str, str], logs: Path) -> Iterator[httpx.Client]:
    server = ApiServer(pg_env, log=logs / "api.log")
    with httpx.Client(base_url=server.url, timeout=60) as client:
        yield client
    server.stop()


def png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (48, 48), (30, 140, 60)).save(buf, format="PNG")
    return buf.getvalue()


def json_lines(path: Path) -> list[dict[str, Any]]:
    """Every line a process logged: each must be one JSON object (libraries' progress bars, which write to the
    terminal directly, are not log lines)."""
    lines = [line for line in path.read_text().splitlines() if not line.startswith("Loading weights")]
    return [json.loads(line) for line in lines if line.strip()]


def samples(client: httpx.Client) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return parse(client.get("/metrics").text)


def parse(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_an_upload_becomes_servable_on_postgres_seen_in_metrics_and_logs(
    pg_env: dict[str, str], pg_client: httpx.Client, logs: Path, trained: tuple[Any, Any, Any]
) -> None:
    client = pg_client
    ok = client.post("/items", json={"item_id": "pg-text", "metadata": {"title": "Rocket galaxy orbit"}})
    assert ok.status_code == 202, ok.text
    bad = client.post("/items", data={"item_id": "pg-broken", "metadata": "{}"}, files={"image": ("a.png", png())})
    assert bad.status_code == 202, bad.text
    before = samples(client)
    depth = ("thaw_job_queue_depth", (("kind", "embed"), ("status", "queued")))
    assert before[depth] == 2  # no worker yet: both wait
    MediaStore(Path(pg_env["THAW_DATA_DIR"]) / "media").delete("pg-broken")  # its original is lost before it runs

    metrics_port = free_port()
    worker = Worker({**pg_env, "THAW_WORKER_METRICS_PORT": str(metrics_port)}, "pg", log=logs / "worker.log")
    try:
        done = wait_job(client, ok.json()["job_id"], timeout=90)
        failed = wait_job(client, bad.json()["job_id"], timeout=90)
        encoded = parse(httpx.get(f"http://127.0.0.1:{metrics_port}/metrics").text)
    finally:
        worker.stop()
    assert encoded[("thaw_encode_seconds_count", (("modality", "text"),))] == 1  # the worker encoded one text
    assert done["status"] == "succeeded", done
    assert failed["status"] == "failed" and "missing from the media store" in failed["error"], failed
    item = client.get("/items/pg-text").json()
    assert item["indexed"] is True and item["modalities"] == ["text"]
    assert len(client.get("/items/pg-text/similar", params={"k": 3}).json()["items"]) == 3

    after = samples(client)
    assert after[depth] == 0
    assert after[("thaw_job_queue_depth", (("kind", "embed"), ("status", "running")))] == 0
    assert after[("thaw_jobs_finished", (("kind", "embed"), ("status", "succeeded")))] == 1
    assert after[("thaw_jobs_finished", (("kind", "embed"), ("status", "failed")))] == 1
    assert after[("thaw_jobs_finished", (("kind", "reembed"), ("status", "failed")))] == 0
    assert after[("thaw_model_info", (("version", trained[2].version),))] == 1
    assert ("thaw_encode_seconds_count", (("modality", "text"),)) not in after  # encoded in the worker, not here

    worker_lines = json_lines(logs / "worker.log")
    mine = {(line.get("job_id"), line.get("event")): line for line in worker_lines if line["logger"] == "thaw.jobs"}
    started, succeeded = mine[(done["job_id"], "started")], mine[(done["job_id"], "succeeded")]
    assert started["item_id"] == "pg-text" and started["attempt"] == 1 and started["level"] == "INFO"
    assert 0 <= succeeded["duration_s"] < 90 and succeeded["kind"] == "embed"
    gone = mine[(failed["job_id"], "failed")]
    assert gone["level"] == "WARNING" and gone["reason"] == failed["error"] and gone["item_id"] == "pg-broken"
    queued = [line for line in json_lines(logs / "api.log") if line.get("event") == "queued"]
    assert {line["job_id"] for line in queued} == {done["job_id"], failed["job_id"]}


def test_the_schema_revisions_add_missing_columns_and_indexes_on_postgres(postgres: PostgresServer) -> None:
    import psycopg

    url = postgres.database("older")
    with psycopg.connect(url.replace("postgresql+psycopg", "postgresql"), autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE jobs (job_id VARCHAR(32) PRIMARY KEY, kind VARCHAR(16), item_id VARCHAR(128), "
            "revision INTEGER, status VARCHAR(16), error TEXT, attempts INTEGER, model_version VARCHAR(64), "
            "created_at TIMESTAMPTZ, started_at TIMESTAMPTZ, finished_at TIMESTAMPTZ)"
        )
        conn.execute("INSERT INTO jobs (job_id, kind, status) VALUES ('a', 'embed', 'queued')")
    engine = make_engine(url)
    make_engine(url).dispose()  # a second start changes nothing
    assert {"dispatched_at", "dispatches"} <= {c["name"] for c in inspect(engine).get_columns("jobs")}
    joins = {i["name"]: i["column_names"] for i in inspect(engine).get_indexes("interactions")}
    assert joins["ix_interactions_rec_user_item"] == ["rec_id", "user_id", "item_id"]
    with Session(engine) as session:
        job = session.get(Job, "a")
        assert job is not None and job.dispatches == 0 and job.dispatched_at is None
    engine.dispose()


def test_of_concurrent_sweeps_one_claims_a_lost_job_on_postgres(postgres: PostgresServer) -> None:
    engine = make_engine(postgres.database("claims"))
    with Session(engine) as session:
        sent = utcnow() - timedelta(seconds=120)
        session.add(Job(job_id="j", item_id="item-j", status=JobStatus.QUEUED, dispatched_at=sent, dispatches=1))
        session.commit()
    policy = jobs.SweepPolicy(resend_seconds=60, max_dispatches=3, reembed_stall_seconds=60)
    sweeps = 6
    gate, won = threading.Barrier(sweeps), []

    def sweep() -> None:
        with Session(engine) as session:
            due = jobs.lost_embeds(session, policy, utcnow())
            session.commit()  # end the read, as each sweep's own transaction would
            gate.wait(10)
            won.extend(jobs._claim(session, job_id, seen, utcnow()) for job_id, _, seen in due)

    threads = [threading.Thread(target=sweep) for _ in range(sweeps)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(won) == [False] * (sweeps - 1) + [True]
    with Session(engine) as session:
        job = session.get(Job, "j")
        assert job is not None and job.dispatches == 2 and job.status == JobStatus.QUEUED
    engine.dispose()


def test_processes_starting_at_once_create_the_schema_once_on_postgres(postgres: PostgresServer) -> None:
    url = postgres.database("fresh")
    starts = 6
    gate, errors, engines = threading.Barrier(starts), [], []

    def start() -> None:
        gate.wait(10)
        try:
            engines.append(make_engine(url))
        except Exception as exc:  # what compose's API and worker processes would die of
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(starts)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == [] and len(engines) == starts
    assert "jobs" in inspect(engines[0]).get_table_names()
    for engine in engines:
        engine.dispose()


@pytest.mark.parametrize("kind", ["ab", "interleaving"])
def test_experiment_reports_aggregate_in_sql_on_postgres(postgres: PostgresServer, kind: str) -> None:
    check_sql_report(postgres.database(f"reports_{kind}"), kind)
