"""Re-embedding jobs, the pure parts and the index rules they rely on: chunking, the failure-share decision, content
hashes, keep-N retention, stall detection, CF vectors per version, pinned aliases, the revision guard."""

from __future__ import annotations

import contextvars
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from indexer.collections import (
    ITEMS,
    Index,
    activate,
    active_collection_version,
    ensure_collections,
    indexed_versions,
    pin_aliases,
    remove_versions,
    version_key,
    versions_to_remove,
)
from indexer.search import get_items, search
from indexer.writer import ItemPoint, upsert_items
from services.embedding import content_hash
from services.reembed import cf_vectors, chunked, failure_verdict, is_stalled, rate_and_eta
from tests.helpers import plant_version
from thaw.factors import Factors, fold_in
from thaw.settings import Settings

DIMS = {"text": 4}


def test_chunks_cover_every_id_once_in_order() -> None:
    ids = [f"i{k}" for k in range(7)]
    assert chunked(ids, 3) == [["i0", "i1", "i2"], ["i3", "i4", "i5"], ["i6"]]
    assert chunked(ids, 7) == [ids]
    assert chunked([], 5) == []
    with pytest.raises(ValueError, match="at least 1"):
        chunked(ids, 0)


def test_failure_share_decides_the_switch() -> None:
    assert failure_verdict(0, 500, 0.0) is None
    assert failure_verdict(5, 500, 0.01) is None  # exactly the allowed share
    reason = failure_verdict(6, 500, 0.01)
    assert reason is not None and "6 of 500 items failed (1.2%)" in reason and "1% allowed" in reason
    assert failure_verdict(1, 500, 0.0) is not None
    assert failure_verdict(500, 500, 1.0) is None


def test_content_hash_is_canonical_and_sees_every_change() -> None:
    base = content_hash({"title": "Night", "tags": ["a", "b"]}, {"image": "ab12"})
    assert base == content_hash({"tags": ["a", "b"], "title": "Night"}, {"image": "ab12"})  # key order
    assert len(base) == 64
    others = {
        content_hash({"title": "Night!", "tags": ["a", "b"]}, {"image": "ab12"}),
        content_hash({"title": "Night", "tags": ["b", "a"]}, {"image": "ab12"}),
        content_hash({"title": "Night", "tags": ["a", "b"]}, {"image": "ab13"}),
        content_hash({"title": "Night", "tags": ["a", "b"]}, {"audio": "ab12"}),
        content_hash({"title": "Night", "tags": ["a", "b"]}, {}),
    }
    assert base not in others and len(others) == 5


def test_keep_n_retention_keeps_the_newest_and_every_protected_version() -> None:
    assert version_key("v10") > version_key("v9") > version_key("v1") > version_key("custom")
    versions = ["v1", "v2", "v3", "v4", "v5"]
    assert versions_to_remove(versions, 3, {"v5"}) == ["v1", "v2"]
    assert versions_to_remove(versions, 3, {"v2", "v5"}) == ["v1", "v3"]  # v2 served again after a rollback
    assert versions_to_remove(versions, 1, {"v1", "v3"}) == ["v2", "v4", "v5"]  # protected beyond N stay
    assert versions_to_remove(["v10", "v9", "v2"], 2, set()) == ["v2"]
    assert versions_to_remove(versions, 9, set()) == []
    with pytest.raises(ValueError, match="at least 1"):
        versions_to_remove(versions, 0, set())


def test_stall_and_eta_arithmetic() -> None:
    now = datetime(2025, 1, 1, 12, 0, 30, tzinfo=UTC)
    assert is_stalled(datetime(2025, 1, 1, 12, 0, 0), now, 20)  # naive (SQLite) read as UTC
    assert not is_stalled(now - timedelta(seconds=19), now, 20)
    assert rate_and_eta(100, 300, 20.0) == (5.0, 60.0)
    assert rate_and_eta(0, 300, 20.0) == (None, None)


def test_cf_vectors_use_the_versions_own_factor_space() -> None:
    rng = np.random.default_rng(0)
    factors = Factors(["u0", "u1", "u2"], ["warm"], rng.normal(size=(3, 4)), rng.normal(size=(1, 4)))
    audience = {
        "warm": [("u0", 1.0)],
        "cold": [("u1", 2.0), ("u2", 1.0), ("stranger", 5.0)],
        "strangers-only": [("stranger", 1.0)],
        "nobody": [],
    }
    out = cf_vectors(factors, audience, reg=0.1, alpha=10.0)
    assert np.array_equal(out["warm"][0], factors.items[0]) and out["warm"][1] == 1  # type: ignore[arg-type]
    gram = factors.users.T @ factors.users  # every known user counts, with preference 0 where they did not interact
    expected = fold_in(factors.users[[1, 2]], np.array([1 + 10 * 2.0, 1 + 10 * 1.0]), 0.1, gram=gram)
    assert np.allclose(out["cold"][0], expected) and out["cold"][1] == 3  # type: ignore[arg-type]
    assert out["strangers-only"] == (None, 1)
    assert out["nobody"] == (None, 0)


