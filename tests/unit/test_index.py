"""The embedded index (Qdrant Edge): versioned collections behind atomically swapped aliases, filters, batched
queries, the owner/peer sharing between processes, and takeover when the owner is killed."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
from pathlib import Path

import numpy as np
import pytest

from indexer.collections import (
    ITEMS,
    USERS,
    Index,
    activate,
    active_collection_version,
    ensure_collections,
    indexed_versions,
    optimize,
)
from indexer.engine import Filter, Query, Record
from indexer.search import (
    count,
    get_items,
    get_users,
    largest,
    nearest,
    payload_filter,
    payloads,
    query_batch,
    search,
    similar,
)
from indexer.shared import SharedEngine, decode, encode
from indexer.writer import (
    ItemPoint,
    clear_item_cf,
    delete_items,
    delete_users,
    set_item_cf,
    upsert_items,
    upsert_users,
)
from thaw.schema import CF, CONTENT, SIMILARITY_VECTORS

DIMS = {"text": 8}


def _load(index: Index, n: int = 50, version: str = "v1") -> np.ndarray:
    ensure_collections(index, version, 4, DIMS)
    rng = np.random.default_rng(0)
    content = rng.normal(size=(n, 4)).astype(np.float32)
    points = [
        ItemPoint(
            f"i{k}",
            {CONTENT: content[k], CF: content[k], "text": rng.normal(size=8).astype(np.float32)},
            {"interactions": k % 3, "modalities": ["text"]},
        )
        for k in range(n)
    ]
    upsert_items(index, f"{ITEMS}__{version}", points, keep_cf=False)
    upsert_users(index, f"{USERS}__{version}", ["u1"], content[:1], [{"source": "als"}])
    activate(index, version)
    return content


def test_collections_filters_and_batched_queries(tmp_path: Path) -> None:
    index = Index(path=tmp_path / "q")
    content = _load(index)
    optimize(index, "v1")
    assert active_collection_version(index) == "v1" and indexed_versions(index) == ["v1"]
    exact = np.argsort(-(content @ content[0]))[:5]
    hits = search(index, content[0], CONTENT, 5)
    assert [h.item_id for h in hits] == [f"i{k}" for k in exact]  # a planted answer: exact top-5 by dot product
    sims = similar(index, "i0", CONTENT, 4)
    assert "i0" not in [h.item_id for h in sims] and len(sims) == 4
    cold = search(index, content[0], CONTENT, 50, payload_filter(cold_only=True, exclude_items=["i3"]))
    assert {h.item_id for h in cold} == {f"i{k}" for k in range(0, 50, 3)} - {"i3"}
    assert count(index, payload_filter(warm_only=True)) == 50 - len(range(0, 50, 3))
    by_vec, top = query_batch(index, [nearest(content[1], CF, 3), largest("interactions", 2, with_vectors=True)])
    assert by_vec[0].item_id == search(index, content[1], CF, 1)[0].item_id
    assert [int(h.payload["interactions"]) for h in top] == [2, 2] and set(top[0].vectors) == {CF, CONTENT}
    assert len(payloads(index, ITEMS, ["item_id"])) == 50
    set_item_cf(index, ITEMS, "i1", np.ones(4, np.float32), 9)
    (hit,) = get_items(index, ["i1"], vectors=[CF])
    assert hit.vectors[CF].tolist() == [1.0] * 4 and hit.payload["interactions"] == 9
    assert get_users(index, ["u1", "nobody"]).keys() == {"u1"}
    clear_item_cf(index, ITEMS, "i1", 0)  # the folded vector and its cosine twin go, the rest stays
    (hit,) = get_items(index, ["i1"], vectors=[CF, SIMILARITY_VECTORS[CF], CONTENT, "text"])
    assert set(hit.vectors) == {CONTENT, "text"} and hit.payload["interactions"] == 0
    assert hit.payload["modalities"] == ["text"]
    assert delete_users(index, ["u1", "nobody"]) == [f"{USERS}__v1"] and get_users(index, ["u1"]) == {}
    assert delete_items(index, ["i2", "nobody"]) == [f"{ITEMS}__v1"] and count(index) == 49
    assert delete_items(index, ["i2"]) == []  # a repeat finds nothing
    index.close()
    reopened = Index(path=tmp_path / "q")  # aliases and points persist
    assert active_collection_version(reopened) == "v1" and count(reopened) == 49
    reopened.close()


def test_alias_swap_and_the_cosine_distance_of_embeddings(tmp_path: Path) -> None:
    index = Index(path=tmp_path / "q")
    _load(index, version="v1")
    _load(index, n=10, version="v2")
    assert active_collection_version(index) == "v2" and count(index) == 10
    activate(index, "v1")
    assert count(index) == 50
    (hit,) = get_items(index, ["i2"], vectors=["text"])
    assert np.isclose(np.linalg.norm(hit.vectors["text"]), 1.0)  # cosine vectors are stored normalised
    index.close()


def test_codec_round_trip() -> None:
    q = Query(3, np.arange(4, dtype=np.float32), CF, filter=Filter({"a": 1}, {"b": 0.0}, ("x",)), with_vectors=[CF])
    back = decode(encode({"q": q, "r": [Record("id", {"k": [1, "s"]}, {CF: np.ones(2, np.float32)}, 0.5)]}))
    assert back["q"].filter == q.filter and back["q"].vector.tolist() == [0, 1, 2, 3]
    assert back["r"][0].vectors[CF].tolist() == [1.0, 1.0] and back["r"][0].payload == {"k": [1, "s"]}


def _owner(path: str, ready: mp.synchronize.Event) -> None:  # type: ignore[name-defined]
    index = Index(path=Path(path))
    _load(index)
    ready.set()
    signal.pause()


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_peers_share_the_owners_index_and_take_over_when_it_is_killed(tmp_path: Path) -> None:
    ctx = mp.get_context("spawn")
    ready = ctx.Event()
    owner = ctx.Process(target=_owner, args=(str(tmp_path / "q"), ready))
    owner.start()
    try:
        assert ready.wait(120), "the owner process never loaded the index"
        peer = Index(path=tmp_path / "q")
        assert count(peer) == 50 and active_collection_version(peer) == "v1"
        engine = peer.engine()
        assert isinstance(engine, SharedEngine) and not engine.owner
        upsert_items(peer, ITEMS, [ItemPoint("new", {CONTENT: np.ones(4), CF: np.ones(4)}, {"revision": 1})])
        assert count(peer) == 51  # written by the owner, on the peer's behalf
        assert delete_items(peer, ["i0"]) == [f"{ITEMS}__v1"] and count(peer) == 50  # deleted by the owner too
        assert owner.pid is not None
        os.kill(owner.pid, signal.SIGKILL)
        owner.join(30)
        assert count(peer) == 50  # the next call finds the owner gone, takes the lock and reopens the storage
        assert engine.owner
        peer.close()
    finally:
        if owner.is_alive():
            owner.kill()
