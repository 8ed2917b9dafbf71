"""POST /items:batch over HTTP with a real Redis broker and a separate `celery worker` process: one job for the batch,
each item's status, bad items failing alone, malformed requests refused whole."""

from __future__ import annotations

import json

import httpx
import pytest

from tests.integration.conftest import Worker, wait_job
from tests.integration.test_service import ogg, png
from thaw.client import ThawAPIError, ThawClient

pytestmark = pytest.mark.integration


def test_batch_embeds_good_items_and_fails_bad_ones_each_with_a_reason(api_url: str, worker: Worker) -> None:
    items = [
        {"item_id": "bt-text", "title": "Rocket galaxy", "description": "an astronaut in orbit"},
        {"item_id": "bt-image"},
        {"item_id": "bt-audio"},
        {"item_id": "bt-all", "title": "Ghost curse", "description": "a haunted vampire"},
        {"item_id": "bt-bad-image", "title": "Broken poster"},
        {"item_id": "bt-twice", "title": "Sent twice"},
        {"item_id": "bt-twice", "title": "Sent twice again"},
        {"item_id": "bt-nested", "title": {"not": "text"}},
        {"item_id": "bt-nothing"},
    ]
    media = {
        "image:bt-image": png((20, 30, 120)),
        "audio:bt-audio": ogg(220.0),
        "image:bt-all": png((120, 0, 0)),
        "audio:bt-all": ogg(82.0),
        "image:bt-bad-image": b"\x89PNG\r\n\x1a\n" + b"garbage" * 40,
    }
    with ThawClient(api_url) as client:
        accepted = client.upload_batch(items, media)
        assert accepted["total"] == 8 and accepted["failed"] == 4
        job = client.wait_job(accepted["job_id"], timeout=180)
        assert job["kind"] == "batch" and job["status"] == "succeeded", job
        assert job["error"] == "4 of 8 items failed"
        progress = job["progress"]
        assert progress is not None
        status = {i["item_id"]: (i["status"], i["error"] or "") for i in progress["items"]}
        good = ["bt-all", "bt-audio", "bt-image", "bt-text"]
        assert {i: s for i, (s, _) in status.items()} == {
            **dict.fromkeys(good, "done"),
            **dict.fromkeys(["bt-bad-image", "bt-nested", "bt-nothing", "bt-twice"], "failed"),
        }
        assert "appears 2 times" in status["bt-twice"][1]
        assert "metadata field 'title'" in status["bt-nested"][1]
        assert "no text" in status["bt-nothing"][1] or "none was given" in status["bt-nothing"][1]
        assert "image" in status["bt-bad-image"][1]
        assert (progress["total"], progress["done"], progress["failed"], progress["pending"]) == (8, 4, 4, 0)
        for item_id in good:
            item = client.get_item(item_id)
            assert item["indexed"], item
        assert sorted(client.get_item("bt-all")["modalities"]) == ["audio", "image", "text"]
        for item_id in ("bt-bad-image", "bt-twice", "bt-nested"):
            with pytest.raises(ThawAPIError) as err:
                client.get_item(item_id)
            assert err.value.status_code == 404

        again = client.upload_batch([items[0]])  # unchanged content: done, without encoding again
        job = client.wait_job(again["job_id"], timeout=120)
        assert job["status"] == "succeeded" and job["progress"] is not None
        assert job["progress"]["skipped"] == 1


def _post(client: httpx.Client, ndjson: str, files: dict[str, bytes] | None = None) -> httpx.Response:
    parts = {"metadata": ("m.ndjson", ndjson.encode())} | {k: (k, v) for k, v in (files or {}).items()}
    return client.post("/items:batch", files=parts)


def test_malformed_batches_are_refused_whole(client: httpx.Client) -> None:
    line = json.dumps({"item_id": "bm-1", "title": "fine"})
    cases = {
        "not JSON": (_post(client, line + "\n{not json\n"), 422, "metadata line 2"),
        "no item_id": (_post(client, line + '\n{"title": "x"}\n'), 422, "metadata line 2"),
        "file for no item": (_post(client, line, {"image:bm-2": png((1, 2, 3))}), 422, "bm-2"),
        "file named oddly": (_post(client, line, {"poster": png((1, 2, 3))}), 422, "image:<item_id>"),
        "empty": (_post(client, "\n"), 422, "no item"),
        "too many": (_post(client, "".join(f'{{"item_id": "bm-{i}", "t": "x"}}\n' for i in range(1001))), 413, "1000"),
        "not multipart": (client.post("/items:batch", json={"item_id": "bm-1"}), 415, "multipart"),
    }
    for name, (resp, code, words) in cases.items():
        assert resp.status_code == code, (name, resp.text)
        assert words in resp.text, (name, resp.text)
    jobs = client.get("/jobs", params={"kind": "batch", "limit": 100}).json()["jobs"]
    assert not any(j["status"] in ("queued", "running") for j in jobs if j["created_at"] is None)


def test_a_batch_whose_items_all_fail_is_a_failed_job_at_once(client: httpx.Client) -> None:
    resp = _post(client, json.dumps({"item_id": "bf-1"}) + "\n", {"image:bf-1": b"not an image at all"})
    assert resp.status_code == 202, resp.text
    job = wait_job(client, resp.json()["job_id"])
    assert job["status"] == "failed" and "every item" in job["error"]
    assert job["progress"]["items"][0]["status"] == "failed"