def _two_versions(index: Index) -> None:
    for version, dim in (("v1", 3), ("v2", 2)):
        ensure_collections(index, version, dim, DIMS)
        points = [ItemPoint(f"i{k}", {"content": np.ones(dim) * (k + 1)}, {"model_version": version}) for k in range(3)]
        upsert_items(index, f"{ITEMS}__{version}", points, keep_cf=False)
    activate(index, "v1")


def test_a_pinned_request_reads_one_version_across_an_alias_swap(tmp_path: Path) -> None:
    index = Index(path=tmp_path / "q")
    _two_versions(index)

    def request() -> None:
        pin_aliases()
        assert active_collection_version(index) == "v1"
        contextvars.Context().run(activate, index, "v2")  # another request swaps the aliases meanwhile
        hits = search(index, np.ones(3), "content", 3)  # a 3-d query still works: v1 stays pinned
        assert [h.payload["model_version"] for h in hits] == ["v1"] * 3
        assert contextvars.Context().run(active_collection_version, index) == "v2"
        activate(index, "v1")  # a swap made by this request is seen by it at once
        activate(index, "v2")
        assert active_collection_version(index) == "v2"

    contextvars.Context().run(request)  # the pin ends with the request's context
    assert indexed_versions(index) == ["v1", "v2"]
    remove_versions(index, ["v1", "v1"])
    assert indexed_versions(index) == ["v2"]
    index.close()


def test_an_older_revision_never_overwrites_a_newer_one(tmp_path: Path) -> None:
    index = Index(path=tmp_path / "q")
    ensure_collections(index, "v1", 2, DIMS)
    coll = f"{ITEMS}__v1"
    cf = {"cf": np.array([1.0, 0.0])}
    upsert_items(index, coll, [ItemPoint("a", {"content": np.ones(2), **cf}, {"revision": 2, "interactions": 4})])
    stale = ItemPoint("a", {"content": np.zeros(2)}, {"revision": 1, "title": "old"})
    assert upsert_items(index, coll, [stale, ItemPoint("b", {"content": np.ones(2)}, {"revision": 1})]) == ["b"]
    newer = ItemPoint("a", {"content": np.full(2, 3.0)}, {"revision": 3, "title": "new"})
    assert upsert_items(index, coll, [newer]) == ["a"]
    (hit,) = get_items(index, ["a"], vectors=True, collection=coll)
    assert hit.payload["title"] == "new" and hit.payload["revision"] == 3
    assert np.allclose(hit.vectors["cf"], [1.0, 0.0]) and hit.payload["interactions"] == 4  # earned CF kept
    index.close()


def test_settings_refuse_bad_reembed_knobs() -> None:
    with pytest.raises(ValueError, match="THAW_REEMBED_MAX_FAILED_SHARE"):
        Settings(reembed_max_failed_share=1.5)
    with pytest.raises(ValueError, match="THAW_KEEP_VERSIONS"):
        Settings(keep_versions=0)
    with pytest.raises(ValueError, match="THAW_REEMBED_CHUNK_SIZE"):
        Settings(reembed_chunk_size=0)
    with pytest.raises(ValueError, match="THAW_REEMBED_STALL_SECONDS"):
        Settings(reembed_stall_seconds=0)


def test_versions_api_refuses_what_it_cannot_do_with_a_reason(tmp_path: Path) -> None:
    from entrypoints.runtime import create_app

    plant_version(tmp_path / "models", "v1", dim=8, embedding_dims={"text": 384})
    client = TestClient(create_app(Settings(data_dir=tmp_path)))
    listing = client.get("/models").json()
    trained_at = listing["versions"][0].pop("trained_at")
    assert datetime.fromisoformat(trained_at.replace("Z", "+00:00")).tzinfo is not None
    assert listing["served"] is None and listing["versions"][0] == {
        "version": "v1",
        "dim": 8,
        "embedding_dims": {"text": 384},
        "indexed": False,
        "items": None,
        "served": False,
        "alpha": 1.0,
        "data": {"items": 0, "users": 0, "interactions": None},  # a planted version: no training data recorded
        "validation": {},
    }
    resp = client.post("/models/v9/activate")
    assert resp.status_code == 404 and "model version 'v9' is not trained" in resp.json()["detail"]
    resp = client.post("/models/v1/activate")
    assert resp.status_code == 409 and "no collections" in resp.json()["detail"]
    resp = client.post("/jobs/reembed", json={"model_version": "v2"})
    assert resp.status_code == 404 and "['v1']" in resp.json()["detail"]
    resp = client.post("/jobs/reembed", json={"model_version": "v1", "filter": {"modalities": ["text"]}})
    assert resp.status_code == 422
    resp = client.post("/jobs/reembed", json={"model_version": "v1", "filter": {"modalities": "text"}})
    assert resp.status_code == 409 and "no version is served" in resp.json()["detail"]
    assert client.post("/jobs/nope/resume").status_code == 404
