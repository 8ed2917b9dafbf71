"""Bad input over HTTP: each gets a 4xx with a reason; the worker keeps running and nothing else is lost."""

from __future__ import annotations

import io
import json

import httpx
import numpy as np
import pytest
import soundfile as sf

from tests.integration.conftest import Worker, wait_job
from tests.integration.test_service import ogg, png, upload

pytestmark = pytest.mark.integration


def wav_bytes(seconds: float = 0.5, sr: int = 16000) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, np.zeros(int(seconds * sr), np.float32), sr, format="WAV")
    return buf.getvalue()


def post(client: httpx.Client, item_id: object = "bad-1", metadata: str = "{}", **files: bytes) -> httpx.Response:
    return client.post(
        "/items",
        data={"item_id": str(item_id), "metadata": metadata},
        files={k: (f"x.{k}", v) for k, v in files.items()} or None,
    )


@pytest.mark.parametrize(
    ("case", "status", "reason"),
    [
        ("corrupt-image", 422, "corrupt"),
        ("truncated-image", 422, "corrupt"),
        ("truncated-audio", 422, "audio"),
        ("text-as-image", 415, "image must be one of"),
        ("image-as-audio", 415, "audio must be one of"),
        ("oversize", 413, "limit"),
        ("empty-id", 422, "item_id"),
        ("bad-id", 422, "item_id"),
        ("malformed-metadata", 422, "metadata must be a JSON object"),
        ("metadata-not-object", 422, "metadata must be a JSON object"),
        ("no-content", 422, "needs text fields"),
        ("empty-file", 422, "empty"),
    ],
)
def test_bad_uploads_get_a_reason(client: httpx.Client, case: str, status: int, reason: str) -> None:
    good_png, good_wav = png((1, 2, 3)), wav_bytes()
    requests = {
        "corrupt-image": lambda: post(client, image=good_png[:20] + b"\x00" * 200),
        "truncated-image": lambda: post(client, image=good_png[: len(good_png) // 2]),
        "truncated-audio": lambda: post(client, audio=good_wav[:30]),
        "text-as-image": lambda: post(client, image=b"hello, this is not a picture"),
        "image-as-audio": lambda: post(client, audio=good_png),
        "oversize": lambda: post(client, image=b"\x89PNG\r\n\x1a\n" + b"\x00" * (3 * 1024 * 1024)),
        "empty-id": lambda: post(client, item_id="", metadata='{"title": "x"}'),
        "bad-id": lambda: post(client, item_id="../../etc/passwd", metadata='{"title": "x"}'),
        "malformed-metadata": lambda: post(client, metadata='{"title": '),
        "metadata-not-object": lambda: post(client, metadata='["a"]'),
        "no-content": lambda: post(client, metadata="{}"),
        "empty-file": lambda: post(client, audio=b""),
    }
    resp = requests[case]()
    assert resp.status_code == status, resp.text
    assert reason in json.dumps(resp.json()["detail"])
    assert client.get("/items/bad-1").status_code == 404  # nothing half-stored


def test_bad_requests_elsewhere(client: httpx.Client) -> None:
    assert client.post("/items", content=b"{not json", headers={"content-type": "application/json"}).status_code == 422
    assert client.post("/items", json={"item_id": 5.5, "metadata": {}}).status_code == 422
    assert client.post("/items", content=b"x", headers={"content-type": "text/plain"}).status_code == 415
    assert client.get("/items/no-such-item").status_code == 404
    assert client.get("/items/no-such-item/similar").status_code == 404
    assert client.get("/items/0/similar", params={"using": "nonsense"}).status_code == 422
    assert client.get("/items/0/similar", params={"filter": "{bad"}).status_code == 422
    assert client.get("/jobs/does-not-exist").status_code == 404
    assert client.get("/users/nobody-at-all/recommendations").json()["fallback"] == "popularity"
    assert client.get("/users/u0/recommendations", params={"alpha": 3}).status_code == 422
    assert client.post("/events", json={"user_id": "u0", "item_id": "no-such-item"}).status_code == 404
    assert client.post("/events", json={"user_id": "u0"}).status_code == 422
    assert client.post("/events", content=b"[{", headers={"content-type": "application/json"}).status_code == 422


def test_worker_survives_a_failed_job_and_keeps_working(
    client: httpx.Client, worker: Worker, service_env: dict[str, str]
) -> None:
    """An original that goes bad after upload fails its job with a reason; the next item is embedded."""
    from pathlib import Path

    from services.media_store import MediaStore

    store = MediaStore(Path(service_env["THAW_DATA_DIR"]) / "media")
    worker.stop()
    job_id = upload(client, "rots-later", {}, audio=ogg(300.0))
    store.put("rots-later", "audio", b"OggS" + b"\x00" * 100)  # the stored original is damaged before the worker runs
    fresh = Worker(service_env, "fresh")
    try:
        job = wait_job(client, job_id)
        assert job["status"] == "failed" and "corrupt" in str(job["error"])
        assert client.get("/items/rots-later").json()["indexed"] is False
        ok = wait_job(client, upload(client, "after-failure", {"title": "whale surf"}))
        assert ok["status"] == "succeeded" and fresh.alive()
    finally:
        fresh.stop()


def test_queued_uploads_are_encoded_in_one_batch_where_a_bad_item_fails_alone(
    client: httpx.Client, worker: Worker, service_env: dict[str, str]
) -> None:
    """Uploads that wait while no worker runs are claimed by the first task in one batch (one forward pass per
    modality, one upsert, one transaction); the item whose original went bad fails with its reason, the others
    succeed, and every job records the same batch."""
    from pathlib import Path

    from services.media_store import MediaStore

    store = MediaStore(Path(service_env["THAW_DATA_DIR"]) / "media")
    worker.stop()
    titles = ["whale surf", "rocket galaxy", "ghost curse", "love wedding", "war battle", "detective clue"]
    good = {
        f"batch-{k}": upload(client, f"batch-{k}", {"title": t}, image=png((40 * k, 80, 120)))
        for k, t in enumerate(titles)
    }
    bad = upload(client, "batch-bad", {"title": "rots"}, audio=ogg(300.0))
    store.put("batch-bad", "audio", b"OggS" + b"\x00" * 100)
    fresh = Worker(service_env, "batcher")
    try:
        jobs = {item: wait_job(client, job_id) for item, job_id in {**good, "batch-bad": bad}.items()}
        failed = jobs.pop("batch-bad")
        assert failed["status"] == "failed" and "corrupt" in str(failed["error"]), failed
        assert all(j["status"] == "succeeded" and j["error"] is None for j in jobs.values()), jobs
        assert {j["batch_id"] for j in [*jobs.values(), failed]} == {next(iter(good.values()))}  # the first message led
        assert all(client.get(f"/items/{item}").json()["indexed"] for item in good)
        assert client.get("/items/batch-bad").json()["indexed"] is False and fresh.alive()
    finally:
        fresh.stop()
