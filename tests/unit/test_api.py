"""API without a worker: API keys, health, and clear errors before any model exists."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from entrypoints.runtime import create_app
from thaw.settings import Settings

K1, K2 = "k1-0123456789abcdef", "k2-0123456789abcdef"


@pytest.fixture()
def app_client(tmp_path: Path) -> TestClient:
    return TestClient(create_app(Settings(data_dir=tmp_path, api_keys=[K1, K2], environment="production")))


def test_api_keys_guard_everything_but_health(app_client: TestClient) -> None:
    assert app_client.get("/health").status_code == 200
    for path in ("/items/x", "/jobs/x", "/users/u/recommendations", "/metrics", "/docs", "/openapi.json"):
        resp = app_client.get(path)
        assert resp.status_code == 401 and "API key" in resp.json()["detail"], path
        assert resp.headers["www-authenticate"].startswith("Bearer")
    assert app_client.get("/jobs/x", headers={"X-API-Key": "wrong"}).status_code == 401
    assert app_client.get("/jobs/x", headers={"X-API-Key": K2}).status_code == 404
    assert app_client.get("/jobs/x", headers={"Authorization": f"Bearer {K1}"}).status_code == 404
    # a right key does not make a wrong one pass
    assert app_client.get("/jobs/x", headers={"Authorization": f"Bearer {K1}", "X-API-Key": "wrong"}).status_code == 401
    assert app_client.get("/openapi.json", headers={"X-API-Key": K1}).status_code == 200
    assert b"thaw_http_requests_total" in app_client.get("/metrics", headers={"X-API-Key": K1}).content


def test_the_key_is_checked_before_the_body_is_read(app_client: TestClient) -> None:
    resp = app_client.post("/events", content=b"{not json", headers={"content-type": "application/json"})
    assert resp.status_code == 401  # not a 422 with parser details


def test_docs_are_public_in_development_only(tmp_path: Path) -> None:
    client = TestClient(create_app(Settings(data_dir=tmp_path, api_keys=[K1])))
    assert client.get("/openapi.json").status_code == 200
    assert client.get("/jobs/x").status_code == 401


def test_metrics_labels_are_bounded(tmp_path: Path) -> None:
    client = TestClient(create_app(Settings(data_dir=tmp_path)))
    for k in range(20):
        client.request(f"M{k}", "/jobs/x")
        client.get(f"/nowhere/{k}")
        client.get(f"/jobs/job{k}")
    text = client.get("/metrics").text
    series = [line for line in text.splitlines() if line.startswith("thaw_http_requests_total{")]
    assert 'method="OTHER"' in text and 'route="/jobs/{job_id}"' in text and 'route="unmatched"' in text
    assert not any("M1" in line or "job1" in line or "nowhere" in line for line in series)
    assert len(series) <= 6, series


def test_no_model_yet_is_a_clear_503(app_client: TestClient) -> None:
    resp = app_client.get("/users/u1/recommendations", headers={"X-API-Key": K1})
    assert resp.status_code == 503 and "thaw train" in resp.json()["detail"]
    assert app_client.get("/health").json()["model_version"] is None


def test_settings_refuse_contradictions() -> None:
    with pytest.raises(ValueError, match="THAW_API_KEYS must be set"):
        Settings(environment="production")
    with pytest.raises(ValueError, match="positive"):
        Settings(max_upload_bytes=0)


def test_api_keys_come_comma_separated_and_fail_closed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("THAW_API_KEYS", f"{K1}, {K2}")
    assert Settings().api_keys == [K1, K2]
    monkeypatch.setenv("THAW_API_KEYS", K1)
    assert Settings().api_keys == [K1]
    for bad in (f"{K1},", f'["{K1}",""]', "changethis", f"{K1},short"):
        monkeypatch.setenv("THAW_API_KEYS", bad)
        with pytest.raises(ValueError, match="at least 16 characters"):
            Settings()
    with pytest.raises(ValueError, match="at least 16 characters"):
        Settings(api_keys=[K1, ""])
    monkeypatch.setenv("THAW_API_KEYS", "")
    assert Settings().api_keys == []


def test_index_refuses_contradictory_arguments(tmp_path: Path) -> None:
    from indexer.collections import Index

    with pytest.raises(ValueError, match="exactly one"):
        Index(url="http://x:6333", path=tmp_path)
    with pytest.raises(ValueError, match="exactly one"):
        Index()
    with pytest.raises(ValueError, match="api_key applies to a Qdrant server"):
        Index(path=tmp_path, api_key="secret")


EXEMPT = ("/health", "/metrics", "/models", "/jobs", "/docs", "/openapi.json", "/redoc")  # usable with nothing served


def test_every_route_before_training_is_a_clear_503(tmp_path: Path) -> None:
    """Before any model is served, every route that reads or writes the served index answers 503 naming `thaw
    train`, whatever the request; the model and job routes (how a trained version gets indexed) never answer 500."""
    app = create_app(Settings(data_dir=tmp_path))
    client = TestClient(app)
    checked = 0
    for route, operations in app.openapi()["paths"].items():  # every route the app serves
        path = route.replace("{", "").replace("}", "")  # /items/{item_id} -> /items/item_id
        for method in operations:
            resp = client.request(method.upper(), path, json={})
            if route.startswith(EXEMPT):
                assert resp.status_code < 500, (method, route, resp.text)
                continue
            assert resp.status_code == 503, (method, route, resp.text)
            assert "thaw train" in resp.json()["detail"], (method, route)
            checked += 1
    assert checked >= 8


def test_cli_against_a_stopped_server_says_so_in_one_line() -> None:
    from typer.testing import CliRunner

    from entrypoints.cli import app
    from tests.helpers import free_port

    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    for args in (["models"], ["activate", "v1"], ["ingest", "x", "--metadata", '{"title": "t"}']):
        result = CliRunner().invoke(app, [*args, "--url", url])
        assert result.exit_code == 1, result.output
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and "cannot reach the Thaw service" in lines[0] and url in lines[0], result.output
