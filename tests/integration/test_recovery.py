"""Recovery: a worker SIGKILLed in the middle of a task; after a restart the item is embedded exactly once."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from indexer.collections import ITEMS, Index
from indexer.search import count, payload_filter
from tests.integration.conftest import Worker, wait_job
from tests.integration.test_service import ogg, upload

pytestmark = pytest.mark.integration


def test_worker_killed_mid_task_embeds_item_exactly_once(service_env: dict[str, str], client: httpx.Client) -> None:
    """A fresh worker spends seconds loading the model inside its first task: SIGKILL it there."""
    env = dict(service_env)
    job_id = upload(client, "kill-item", {"title": "detective murder clue"}, audio=ogg(165.0, 2.0))
    victim = Worker(env, "victim")
    deadline = time.monotonic() + 120
    while client.get(f"/jobs/{job_id}").json()["status"] != "running":
        assert time.monotonic() < deadline, "the task never started"
        time.sleep(0.02)
    victim.kill()
    assert client.get(f"/jobs/{job_id}").json()["status"] == "running"
    survivor = Worker(env, "survivor")
    try:
        job = wait_job(client, job_id, timeout=180)
        assert job["status"] == "succeeded", job
        assert job["attempts"] >= 2
        assert client.get("/items/kill-item").json()["indexed"] is True
        index = Index(path=Path(service_env["THAW_DATA_DIR"]) / "qdrant")  # a peer of the API, which owns the index
        try:
            found = count(index, payload_filter({"item_id": "kill-item"}), collection=ITEMS)
        finally:
            index.close()
        assert found == 1
    finally:
        survivor.stop()
