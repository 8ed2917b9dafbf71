"""Items over the API on an embedded runtime (real embedded Qdrant, real SQLite) with planted vectors: similar items
by direction (a large-norm item is no hub), uploads in a modality the model was not trained on refused, a JSON
re-upload keeps the image, PATCH changes metadata."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from fastapi.testclient import TestClient
from PIL import Image
from sqlalchemy.orm import Session

from entrypoints.runtime import build_runtime, create_app
from indexer.collections import activate, ensure_collections
from indexer.writer import ItemPoint, set_item_cf, upsert_items
from services.db import ItemRecord, Job
from services.runtime import Runtime
from tests.helpers import plant_version
from thaw.schema import CF_SOURCE
from thaw.settings import Settings

DIMS = {"text": 3, "image": 2, "audio": 2}


def _v(*x: float) -> np.ndarray:
    return np.array(x, np.float32)


@pytest.fixture()
def planted(tmp_path: Path) -> Iterator[tuple[TestClient, Runtime]]:
    """A model trained on text and images (no audio). Items a1..a3 point one way, b1..b3 another; `hub` has ten
    times their norm and points between the two, a little closer to a's than b's own direction is."""
    settings = Settings(data_dir=tmp_path)
    rt = build_runtime(settings)
    plant_version(rt.registry.root, "v1", dim=3, embedding_dims=DIMS, modalities=["text", "image"])
    items, _ = ensure_collections(rt.index, "v1", 3, DIMS)
    vectors = {
        "a1": _v(1.0, 0.05, 0),
        "a2": _v(1.0, 0.1, 0),
        "a3": _v(0.9, 0.0, 0.1),
        "b1": _v(0.0, 1.0, 0),
        "b2": _v(0.1, 1.0, 0),
        "b3": _v(0.0, 0.9, 0.1),
        "hub": _v(7.0, 7.0, 0),
    }
    points = [
        ItemPoint(i, {"cf": v, "content": v, "text": _v(1, 0, 0)}, {"interactions": 5, CF_SOURCE: "als"})
        for i, v in vectors.items()
    ]
    upsert_items(rt.index, items, points, keep_cf=False)
    activate(rt.index, "v1")
    with Session(rt.engine) as session:
        for item in vectors:
            session.add(ItemRecord(item_id=item, metadata_={"title": item}, media={}))
        session.commit()
    yield TestClient(create_app(settings, runtime=rt)), rt
    rt.close()


@pytest.mark.parametrize("using", ["cf", "content"])
def test_similar_items_compare_directions_so_a_large_norm_is_no_hub(
    planted: tuple[TestClient, Runtime], using: str
) -> None:
    client, rt = planted
    for item, mates in (("a1", {"a2", "a3"}), ("b1", {"b2", "b3"})):
        got = client.get(f"/items/{item}/similar", params={"k": 2, "using": using}).json()["items"]
        assert {g["item_id"] for g in got} == mates, got  # by dot product the hub would top both lists
        assert all(-1.0 <= g["score"] <= 1.0 + 1e-6 for g in got)
    # a CF vector folded in later is compared by direction too
    set_item_cf(rt.index, "items", "b3", _v(50.0, 0.0, 0.0), 40)
    if using == "cf":
        got = client.get("/items/a3/similar", params={"k": 1, "using": "cf"}).json()["items"]
        assert got[0]["item_id"] == "b3" and got[0]["score"] == pytest.approx(0.9939, abs=1e-3)


def _png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), (200, 10, 10)).save(buf, format="PNG")
    return buf.getvalue()


def _ogg() -> bytes:
    buf = io.BytesIO()
    sf.write(buf, np.zeros(22050, np.float32), 22050, format="OGG", subtype="VORBIS")
    return buf.getvalue()


def test_an_upload_in_a_modality_the_model_was_not_trained_on_is_refused(planted: tuple[TestClient, Runtime]) -> None:
    client, _ = planted
    files = {"audio": ("a.ogg", _ogg())}
    resp = client.post("/items", data={"item_id": "song", "metadata": '{"title": "Song"}'}, files=files)
    assert resp.status_code == 422, resp.text
    assert "trained on text, image, not on audio" in resp.json()["detail"]
    resp = client.post("/items", data={"item_id": "pic", "metadata": "{}"}, files={"image": ("p.png", _png())})
    assert resp.status_code == 202, resp.text


def test_a_json_reupload_keeps_the_image_and_patch_changes_metadata(planted: tuple[TestClient, Runtime]) -> None:
    client, rt = planted
    data = {"item_id": "film", "metadata": '{"title": "Film", "year": 1999}'}
    assert client.post("/items", data=data, files={"image": ("p.png", _png())}).status_code == 202
    resp = client.post("/items", json={"item_id": "film", "metadata": {"title": "Film (restored)", "year": 1999}})
    assert resp.status_code == 202, resp.text
    resp = client.patch("/items/film", json={"metadata": {"year": None, "genres": ["Drama"]}})
    assert resp.status_code == 202, resp.text
    with Session(rt.engine) as session:
        record = session.get(ItemRecord, "film")
        assert record is not None and set(record.media) == {"image"} and record.revision == 3
        assert record.metadata_ == {"title": "Film (restored)", "genres": ["Drama"]}
        job = session.get(Job, resp.json()["job_id"])
        assert job is not None and job.item_id == "film" and job.revision == 3
    assert client.patch("/items/nobody", json={"metadata": {"title": "x"}}).status_code == 404
    assert client.patch("/items/film", json={"metadata": {"title": {"nested": 1}}}).status_code == 422
    assert client.patch("/items/film", json={"title": "x"}).status_code == 422
