"""Regression corpus: every input a black-box probe once answered with a 500, or let through a limit, now gets its
4xx with a reason (the API with a served model and an empty index: each is refused at the door)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from entrypoints.runtime import build_runtime, create_app
from indexer.collections import activate, ensure_collections
from tests.helpers import plant_version
from thaw.settings import Settings

JSON = {"content-type": "application/json"}
LIMIT = 4096  # THAW_MAX_UPLOAD_BYTES in this corpus


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    settings = Settings(data_dir=tmp_path_factory.mktemp("corpus"), max_upload_bytes=LIMIT)
    rt = build_runtime(settings)
    plant_version(rt.registry.root, "v1", dim=4, embedding_dims={"text": 4}, modalities=["text", "image", "audio"])
    ensure_collections(rt.index, "v1", 4, {"text": 4})
    activate(rt.index, "v1")  # past the 503 that every model route gives before training
    with TestClient(create_app(settings, runtime=rt)) as c:
        yield c
    rt.close()


def multipart(fields: dict[str, bytes]) -> tuple[bytes, dict[str, str]]:
    """A multipart body by hand (any bytes in any field); the media fields go as files."""
    boundary = "corpusboundary"
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"'.encode()
        + (f'; filename="{name}.bin"'.encode() if name in ("image", "audio") else b"")
        + b"\r\n\r\n"
        + value
        + b"\r\n"
        for name, value in fields.items()
    ]
    headers = {"content-type": f"multipart/form-data; boundary={boundary}"}
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), headers


def chunks(data: bytes, size: int = 65536) -> Iterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


NAN_BODIES = [
    ("/events", '{"user_id":"1","item_id":"1","weight":NaN}'),
    ("/events", '{"user_id":"1","item_id":"1","weight":Infinity}'),
    ("/events", '[{"user_id":"1","item_id":"1","weight":-Infinity}]'),
    ("/experiments", '{"name":"x","control":"a","arms":[{"name":"a","policy":"random","share":NaN}]}'),
    ("/jobs/reembed", '{"model_version":"v1","max_failed_share":NaN}'),
    ("/jobs/reembed", '{"model_version":"v1","filter":{"a..b":1}}'),
    ("/items", '{"item_id":"x1","metadata":{"title":NaN}}'),
    ("/items", '{"item_id":"x1","metadata":{"title":"\\ud800 x"}}'),
    ("/items", '{"item_id":"x1\\n","metadata":{"title":"a"}}'),
    ("/items", '{"item_id":" x1","metadata":{"title":"a"}}'),
    ("/items", '{"item_id":"x1","metadata":' + "[" * 5000 + "]" * 5000 + "}"),
]


@pytest.mark.parametrize(("path", "body"), NAN_BODIES)
def test_json_bodies_that_fail_validation_get_a_422_with_issues(client: TestClient, path: str, body: str) -> None:
    resp = client.post(path, content=body, headers=JSON)
    assert resp.status_code == 422, resp.text
    detail = resp.json()["detail"]
    if path != "/items":  # an item's metadata is checked after its schema: a message
        assert isinstance(detail, list) and all({"loc", "msg", "type"} <= set(issue) for issue in detail)


@pytest.mark.parametrize("key", ["", ".", "a..b", "[]", "a b", "\ud800"])
def test_filter_keys_must_be_field_names(client: TestClient, key: str) -> None:
    resp = client.get("/items/x1/similar", params={"filter": json.dumps({key: 1})})
    assert resp.status_code == 422 and "filter" in resp.json()["detail"], resp.text


@pytest.mark.parametrize("value", ["NaN", "Infinity", "[" * 5000 + "]" * 5000])
def test_filter_values_must_be_plain(client: TestClient, value: str) -> None:
    resp = client.get("/items/x1/similar", params={"filter": '{"a":' + value + "}"})
    assert resp.status_code == 422, resp.text


@pytest.mark.parametrize(
    ("metadata", "reason"),
    [
        (b'{"title":"\\ud800 x"}', "lone surrogate"),
        (b'{"title":NaN}', "finite"),
        (b'{"title":"a","year":-Infinity}', "finite"),
        (b"[" * 5000 + b"]" * 5000, "nested too deeply"),
        ('{"title":"caf\u00e9"}'.encode("latin-1"), "not UTF-8"),
        (b'{"title":"a","tags":[true]}', "string, number or list"),
    ],
)
def test_multipart_metadata_is_checked(client: TestClient, metadata: bytes, reason: str) -> None:
    body, headers = multipart({"item_id": b"x1", "metadata": metadata})
    resp = client.post("/items", content=body, headers=headers)
    assert resp.status_code == 422 and reason in resp.json()["detail"], resp.text


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"item_id=x1&metadata=%7B%22title%22%3A%22caf%E9%22%7D", "malformed form body"),  # Latin-1, not UTF-8
        (b"item_id=x1&metadata=%7B%22title%22%3ANaN%7D", "finite"),
        (b"item_id=x1%0A&metadata=%7B%7D", "item_id"),
        (b"&".join([b"a=1"] * 20), "malformed form body"),
    ],
)
def test_url_encoded_forms_are_checked_as_strictly(client: TestClient, body: bytes, reason: str) -> None:
    resp = client.post("/items", content=body, headers={"content-type": "application/x-www-form-urlencoded"})
    assert resp.status_code == 422 and reason in resp.json()["detail"], resp.text


def test_a_url_encoded_form_is_an_upload(client: TestClient) -> None:
    resp = client.post("/items", data={"item_id": "form-1", "metadata": '{"title": "caf\u00e9 night"}'})
    assert resp.status_code == 202, resp.text


@pytest.mark.parametrize("item_id", [b"x1\n", b"x1 ", b" x1", b"x\t1"])
def test_ids_with_whitespace_are_refused(client: TestClient, item_id: bytes) -> None:
    body, headers = multipart({"item_id": item_id, "metadata": b'{"title":"a"}'})
    resp = client.post("/items", content=body, headers=headers)
    assert resp.status_code == 422 and "item_id" in resp.json()["detail"], resp.text
    assert client.get("/items/x1%0A").status_code == 422


def test_one_metadata_limit_however_it_arrives(client: TestClient) -> None:
    big = json.dumps({"title": "a", "description": "x" * (1024 * 1024)}).encode()
    body, headers = multipart({"item_id": b"x1", "metadata": big})
    assert client.post("/items", content=body, headers=headers).status_code == 413
    resp = client.post("/items", content=json.dumps({"item_id": "x1", "metadata": json.loads(big)}), headers=JSON)
    assert resp.status_code == 413


def test_chunked_bodies_are_counted_as_they_arrive(client: TestClient) -> None:
    events = json.dumps([{"user_id": "u", "item_id": "i"}] * 200_000).encode()  # ~7 MB, no Content-Length
    resp = client.post("/events", content=chunks(events), headers=JSON)
    assert resp.status_code == 413 and "limit" in resp.json()["detail"]
    item = json.dumps({"item_id": "x1", "metadata": {"title": "x" * 3_000_000}}).encode()
    assert client.post("/items", content=chunks(item), headers=JSON).status_code == 413
    body, headers = multipart({"item_id": b"x1", "metadata": b"{}", "image": b"\x89PNG" + b"\0" * 3_000_000})
    resp = client.post("/items", content=chunks(body), headers=headers)
    assert resp.status_code == 413 and "request body exceeds" in resp.json()["detail"]
    body, headers = multipart({"item_id": b"x1", "metadata": b"{}", "image": b"\x89PNG" + b"\0" * (2 * LIMIT)})
    resp = client.post("/items", content=body, headers=headers)
    assert resp.status_code == 413 and "image is larger" in resp.json()["detail"]
    declared = {**JSON, "content-length": str(10**9)}
    assert client.post("/events", content=b"{}", headers=declared).status_code == 413


def test_stored_datetimes_carry_their_offset(client: TestClient) -> None:
    resp = client.post("/items", json={"item_id": "dated", "metadata": {"title": "a night in the city"}})
    assert resp.status_code == 202, resp.text
    job = client.get(f"/jobs/{resp.json()['job_id']}").json()
    assert job["created_at"].endswith(("+00:00", "Z")), job
