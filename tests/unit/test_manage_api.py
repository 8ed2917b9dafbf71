"""Managing the catalogue and users over HTTP against a live server (uvicorn on a loopback port over an embedded
runtime: Qdrant Edge, SQLite, the media store) serving planted vectors in two model versions: the catalogue page by
page, an item deleted from every version, a user's history and erasure, the job list, the popularity fallback for
unknown users, and bad input."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import soundfile as sf
from PIL import Image
from sqlalchemy import select
from sqlalchemy.orm import Session

from entrypoints.demo import Server
from entrypoints.runtime import build_runtime
from indexer.collections import ITEMS, USERS, activate, collection_name
from indexer.search import get_items, get_user
from indexer.writer import ItemPoint, set_item_cf, upsert_items, upsert_users
from services.db import (
    ArmItem,
    ArmUser,
    Base,
    Impression,
    Interaction,
    ItemRecord,
    Job,
    ReembedItem,
    ReembedJob,
)
from services.embedding import drop_deleted
from services.experiments import log_exposure
from services.runtime import Runtime
from services.serving import Served
from tests.unit.test_experiments_api import POPULARITY, _index_version
from tests.unit.test_experiments_api import USERS as ALS_USERS
from thaw.experiments.policies import make_policy
from thaw.schema import CF, JobStatus
from thaw.settings import Settings

VERSIONS = ("v1", "v2")
ITEM_IDS = sorted([*POPULARITY, "c0", "c1", "c2", "c3"])
Live = tuple[httpx.Client, Runtime]


@contextmanager
def planted_server(settings: Settings) -> Iterator[tuple[str, Runtime]]:
    """A live server whose v1 (served) and v2 hold the same planted items: warm w0..w5 (popularity w0 > w1 > ...),
    cold c0..c3 (with an image); every ALS user has one event on w5. Warm items are Drama at even positions, Comedy at
    odd ones. Yields its URL and the runtime."""
    rt = build_runtime(settings)
    for version, top_cold in zip(VERSIONS, ("c0", "c1"), strict=True):
        _index_version(rt, version, top_cold=top_cold)
    activate(rt.index, "v1")
    with Session(rt.engine) as session:
        for j, item in enumerate(POPULARITY):
            genres = ["Drama"] if j % 2 == 0 else ["Comedy"]
            session.add(ItemRecord(item_id=item, metadata_={"title": f"film {item}", "genres": genres}, media={}))
        for item in ("c0", "c1", "c2", "c3"):
            session.add(ItemRecord(item_id=item, metadata_={"year": 2020}, media={"image": "0" * 64}))
        session.add_all(Interaction(user_id=user, item_id="w5", weight=1.0) for user in ALS_USERS)
        session.commit()
    with Server(settings, rt) as server:
        yield server.url, rt


@pytest.fixture()
def live(tmp_path: Path) -> Iterator[Live]:
    """`planted_server` on a fresh data directory, with an httpx client of it."""
    with planted_server(Settings(data_dir=tmp_path)) as (url, rt), httpx.Client(base_url=url, timeout=60) as client:
        yield client, rt


def _png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), (10, 120, 10)).save(buf, format="PNG")
    return buf.getvalue()


def _ogg() -> bytes:
    buf = io.BytesIO()
    sf.write(buf, 0.1 * np.sin(np.arange(22050) / 10).astype(np.float32), 22050, format="OGG", subtype="VORBIS")
    return buf.getvalue()


def _mentions(rt: Runtime, text: str) -> list[str]:
    """Every database row, in every table, that holds `text` anywhere (as `table: row`)."""
    found = []
    with rt.engine.connect() as conn:
        for table in Base.metadata.sorted_tables:
            for row in conn.execute(table.select()):
                dumped = json.dumps(row._asdict(), default=str)
                if text in dumped:
                    found.append(f"{table.name}: {dumped}")
    return found


def _points(rt: Runtime, kind: str, ids: list[str]) -> dict[str, list[str]]:
    """Per version, which of `ids` have a point in that version's `kind` collection."""
    out = {}
    for version in VERSIONS:
        name = collection_name(kind, version)
        if kind == ITEMS:
            out[version] = sorted(h.item_id for h in get_items(rt.index, ids, vectors=False, collection=name))
        else:
            out[version] = sorted(u for u in ids if get_user(rt.index, u, collection=name) is not None)
    return out


