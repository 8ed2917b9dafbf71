"""End to end over HTTP with a real Redis broker and a separate `celery worker` process."""

from __future__ import annotations

import io
import json
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from indexer.collections import ITEMS, Index
from indexer.search import get_items
from tests.integration.conftest import Worker, wait_job
from thaw.schema import CF, CF_SOURCE

pytestmark = pytest.mark.integration


def png(color: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (48, 48), color).save(buf, format="PNG")
    return buf.getvalue()


def ogg(hz: float, seconds: float = 1.0, sr: int = 22050) -> bytes:
    buf = io.BytesIO()
    t = np.arange(int(seconds * sr)) / sr
    sf.write(buf, (0.3 * np.sin(2 * np.pi * hz * t)).astype(np.float32), sr, format="OGG", subtype="VORBIS")
    return buf.getvalue()


def upload(client: httpx.Client, item_id: str, meta: dict[str, object] | None = None, **files: bytes) -> str:
    resp = client.post(
        "/items",
        data={"item_id": item_id, "metadata": json.dumps(meta or {})},
        files={k: (f"{k}.bin", v) for k, v in files.items()} or None,
    )
    assert resp.status_code == 202, resp.text
    return str(resp.json()["job_id"])


CASES = {
    "new-text": ({"title": "Rocket galaxy", "description": "an astronaut in orbit around an alien planet"}, {}),
    "new-image": (None, {"image": png((20, 30, 120))}),
    "new-audio": (None, {"audio": ogg(220.0)}),
    "new-all": (
        {"title": "Ghost curse", "description": "a haunted vampire"},
        {"image": png((120, 0, 0)), "audio": ogg(82.0)},
    ),
}


def test_each_modality_alone_and_together_becomes_servable(client: httpx.Client, worker: Worker) -> None:
    jobs = {item_id: upload(client, item_id, meta, **files) for item_id, (meta, files) in CASES.items()}
    for item_id, job_id in jobs.items():
        job = wait_job(client, job_id)
        assert job["status"] == "succeeded", job
        item = client.get(f"/items/{item_id}").json()
        assert item["indexed"] is True and item["interactions"] == 0
        expected = {
            "new-text": ["text"],
            "new-image": ["image"],
            "new-audio": ["audio"],
            "new-all": ["text", "image", "audio"],
        }
        assert item["modalities"] == expected[item_id]
    # similar items by the fused content vector and by each modality's own embedding
    sim = client.get("/items/new-all/similar", params={"k": 5}).json()
    assert len(sim["items"]) == 5 and "new-all" not in [s["item_id"] for s in sim["items"]]
    by_image = client.get("/items/new-image/similar", params={"k": 50, "using": "image"}).json()["items"]
    assert "new-all" in [s["item_id"] for s in by_image]
    assert client.get("/items/new-text/similar", params={"using": "audio"}).status_code == 404
    # a user with history gets the cold items among cold-only recommendations
    recs = client.get("/users/u0/recommendations", params={"k": 200, "cold_only": "true"}).json()
    got = {r["item_id"] for r in recs["items"]}
    assert set(CASES) <= got, got
    # the new items appear in the filtered similar results of a warm item too
    warm = client.get("/items/new-text/similar", params={"k": 3, "filter": json.dumps({"interactions": 0})}).json()
    assert warm["items"] and all(
        client.get(f"/items/{s['item_id']}").json()["interactions"] == 0 for s in warm["items"]
    )
    assert worker.alive()


def test_events_move_items_and_build_unknown_users(client: httpx.Client, worker: Worker) -> None:
    wait_job(client, upload(client, "evt-item", {"title": "Surf whale island"}))
    assert client.get("/users/brand-new-user/recommendations").json()["fallback"] == "popularity"
    resp = client.post(
        "/events",
        json=[
            {"user_id": "brand-new-user", "item_id": "evt-item"},
            {"user_id": "u1", "item_id": "evt-item", "weight": 2},
        ],
    )
    assert resp.status_code == 200 and resp.json() == {"accepted": 2, "joined": 0}  # no rec_id: nothing joins
    item = client.get("/items/evt-item").json()
    assert item["interactions"] == 2
    recs = client.get("/users/brand-new-user/recommendations", params={"k": 5}).json()
    assert recs["fallback"] is None  # placed by the events folded in
    assert len(recs["items"]) == 5 and "evt-item" not in [r["item_id"] for r in recs["items"]]
    cold = client.get("/users/u1/recommendations", params={"k": 500, "cold_only": "true"}).json()
    assert "evt-item" not in {r["item_id"] for r in cold["items"]}  # no longer cold


