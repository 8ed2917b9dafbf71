"""thaw.client against a live server (uvicorn on a loopback port over the embedded runtime, planted vectors in two
model versions, an API key required): every route of the OpenAPI has a client method, the sync and async clients'
round trips, errors as ThawAPIError with the server's reason, recommendations' `exclude` and `explain`, and `thaw
models` through the client."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from entrypoints.cli import app as cli
from entrypoints.runtime import create_app
from indexer.collections import ITEMS, collection_name
from indexer.search import get_items
from indexer.writer import ItemPoint, upsert_items
from services.runtime import Runtime
from tests.unit.test_manage_api import VERSIONS, _png, planted_server
from thaw.client import FINISHED, AsyncThawClient, Endpoint, ThawAPIError, ThawClient, _Endpoints
from thaw.schema import CONTENT
from thaw.settings import Settings

KEY = "k-0123456789abcdef"
Keyed = tuple[str, Runtime]


@pytest.fixture()
def keyed(tmp_path: Path) -> Iterator[Keyed]:
    """`planted_server` that requires the API key KEY."""
    with planted_server(Settings(data_dir=tmp_path, api_keys=[KEY])) as served:
        yield served


def _plant(rt: Runtime, item_id: str, content: list[float]) -> None:
    """The point an embedding would write, in every version (the planted versions have no network to encode)."""
    vectors = {CONTENT: np.array(content, np.float32), "text": np.ones(3, np.float32), "image": np.ones(2, np.float32)}
    for version in VERSIONS:
        point = ItemPoint(item_id, vectors, {"interactions": 0, "modalities": ["text", "image"]})
        upsert_items(rt.index, collection_name(ITEMS, version), [point], keep_cf=False)


def test_every_route_of_the_openapi_has_a_client_method(tmp_path: Path) -> None:
    routes = {
        (method.upper(), path)
        for path, ops in create_app(Settings(data_dir=tmp_path)).openapi()["paths"].items()
        for method in ops
    }
    methods = {name: e for name, e in vars(_Endpoints).items() if isinstance(e, Endpoint)}
    covered = {(e.method, e.route) for e in methods.values()}
    assert routes - covered == set(), "routes without a client method"
    assert covered - routes == set(), "client methods without a route"
    sync, aio = ThawClient(), AsyncThawClient()
    for name in methods:  # each is callable on both clients
        assert callable(getattr(sync, name)) and callable(getattr(aio, name))
    sync.close()
    asyncio.run(aio.aclose())


def test_sync_round_trip_with_the_key_and_errors_with_the_servers_reason(keyed: Keyed) -> None:
    url, rt = keyed
    with ThawClient(url) as anonymous:
        assert anonymous.health()["model_version"] == "v1"  # public
        with pytest.raises(ThawAPIError) as refused:
            anonymous.get_item("w0")
        assert refused.value.status_code == 401 and "API key" in refused.value.reason
    with ThawClient(url, api_key=KEY) as thaw:
        accepted = thaw.upload_item("fresh-1", {"title": "Fresh"}, image=_png())
        assert accepted["item_id"] == "fresh-1"
        job = thaw.wait_job(accepted["job_id"], timeout=60)
        assert job["status"] in FINISHED and job["item_id"] == "fresh-1"
        assert [j["job_id"] for j in thaw.list_jobs(kind="embed")["jobs"]] == [job["job_id"]]
        _plant(rt, "fresh-1", [0.0, 0.1, 1.0, 0.0])  # c1's content
        item = thaw.get_item("fresh-1")
        assert item["indexed"] and item["metadata"] == {"title": "Fresh"}
        assert thaw.similar("c1", k=1)["items"][0]["item_id"] == "fresh-1"
        assert "fresh-1" in [i["item_id"] for i in thaw.list_items(limit=500)["items"]]
        recs = thaw.recommendations("u00", k=20, cold_only=True)
        assert "fresh-1" in [r["item_id"] for r in recs["items"]] and recs["model_version"] == "v1"
        assert thaw.send_events({"user_id": "u00", "item_id": "fresh-1"})["accepted"] == 1
        assert thaw.user_history("u00")["events"][0]["item_id"] == "fresh-1"
        assert thaw.delete_item("fresh-1") is None
        with pytest.raises(ThawAPIError) as gone:
            thaw.get_item("fresh-1")
        assert gone.value.status_code == 404 and "fresh-1" in gone.value.reason
        with pytest.raises(ThawAPIError) as bad:
            thaw.recommendations("u00", k=0)
        assert bad.value.status_code == 422 and bad.value.reason.startswith("query.k:"), bad.value.reason
        with pytest.raises(ThawAPIError) as unknown:
            thaw.reembed("v9")
        assert unknown.value.status_code == 404 and "v9" in unknown.value.reason
        assert thaw.erase_user("u01") is None
        assert "thaw_http_requests_total" in thaw.metrics()


def test_async_round_trip_mirrors_the_sync_one(keyed: Keyed) -> None:
    url, rt = keyed

    async def run() -> None:
        async with AsyncThawClient(url, api_key=KEY) as thaw:
            accepted = await thaw.upload_item("fresh-2", {"title": "Async"}, image=_png())
            job = await thaw.wait_job(accepted["job_id"], timeout=60)
            assert job["status"] in FINISHED and job["item_id"] == "fresh-2"
            _plant(rt, "fresh-2", [0.0, 0.1, 1.0, 0.0])
            assert (await thaw.similar("c1", k=1))["items"][0]["item_id"] == "fresh-2"
            recs = await thaw.recommendations("u00", k=20, cold_only=True, explain=True)
            assert "fresh-2" in [r["item_id"] for r in recs["items"]]
            assert await thaw.delete_item("fresh-2") is None
            with pytest.raises(ThawAPIError) as again:
                await thaw.delete_item("fresh-2")
            assert again.value.status_code == 404
            experiment = await thaw.create_experiment(
                "client", [{"name": "a", "policy": "thaw", "share": 0.5}, {"name": "b", "policy": "popularity",
                "share": 0.5}], "a",
            )  # fmt: skip
            assert (await thaw.get_experiment(experiment["experiment_id"]))["name"] == "client"
            assert (await thaw.stop_experiment(experiment["experiment_id"]))["status"] == "ended"
            assert [e["experiment_id"] for e in await thaw.list_experiments()] == [experiment["experiment_id"]]
            assert (await thaw.experiment_chart(experiment["experiment_id"])).startswith(b"\x89PNG")
        async with AsyncThawClient(url) as anonymous:
            with pytest.raises(ThawAPIError) as refused:
                await anonymous.list_models()
            assert refused.value.status_code == 401

    asyncio.run(run())


def test_explain_names_the_history_items_whose_content_put_each_item_there(keyed: Keyed) -> None:
    url, rt = keyed
    with ThawClient(url, api_key=KEY) as thaw:
        thaw.send_events([{"user_id": "u00", "item_id": "w1"}, {"user_id": "u00", "item_id": "w2"}])
        history = {e["item_id"] for e in thaw.user_history("u00")["events"]}
        assert history == {"w1", "w2", "w5"}
        plain = thaw.recommendations("u00", k=6)
        recs = thaw.recommendations("u00", k=6, explain=True)
    assert [r["item_id"] for r in recs["items"]] == [r["item_id"] for r in plain["items"]]
    assert all(r.get("because") is None for r in plain["items"])
    served = {h.item_id: h.vectors[CONTENT] for h in get_items(rt.index, [*history], vectors=[CONTENT])}
    units = {i: v / np.linalg.norm(v) for i, v in served.items()}
    for rec in recs["items"]:
        because = rec["because"]
        assert because is not None and because["source"] == "history", rec
        assert set(because["items"]) <= history and because["items"], rec
        (hit,) = get_items(rt.index, [rec["item_id"]], vectors=[CONTENT])
        content = hit.vectors[CONTENT] / np.linalg.norm(hit.vectors[CONTENT])
        cosines = {i: float(content @ u) for i, u in units.items()}
        expected = sorted((i for i in cosines if cosines[i] > 0), key=lambda i: -cosines[i])
        assert because["items"] == expected[:3], (rec, cosines)
        assert because["similarity"] == pytest.approx([cosines[i] for i in expected[:3]], abs=1e-3)


def test_exclude_leaves_the_ids_out_and_the_rest_in_order(keyed: Keyed) -> None:
    url, _ = keyed
    with ThawClient(url, api_key=KEY) as thaw:
        everything = [r["item_id"] for r in thaw.recommendations("u00", k=100)["items"]]  # all 9 but w5 (seen)
        left = [r["item_id"] for r in thaw.recommendations("u00", k=100, exclude=everything[:3])["items"]]
        assert len(everything) == 9 and sorted(left) == sorted(everything[3:]), (everything, left)
        popular = [r["item_id"] for r in thaw.recommendations("somebody-new", k=5)["items"]]  # the fallback
        assert popular == ["w0", "w1", "w2", "w3", "w4"]
        left = [r["item_id"] for r in thaw.recommendations("somebody-new", k=3, exclude=["w0", "w2"])["items"]]
        assert left == ["w1", "w3", "w4"]
        fallback = thaw.recommendations("somebody-new", k=3, exclude=["w0"], explain=True)
        assert fallback["fallback"] == "popularity"
        assert [(r["item_id"], r["because"]) for r in fallback["items"]] == [
            (i, {"source": "popularity", "items": [], "similarity": []}) for i in ("w1", "w2", "w3")
        ]
        for params, status in (({"exclude": ["a" * 300]}, 422), ({"exclude": [f"i{j}" for j in range(1001)]}, 413)):
            with pytest.raises(ThawAPIError) as bad:
                thaw.recommendations("u00", **params)
            assert bad.value.status_code == status and bad.value.reason, params


def test_thaw_models_shows_training_date_data_alpha_and_validation(keyed: Keyed, monkeypatch: Any) -> None:
    url, rt = keyed
    metrics = {"n_interactions": 1234, "validation": {"cold_val_ndcg@20": 0.3125, "n_val_users": 17, "history": []}}
    (rt.registry.path("v1") / "metrics.json").write_text(json.dumps(metrics))
    with ThawClient(url, api_key=KEY) as thaw:
        listing = thaw.list_models()
    v1, v2 = listing["versions"]
    assert v1["served"] and v1["alpha"] == 1.0 and v1["trained_at"]
    assert v1["data"] == {"items": 0, "users": 0, "interactions": 1234}
    assert v1["validation"] == {"cold_val_ndcg@20": 0.3125, "n_val_users": 17}
    assert v2["data"]["interactions"] is None and v2["validation"] == {}
    monkeypatch.setenv("THAW_API_KEYS", KEY)
    result = CliRunner().invoke(cli, ["models", "--url", url], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    row = next(line for line in result.output.splitlines() if line.startswith("│ v1 "))
    assert "0/0/1234" in row and "1.00" in row and "0.3125" in row and "*" in row, result.output
    monkeypatch.delenv("THAW_API_KEYS")
    result = CliRunner().invoke(cli, ["models", "--url", url])
    assert result.exit_code == 1 and "401" in result.output and "API key" in result.output, result.output


def test_thaw_ingest_uploads_through_the_client_and_waits(keyed: Keyed, tmp_path: Path, monkeypatch: Any) -> None:
    url, _ = keyed
    monkeypatch.setenv("THAW_API_KEYS", KEY)
    image = tmp_path / "cover.png"
    image.write_bytes(_png())
    args = ["ingest", "cli-1", "--metadata", '{"title": "From the CLI"}', "--image", str(image), "--url", url]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    job = json.loads(result.output)
    assert job["item_id"] == "cli-1" and job["status"] in FINISHED
    with ThawClient(url, api_key=KEY) as thaw:
        assert thaw.get_item("cli-1")["metadata"] == {"title": "From the CLI"}
    result = CliRunner().invoke(cli, ["ingest", "cli-2", "--metadata", "[1]", "--url", url])
    assert result.exit_code == 2 and "JSON object" in result.output, result.output