def test_delete_leaves_nothing_of_the_item_in_any_version_the_media_store_or_the_database(live: Live) -> None:
    client, rt = live
    doomed = "doomed-7"
    files = {"image": ("p.png", _png()), "audio": ("a.ogg", _ogg())}
    resp = client.post("/items", data={"item_id": doomed, "metadata": '{"title": "Doomed"}'}, files=files)
    assert resp.status_code == 202, resp.text
    # its points in both versions (as its embedding and a re-embedding write them), an event, an exposure that
    # showed it beside w0, its row in a re-embedding job
    v = np.array([0.2, 0.1, 0.9, 0.0], np.float32)
    vectors = {"content": v, "text": np.ones(3, np.float32), "image": np.ones(2, np.float32)}
    for version in VERSIONS:
        point = ItemPoint(doomed, vectors, {"interactions": 0, "modalities": ["text", "image", "audio"]})
        upsert_items(rt.index, collection_name(ITEMS, version), [point], keep_cf=False)
    assert client.post("/events", json={"user_id": "u00", "item_id": doomed}).json()["accepted"] == 1
    shown = Served(make_policy("thaw"), "v1", None, [doomed, "w0"], [0.9, 0.8], [0, 3])
    with Session(rt.engine) as session:
        log_exposure(session, "exp-1", "rec-1", "a", "u01", shown)
        session.add(
            ReembedJob(job_id="rj-1", target_version="v2", total=2, chunk_size=8, max_failed_share=0.1, keep_versions=2)
        )
        session.add_all(ReembedItem(job_id="rj-1", item_id=i, status="done") for i in (doomed, "w0"))
        session.commit()
    assert _points(rt, ITEMS, [doomed]) == {"v1": [doomed], "v2": [doomed]}
    assert rt.store.get(doomed, "image") == _png() and rt.store.get(doomed, "audio") is not None
    tables = {m.split(":")[0] for m in _mentions(rt, doomed)}
    assert tables == {"items", "jobs", "interactions", "impressions", "arm_items", "reembed_items"}, tables

    resp = client.delete(f"/items/{doomed}")
    assert resp.status_code == 204, resp.text
    assert _points(rt, ITEMS, [doomed]) == {"v1": [], "v2": []}
    assert [p for p in rt.store.root.rglob("*") if p.is_file()] == []  # it held the only originals
    assert _mentions(rt, doomed) == []
    with Session(rt.engine) as session:
        left = session.execute(select(Impression.position, Impression.item_id).where(Impression.rec_id == "rec-1"))
        assert left.all() == [(1, "w0")]  # the rest stays, at its position
        counts = session.get(ArmUser, ("exp-1", "a", "u01"))
        assert counts is not None and (counts.exposures, counts.impressions, counts.impressions_cold) == (1, 1, 0)
        assert [a.item_id for a in session.scalars(select(ArmItem))] == ["w0"]
        job = session.get(ReembedJob, "rj-1")
        assert job is not None and job.total == 1  # done + failed + pending = total still
    # a repeat (and any unknown id) is a 404, never a 500; the other items are untouched
    again = client.delete(f"/items/{doomed}")
    assert again.status_code == 404 and doomed in again.json()["detail"]
    assert client.get(f"/items/{doomed}").status_code == 404
    assert _points(rt, ITEMS, ITEM_IDS) == {"v1": ITEM_IDS, "v2": ITEM_IDS}
    assert client.get("/items/w0").json()["indexed"] is True


def test_an_embedding_that_races_a_delete_takes_its_points_back(live: Live) -> None:
    """An embedding that read the record before the delete and writes after it: its write-then-check finds the record
    gone and removes what it wrote, from every version."""
    _, rt = live
    for version in VERSIONS:
        point = ItemPoint("late-ghost", {"content": np.ones(4, np.float32)}, {"interactions": 0})
        upsert_items(rt.index, collection_name(ITEMS, version), [point], keep_cf=False)
    assert drop_deleted(rt, ["late-ghost", "w0"]) == {"late-ghost"}
    assert _points(rt, ITEMS, ["late-ghost", "w0"]) == {"v1": ["w0"], "v2": ["w0"]}


def _all_pages(client: httpx.Client, path: str, key: str, **params: Any) -> list[list[dict[str, Any]]]:
    pages, cursor = [], None
    while True:
        resp = client.get(path, params={**params, **({"cursor": cursor} if cursor else {})})
        assert resp.status_code == 200, resp.text
        body = resp.json()
        pages.append(body[key])
        cursor = body["next_cursor"]
        if cursor is None:
            return pages
        assert len(pages) < 100, "the cursor does not move"


