"""Operations: /metrics reads the jobs' queue depth and outcomes from the database and the served version from the
index at scrape time; log lines come as THAW_LOG_LEVEL and THAW_LOG_JSON say, the job lifecycle among them."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from entrypoints.logs import configure_logging
from entrypoints.runtime import build_runtime, create_app
from indexer.collections import activate, ensure_collections
from services.db import Job, finish_job, log_job, utcnow
from tests.helpers import plant_version
from thaw.schema import JobStatus
from thaw.settings import Settings


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """The handler these tests install writes to their captured stderr: it goes with them."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers, root.level = handlers, level


def scrape(client: TestClient) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = client.get("/metrics").text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_metrics_count_jobs_by_kind_and_status_and_name_the_served_version(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    rt = build_runtime(settings)
    client = TestClient(create_app(settings, runtime=rt))
    empty = scrape(client)
    assert empty[("thaw_job_queue_depth", (("kind", "embed"), ("status", "queued")))] == 0
    assert not [k for k in empty if k[0] == "thaw_model_info"]  # nothing served yet
    planted = {("embed", "queued"): 2, ("embed", "running"): 1, ("embed", "succeeded"): 3, ("reembed", "failed"): 1}
    with rt.session() as session:
        for (kind, status), n in planted.items():
            session.add_all(Job(kind=kind, item_id=f"{kind}-{i}", status=status) for i in range(n))
        session.commit()
    plant_version(rt.registry.root, "v7", dim=3, embedding_dims={"text": 3}, modalities=["text"])
    ensure_collections(rt.index, "v7", 3, {"text": 3})
    activate(rt.index, "v7")
    got = scrape(client)
    for kind in ("embed", "reembed"):
        for status in JobStatus:
            name = "thaw_job_queue_depth" if status in ("queued", "running") else "thaw_jobs_finished"
            assert got[(name, (("kind", kind), ("status", status.value)))] == planted.get((kind, status.value), 0)
    assert got[("thaw_model_info", (("version", "v7"),))] == 1
    assert "# TYPE thaw_encode_seconds histogram" in client.get("/metrics").text
    rt.close()


def test_json_log_lines_parse_and_carry_the_job_fields(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("INFO", json_lines=True)
    job = Job(job_id="j1", kind="embed", item_id="song-1", attempts=1, created_at=utcnow())
    log_job(job, "queued")
    job.started_at = utcnow() - timedelta(seconds=2)
    finish_job(job, JobStatus.FAILED, "image original is missing")
    logging.getLogger("thaw.test").debug("below the level: not written")
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert [(line["event"], line["level"]) for line in lines] == [("queued", "INFO"), ("failed", "WARNING")]
    failed = lines[1]
    assert failed["job_id"] == "j1" and failed["item_id"] == "song-1" and failed["kind"] == "embed"
    assert failed["reason"] == "image original is missing" and 2 <= failed["duration_s"] < 10
    assert failed["logger"] == "thaw.jobs" and "j1 failed" in failed["message"] and failed["time"].endswith("+00:00")
    assert job.status == JobStatus.FAILED and job.finished_at is not None


def test_plain_log_lines_and_the_level_setting(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("THAW_LOG_LEVEL", "warning")
    settings = Settings()
    assert settings.log_level == "WARNING" and settings.log_json is False
    configure_logging(settings.log_level, settings.log_json)
    log_job(Job(job_id="j2", kind="embed", item_id="x"), "queued")  # INFO: below WARNING
    logging.getLogger("thaw.test").warning("disk %s", "full")
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].endswith("WARNING thaw.test: disk full")
    monkeypatch.setenv("THAW_LOG_LEVEL", "LOUD")
    with pytest.raises(ValueError, match="THAW_LOG_LEVEL must be one of DEBUG, INFO"):
        Settings()


def test_an_earlier_basic_config_does_not_print_each_line_twice(capsys: pytest.CaptureFixture[str]) -> None:
    logging.basicConfig(level=logging.WARNING, force=True)  # what the CLI does before it builds the app
    configure_logging("INFO", json_lines=True)
    configure_logging("INFO", json_lines=True)  # an entry point reached twice
    logging.getLogger("thaw.test").info("once")
    err = capsys.readouterr().err.splitlines()
    assert [json.loads(line)["message"] for line in err] == ["once"]


def test_metrics_answer_while_the_database_is_unreachable(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    rt = build_runtime(settings)
    client = TestClient(create_app(settings, runtime=rt))
    (tmp_path / "services.db").unlink()
    (tmp_path / "services.db").mkdir()  # a directory where the database file was: every connection fails
    rt.engine.dispose()
    resp = client.get("/metrics")
    assert resp.status_code == 200 and "thaw_http_requests_total" in resp.text
    assert "thaw_job_queue_depth" not in resp.text
    rt.close()


def test_the_embedded_worker_logs_each_job_s_life(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from thaw.client import wait_job

    settings = Settings(data_dir=tmp_path)
    rt = build_runtime(settings)
    plant_version(rt.registry.root, "v1", dim=3, embedding_dims={"text": 3}, modalities=["text"])  # no weights
    ensure_collections(rt.index, "v1", 3, {"text": 3})
    activate(rt.index, "v1")
    caplog.set_level(logging.INFO, logger="thaw.jobs")
    with TestClient(create_app(settings, runtime=rt)) as client:
        resp = client.post("/items", json={"item_id": "e1", "metadata": {"title": "a night in the city"}})
        job = wait_job(client, resp.json()["job_id"], timeout=60)
    lines = [r for r in caplog.records if r.name == "thaw.jobs"]
    assert [(r.job_id, r.event) for r in lines] == [(job["job_id"], e) for e in ("queued", "started", "failed")]
    assert lines[-1].reason == job["error"] and lines[-1].item_id == "e1" and lines[-1].levelno == logging.WARNING
