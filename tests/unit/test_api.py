"""API without a worker: API keys, health, and clear errors before any model exists."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from entrypoints.runtime import create_app
from thaw.settings import Settings


@pytest.fixture()
def app_client(tmp_path: Path) -> TestClient:
    return TestClient(create_app(Settings(data_dir=tmp_path, api_keys=["k1", "k2"])))


def test_api_keys_guard_everything_but_health(app_client: TestClient) -> None:
    assert app_client.get("/health").status_code == 200
    for path in ("/items/x", "/jobs/x", "/users/u/recommendations", "/metrics"):
        resp = app_client.get(path)
        assert resp.status_code == 401 and "API key" in resp.json()["detail"]
    assert app_client.get("/jobs/x", headers={"X-API-Key": "wrong"}).status_code == 401
    assert app_client.get("/jobs/x", headers={"X-API-Key": "k2"}).status_code == 404
    assert app_client.get("/jobs/x", headers={"Authorization": "Bearer k1"}).status_code == 404
    assert b"thaw_http_requests_total" in app_client.get("/metrics", headers={"X-API-Key": "k1"}).content


def test_no_model_yet_is_a_clear_503(app_client: TestClient) -> None:
    resp = app_client.get("/users/u1/recommendations", headers={"X-API-Key": "k1"})
    assert resp.status_code == 503 and "thaw train" in resp.json()["detail"]
    assert app_client.get("/health").json()["model_version"] is None


def test_settings_refuse_contradictions() -> None:
    with pytest.raises(ValueError, match="THAW_API_KEYS must be set"):
        Settings(environment="production")
    with pytest.raises(ValueError, match="placeholder"):
        Settings(api_keys=["changethis"])
    with pytest.raises(ValueError, match="positive"):
        Settings(max_upload_bytes=0)
    assert Settings(api_keys="a, b").api_keys == ["a", "b"]  # type: ignore[arg-type]


def test_index_refuses_contradictory_arguments(tmp_path: Path) -> None:
    from indexer.collections import Index

    with pytest.raises(ValueError, match="exactly one"):
        Index(url="http://x:6333", path=tmp_path)
    with pytest.raises(ValueError, match="exactly one"):
        Index()
    with pytest.raises(ValueError, match="shared=True"):
        Index(url="http://x:6333", shared=True)


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