def test_items_page_by_page_each_exactly_once_and_filtered(live: Live) -> None:
    client, _ = live
    pages = _all_pages(client, "/items", "items", limit=3)
    assert [len(p) for p in pages] == [3, 3, 3, 1]
    seen = [i["item_id"] for p in pages for i in p]
    assert seen == ITEM_IDS  # every item once, in id order
    first = pages[0][0]
    assert first["item_id"] == "c0" and first["modalities"] == ["image"] and first["indexed"] is True
    assert first["metadata"] == {"year": 2020} and first["revision"] == 1
    # a page that ends exactly at the last item says so
    assert client.get("/items", params={"limit": len(ITEM_IDS)}).json()["next_cursor"] is None
    drama = _all_pages(client, "/items", "items", limit=1, filter='{"genres": "Drama"}')
    assert [i["item_id"] for p in drama for i in p] == ["w0", "w2", "w4"]
    assert [i["item_id"] for i in client.get("/items", params={"modality": "text"}).json()["items"]] == sorted(
        POPULARITY
    )
    assert [i["item_id"] for i in client.get("/items", params={"filter": '{"year": 2020}'}).json()["items"]] == [
        "c0",
        "c1",
        "c2",
        "c3",
    ]
    assert client.get("/items", params={"filter": '{"year": "2020"}'}).json()["items"] == []  # equality, typed


def test_user_history_pages_newest_first_and_erase_leaves_nothing(live: Live) -> None:
    client, rt = live
    eve = "eve-42x"
    for version in VERSIONS:  # a learned vector in each version's users collection
        upsert_users(rt.index, collection_name(USERS, version), [eve], np.ones((1, 4), np.float32), [{"source": "als"}])
    start = datetime(2025, 3, 1, tzinfo=UTC).timestamp()
    events = [
        {"user_id": eve, "item_id": item, "timestamp": start + 60 * n} for n, item in enumerate(["w0", "w1", "c3"])
    ]
    events.append({"user_id": eve, "item_id": "w2", "timestamp": "2025-03-01T02:00:00+02:00"})  # = 00:00 UTC
    assert client.post("/events", json=events).status_code == 200
    assert client.get("/items/c3").json()["interactions"] == 1  # folded in from eve alone
    set_item_cf(rt.index, collection_name(ITEMS, "v2"), "c3", np.ones(4, np.float32), 1)  # as v2's re-embedding did
    arms = [{"name": "pop", "policy": "popularity", "share": 0.5}, {"name": "rnd", "policy": "random", "share": 0.5}]
    exp = client.post("/experiments", json={"name": "e", "arms": arms, "control": "pop"}).json()
    rec = client.get(f"/users/{eve}/recommendations", params={"experiment": exp["experiment_id"]}).json()
    assert rec["arm"] in ("pop", "rnd")

    pages = _all_pages(client, f"/users/{eve}/history", "events", limit=3)
    assert [len(p) for p in pages] == [3, 1]
    history = [e for p in pages for e in p]
    assert [e["item_id"] for e in history] == ["c3", "w1", "w2", "w0"]  # newest first; w2 ties w0, recorded later
    assert [e["timestamp"] for e in history[2:]] == ["2025-03-01T00:00:00Z"] * 2  # +02:00 stored as UTC
    assert _mentions(rt, eve) and _points(rt, USERS, [eve]) == {"v1": [eve], "v2": [eve]}

    resp = client.delete(f"/users/{eve}")
    assert resp.status_code == 204, resp.text
    assert _mentions(rt, eve) == []  # events and the exposure (its rec_id) are gone
    assert _points(rt, USERS, [eve]) == {"v1": [], "v2": []}
    for version in VERSIONS:  # cold again in every version: nothing of eve is left in it
        c3 = get_items(rt.index, ["c3"], vectors=True, collection=collection_name(ITEMS, version))[0]
        assert CF not in c3.vectors and c3.payload["interactions"] == 0, version
    assert client.get(f"/users/{eve}/history").status_code == 404
    assert client.delete(f"/users/{eve}").status_code == 404  # a repeat
    assert client.get(f"/users/{eve}/recommendations").json()["fallback"] == "popularity"  # unknown again
    assert client.get("/users/u00/history").json()["events"][0]["item_id"] == "w5"  # others keep theirs


