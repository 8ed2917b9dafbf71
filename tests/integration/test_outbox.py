"""An acknowledged upload is never lost: 200 uploads to the API with Redis (no persistence) and two `celery worker`
processes; mid-way one worker is SIGKILLed and redis-server restarted, losing every queued and unacknowledged
message. The job sweep (the outbox) sends the lost jobs again; every acknowledged item ends up indexed exactly once."""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select

from indexer.collections import ITEMS, Index
from indexer.search import payloads
from indexer.shared import LOCK_NAME, SOCKET_NAME
from services.db import Job, make_engine
from tests.integration.conftest import ApiServer, RedisServer, Worker
from tests.integration.test_reembed import wait_for_workers

pytestmark = pytest.mark.integration
log = logging.getLogger(__name__)

N_UPLOADS = 200
RESEND_SECONDS = 20  # THAW_JOB_RESEND_SECONDS: a job running this long, or queued this long while workers idle
RECOVERY_TIMEOUT = 600  # generous: a bound on waiting, not a performance claim


@pytest.fixture()
def outbox_env(tmp_path: Path, service_env: dict[str, str]) -> Iterator[tuple[dict[str, str], RedisServer]]:
    (tmp_path / "redis").mkdir()
    redis = RedisServer(tmp_path / "redis")  # its own: the test restarts it
    data_dir = tmp_path / "thaw"
    # The trained, served model, for uploads of its own; not the socket and lock of the process owning the original.
    shutil.copytree(service_env["THAW_DATA_DIR"], data_dir, ignore=shutil.ignore_patterns(SOCKET_NAME, LOCK_NAME))
    env = {
        **service_env,
        "THAW_DATA_DIR": str(data_dir),
        "THAW_BROKER_URL": redis.url,
        "THAW_BROKER_VISIBILITY_TIMEOUT": "4",
        "THAW_JOB_RESEND_SECONDS": str(RESEND_SECONDS),
    }
    yield env, redis
    redis.stop()


def test_acknowledged_uploads_survive_a_killed_worker_and_a_broker_restart(
    outbox_env: tuple[dict[str, str], RedisServer],
) -> None:
    env, redis = outbox_env
    api = ApiServer(env)
    workers = [Worker(env, "a"), Worker(env, "b")]
    acknowledged: dict[str, str] = {}  # item id -> job id, for every 202
    refused: list[str] = []
    try:
        wait_for_workers(redis.url, 2)
        with httpx.Client(base_url=api.url, timeout=60) as client:
            for k in range(N_UPLOADS):
                item_id = f"outbox-{k:03d}"
                meta = {"title": f"outbox {k} lighthouse mystery", "genres": "Drama"}
                try:
                    resp = client.post("/items", json={"item_id": item_id, "metadata": meta})
                except httpx.HTTPError as exc:
                    refused.append(f"{item_id}: {exc!r}")
                    continue
                if resp.status_code == 202:
                    acknowledged[item_id] = resp.json()["job_id"]
                else:
                    refused.append(f"{item_id}: {resp.status_code} {resp.text[:200]}")
                if k == 60:
                    workers[0].kill()  # whatever it held is unacknowledged
                if k == 120:
                    redis.restart()  # no persistence: every queued and unacknowledged message is lost
            uploaded = time.monotonic()
            unfinished = set(acknowledged.values())
            while unfinished:
                assert time.monotonic() - uploaded < RECOVERY_TIMEOUT, f"{len(unfinished)} jobs never finished"
                for job_id in sorted(unfinished)[:50]:
                    if client.get(f"/jobs/{job_id}").json()["status"] in ("succeeded", "failed"):
                        unfinished.discard(job_id)
                time.sleep(0.5)
            recovery_s = time.monotonic() - uploaded
            statuses = {i: client.get(f"/jobs/{j}").json() for i, j in acknowledged.items()}
    finally:
        for w in workers:
            w.stop()
        api.stop()
    assert refused == [] and len(acknowledged) == N_UPLOADS, refused[:5]
    assert {i: s["status"] for i, s in statuses.items() if s["status"] != "succeeded"} == {}
    index = Index(path=Path(env["THAW_DATA_DIR"]) / "qdrant")  # the API has stopped: this process owns it now
    try:
        found = [str(p["item_id"]) for p in payloads(index, ITEMS, ["item_id"])]
        found = [i for i in found if i.startswith("outbox-")]
    finally:
        index.close()
    assert sorted(found) == sorted(acknowledged)  # every acknowledged item indexed, exactly once
    engine = make_engine(f"sqlite:///{Path(env['THAW_DATA_DIR']) / 'services.db'}")
    with engine.connect() as conn:
        resent = conn.execute(select(func.count()).where(Job.item_id.like("outbox-%"), Job.dispatches > 1)).scalar()
    engine.dispose()
    log.warning(
        "outbox: %d acknowledged, %d indexed, %d duplicated, %s jobs re-sent by the sweep, all finished %.0f s "
        "after the last upload",
        len(acknowledged),
        len(set(found)),
        len(found) - len(set(found)),
        resent,
        recovery_s,
    )