def test_events_keep_a_warm_items_learned_factors(
    client: httpx.Client, worker: Worker, service_env: dict[str, str]
) -> None:
    """A warm item's CF vector is ALS's, learned on its whole audience: an event does not refold it (a cold item's
    is folded in, above); neither does a re-upload of its content."""
    warm = next(i for i in map(str, range(160)) if client.get(f"/items/{i}").json()["interactions"] > 0)
    index = Index(path=Path(service_env["THAW_DATA_DIR"]) / "qdrant")  # a peer of the API, which owns the index

    def cf() -> list[float]:
        (hit,) = get_items(index, [warm], vectors=[CF], collection=ITEMS)
        assert hit.payload.get(CF_SOURCE) == "als"
        return hit.vectors[CF].tolist()

    try:
        before = cf()
        assert client.post("/events", json={"user_id": "u1", "item_id": warm, "weight": 5}).status_code == 200
        assert cf() == before
        assert wait_job(client, upload(client, warm, {"title": "Rocket galaxy astronaut"}))["status"] == "succeeded"
        assert cf() == before
    finally:
        index.close()


def test_reupload_replaces_the_item_without_duplicates(client: httpx.Client, worker: Worker) -> None:
    first = upload(client, "re-item", {"title": "war soldier battle"}, image=png((90, 90, 40)))
    second = upload(client, "re-item", {"title": "love romance wedding"})
    assert wait_job(client, first)["status"] == "succeeded"
    assert wait_job(client, second)["status"] == "succeeded"
    item = client.get("/items/re-item").json()
    # the second upload sends no image: the item keeps the first one's
    assert item["modalities"] == ["text", "image"] and item["metadata"]["title"] == "love romance wedding"
    hits = client.get("/items/new-text/similar", params={"k": 500, "using": "text"}).json()["items"]
    assert [h["item_id"] for h in hits].count("re-item") == 1


def test_an_embedded_item_is_listed_then_deleted_for_good(client: httpx.Client, worker: Worker) -> None:
    job_id = upload(client, "gone-soon", {"title": "Lighthouse keeper"}, image=png((0, 90, 200)))
    assert wait_job(client, job_id)["status"] == "succeeded"
    listed = _pages(client, {"filter": '{"title": "Lighthouse keeper"}', "limit": 100})
    assert [i["item_id"] for i in listed] == ["gone-soon"]
    assert listed[0]["indexed"] and listed[0]["modalities"] == ["text", "image"]
    jobs = client.get("/jobs", params={"kind": "embed", "limit": 500}).json()["jobs"]
    assert job_id in {j["job_id"] for j in jobs}
    neighbour = client.get("/items/gone-soon/similar", params={"k": 1}).json()["items"][0]["item_id"]

    def near_neighbour() -> set[str]:
        found = client.get(f"/items/{neighbour}/similar", params={"k": 500, "using": "content"}).json()["items"]
        return {s["item_id"] for s in found}

    assert "gone-soon" in near_neighbour()
    assert client.delete("/items/gone-soon").status_code == 204
    assert client.get("/items/gone-soon").status_code == 404
    assert job_id not in {j["job_id"] for j in client.get("/jobs", params={"limit": 500}).json()["jobs"]}
    assert "gone-soon" not in near_neighbour()
    assert client.delete("/items/gone-soon").status_code == 404


def _pages(client: httpx.Client, params: dict[str, object]) -> list[dict[str, object]]:
    """Every item GET /items lists, following next_cursor."""
    out, cursor = [], None
    while True:
        body = client.get("/items", params={**params, **({"cursor": cursor} if cursor else {})}).json()
        out += body["items"]
        cursor = body["next_cursor"]
        if cursor is None:
            return out