def test_jobs_newest_first_page_by_page_and_filtered(live: Live) -> None:
    client, rt = live
    t0 = datetime(2025, 1, 1, tzinfo=UTC)
    rows = [  # (job id, kind, status, minutes after t0): j3 and j4 were created at the same moment
        ("j0", "embed", JobStatus.SUCCEEDED, 0),
        ("j1", "embed", JobStatus.FAILED, 1),
        ("j2", "reembed", JobStatus.SUCCEEDED, 2),
        ("j3", "embed", JobStatus.FAILED, 3),
        ("j4", "embed", JobStatus.QUEUED, 3),
        ("j5", "reembed", JobStatus.RUNNING, 4),
        ("j6", "embed", JobStatus.SUCCEEDED, 5),
    ]
    with Session(rt.engine) as session:
        for job_id, kind, status, minutes in rows:
            at = t0 + timedelta(minutes=minutes)
            session.add(Job(job_id=job_id, kind=kind, status=status, item_id="w0", created_at=at))
        session.commit()
    pages = _all_pages(client, "/jobs", "jobs", limit=2)
    assert [len(p) for p in pages] == [2, 2, 2, 1]
    assert [j["job_id"] for p in pages for j in p] == ["j6", "j5", "j4", "j3", "j2", "j1", "j0"]
    assert pages[0][0]["created_at"].startswith("2025-01-01T00:05:00") and pages[0][0]["status"] == "succeeded"
    failed = _all_pages(client, "/jobs", "jobs", limit=1, status="failed")
    assert [j["job_id"] for p in failed for j in p] == ["j3", "j1"]
    reembeds = client.get("/jobs", params={"kind": "reembed"}).json()
    assert [j["job_id"] for j in reembeds["jobs"]] == ["j5", "j2"] and reembeds["next_cursor"] is None
    both = client.get("/jobs", params={"kind": "embed", "status": "succeeded"}).json()["jobs"]
    assert [j["job_id"] for j in both] == ["j6", "j0"]


def test_an_unknown_user_gets_the_most_interacted_warm_items_marked_as_fallback(live: Live) -> None:
    client, _ = live
    resp = client.get("/users/stranger/recommendations", params={"k": 3})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["fallback"] == "popularity" and body["experiment_id"] is None
    assert [i["item_id"] for i in body["items"]] == ["w0", "w1", "w2"]
    assert [i["score"] for i in body["items"]] == [50, 40, 30] and not any(i["cold"] for i in body["items"])
    page = client.get("/users/stranger/recommendations", params={"k": 2, "offset": 2}).json()
    assert [i["item_id"] for i in page["items"]] == ["w2", "w3"]
    everything = client.get("/users/stranger/recommendations", params={"k": 100}).json()["items"]
    assert [i["item_id"] for i in everything] == list(POPULARITY)  # warm items only: no cold item
    known = client.get("/users/u00/recommendations", params={"k": 3}).json()
    assert known["fallback"] is None and known["items"]


def _cursor(*parts: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(list(parts)).encode()).decode().rstrip("=")


def test_bad_paging_and_ids_are_4xx_with_a_reason(live: Live) -> None:
    client, _ = live
    jobs_cursor = _cursor("jobs", "2025-01-01T00:00:00+00:00", "j1")
    bad = [
        ("/items", {"cursor": "not a cursor!"}),
        ("/items", {"cursor": jobs_cursor}),  # another listing's cursor
        ("/items", {"cursor": _cursor("items", 5)}),
        ("/items", {"cursor": _cursor("items", "../../etc")}),
        ("/items", {"limit": 0}),
        ("/items", {"limit": 501}),
        ("/items", {"limit": "many"}),
        ("/items", {"filter": "[1]"}),
        ("/items", {"filter": '{"a.b": 1}'}),
        ("/items", {"modality": "smell"}),
        ("/jobs", {"cursor": _cursor("jobs", "yesterday", "j1")}),
        ("/jobs", {"cursor": _cursor("jobs", "2025-01-01T00:00:00", "j1")}),  # no offset
        ("/jobs", {"status": "sleeping"}),
        ("/jobs", {"kind": "other"}),
        ("/jobs", {"limit": -1}),
        ("/users/u00/history", {"cursor": jobs_cursor}),
        ("/users/u00/history", {"cursor": _cursor("history", "2025-01-01T00:00:00+00:00", "x")}),
        ("/users/u00/history", {"limit": 10_000}),
        ("/users/bad%20id/history", {}),
    ]
    for path, params in bad:
        resp = client.get(path, params=params)
        assert resp.status_code == 422, (path, params, resp.status_code, resp.text)
        assert resp.json()["detail"], (path, params)
    for path in ("/items/bad%20id", "/users/bad%20id"):
        resp = client.delete(path)
        assert resp.status_code == 422 and "letters, digits" in resp.json()["detail"], resp.text
    assert client.delete("/items/never-uploaded").status_code == 404
    assert client.delete("/users/never-seen").status_code == 404
    assert client.get("/users/never-seen/history").status_code == 404
    assert "cursor is not one this API gave" in client.get("/items", params={"cursor": "x"}).json()["detail"]
    assert len(client.get("/items", params={"limit": 500}).json()["items"]) == len(ITEM_IDS)  # nothing deleted
