"""Re-embedding jobs end to end: a real Redis broker, two `celery worker` processes, the API over HTTP (uvicorn),
embedded Qdrant shared by the processes. 500 items are re-embedded into a version with other vector sizes while a
client queries without pause, one worker is SIGKILLed and the broker restarted mid-job; then a rollback round trip.
The last test runs jobs in the embedded default (no broker: the in-process worker), with retention and the CLI."""

from __future__ import annotations

import io
import random
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from entrypoints.runtime import build_runtime
from indexer.collections import Index
from indexer.search import payloads
from services.runtime import Runtime
from tests.integration.conftest import ApiServer, RedisServer, Worker, wait_job
from thaw.registry import Registry
from thaw.settings import Settings

pytestmark = pytest.mark.integration

N_ITEMS = 500
WORDS = ["space", "robot", "love", "war", "ghost", "ocean", "detective", "dragon", "comedy", "city", "music", "king"]
USERS = [f"u{k}" for k in range(8)]
BAD = ["bad-0", "bad-1"]  # their stored image is damaged after indexing: re-embedding them fails
NEW = ["new-0", "new-1", "new-2"]  # uploaded while the job runs
CHANGED = ("r499", "changed title: zebra carnival")  # re-uploaded with new text while the job runs
CORRUPT_PNG = b"\x89PNG\r\n\x1a\n" + bytes(40)


def catalogue(n: int) -> dict[str, dict[str, Any]]:
    rng = random.Random(7)
    return {f"r{k:03d}": {"title": " ".join(rng.sample(WORDS, 3)), "genres": rng.sample(WORDS, 2)} for k in range(n)}


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory, service_env: dict[str, str], catalog: Path) -> Path:
    """v1: the session's model; v2: trained with 16 factors instead of 32 (a schema change); v3: v1's weights
    saved again as a new version."""
    from encoders.artifacts import ThawModel, save_version
    from encoders.training import TrainConfig, train
    from thaw.datasets import load_dataset, split_items

    out = tmp_path_factory.mktemp("models")
    shutil.copytree(Path(service_env["THAW_DATA_DIR"]) / "models" / "v1", out / "v1")
    ds = load_dataset(catalog)
    v2 = train(ds, split_items(ds, seed=0), TrainConfig(seed=1, factors=16, epochs=5), progress=False)
    registry = Registry(out)
    save_version(v2, registry)
    v3 = ThawModel.load(out / "v1")
    v3.config = v3.config.model_copy(update={"version": ""})
    save_version(v3, registry)
    assert [p.name for p in sorted(out.iterdir())] == ["v1", "v2", "v3"] and v2.dim == 16
    return out


def serve_v1(settings: Settings, models_dir: Path, n: int) -> Runtime:
    """A data directory serving v1 over `n` text items and the BAD items (text + image)."""
    from encoders.artifacts import ThawModel
    from services.embedding import index_dataset
    from thaw.datasets import Dataset, Interactions, Item

    shutil.copytree(models_dir, settings.models_dir)
    poster = settings.data_dir / "poster.png"
    buf = io.BytesIO()
    Image.new("RGB", (48, 48), (200, 30, 30)).save(buf, format="PNG")
    poster.write_bytes(buf.getvalue())
    items = {item_id: Item(item_id, fields) for item_id, fields in catalogue(n).items()}
    items.update({b: Item(b, {"title": f"broken poster {b}"}, image=poster) for b in BAD})
    none = np.array([], dtype=object)
    ds = Dataset(settings.data_dir, items, Interactions(none, none, np.array([], dtype=np.float32)))
    rt = build_runtime(settings)
    index_dataset(rt, ThawModel.load(settings.models_dir / "v1"), ds, sorted(items))
    for b in BAD:
        rt.store.put(b, "image", CORRUPT_PNG)  # the original rots in the media store
    return rt


@dataclass
class BrokerService:
    env: dict[str, str]
    redis: RedisServer
    api: ApiServer
    data_dir: Path

    def qdrant_count(self, collection: str) -> int:
        index = Index(path=self.data_dir / "qdrant", shared=True)
        with index.session() as client:
            return client.count(collection, exact=True).count

    def points(self, collection: str) -> dict[str, dict[str, Any]]:
        index = Index(path=self.data_dir / "qdrant", shared=True)
        found = payloads(index, collection, ["item_id", "model_version", "metadata"])
        return {str(p["item_id"]): p for p in found}


@pytest.fixture(scope="module")
def broker_service(
    tmp_path_factory: pytest.TempPathFactory, service_env: dict[str, str], models_dir: Path
) -> Iterator[BrokerService]:
    redis = RedisServer(tmp_path_factory.mktemp("redis-reembed"))  # its own: the test restarts it
    data_dir = tmp_path_factory.mktemp("thaw-reembed")
    serve_v1(Settings(data_dir=data_dir, broker_url=redis.url), models_dir, N_ITEMS).close()
    env = {
        **service_env,
        "THAW_DATA_DIR": str(data_dir),
        "THAW_BROKER_URL": redis.url,
        "THAW_BROKER_VISIBILITY_TIMEOUT": "60",
        "THAW_REEMBED_CHUNK_SIZE": "25",
        "THAW_REEMBED_STALL_SECONDS": "15",
    }
    api = ApiServer(env)
    yield BrokerService(env, redis, api, data_dir)
    api.stop()
    redis.stop()


def wait_for_workers(broker_url: str, n: int, timeout: float = 120) -> None:
    from entrypoints.runtime import build_celery

    control = build_celery(Settings(broker_url=broker_url)).control
    deadline = time.monotonic() + timeout
    while len(control.ping(timeout=1.0) or []) < n:
        assert time.monotonic() < deadline, f"fewer than {n} workers answer a ping after {timeout}s"


class Querier(threading.Thread):
    """Similar items and recommendations without pause; every answer must be a 200 with items in it."""

    def __init__(self, url: str, item_ids: list[str]) -> None:
        super().__init__(daemon=True)
        self.url, self.item_ids = url, item_ids
        self.halt = threading.Event()
        self.requests = 0
        self.errors: list[str] = []
        self.versions: list[str] = []  # model_version of each recommendation, in order

    def run(self) -> None:
        rng = random.Random(1)
        with httpx.Client(base_url=self.url, timeout=60) as client:
            while not self.halt.is_set():
                queries = [
                    (f"/items/{rng.choice(self.item_ids)}/similar", {"k": 5}),
                    (f"/users/{rng.choice(USERS)}/recommendations", {"k": 5}),
                ]
                for path, params in queries:
                    try:
                        resp = client.get(path, params=params)
                    except httpx.HTTPError as exc:
                        self.errors.append(f"{path}: {exc!r}")
                        continue
                    self.requests += 1
                    if resp.status_code != 200 or len(resp.json()["items"]) != 5:
                        self.errors.append(f"{path} -> {resp.status_code} {resp.text[:300]}")
                    elif "model_version" in resp.json():
                        self.versions.append(resp.json()["model_version"])


def test_reembed_under_queries_survives_a_killed_worker_and_a_broker_restart(broker_service: BrokerService) -> None:
    svc = broker_service
    meta = sorted(catalogue(N_ITEMS).items())
    good = [item_id for item_id, _ in meta]
    workers = [Worker(svc.env, "a"), Worker(svc.env, "b")]
    querier = Querier(svc.api.url, good)
    try:
        wait_for_workers(svc.redis.url, 2)
        with httpx.Client(base_url=svc.api.url, timeout=60) as client:
            assert client.get("/models").json()["served"] == "v1"
            # both workers load the encoders on an upload first (same content: a new revision, the same hash)
            warm = [client.post("/items", json={"item_id": i, "metadata": m}).json()["job_id"] for i, m in meta[:2]]
            assert all(wait_job(client, w, timeout=120)["status"] == "succeeded" for w in warm)
            querier.start()
            resp = client.post("/jobs/reembed", json={"model_version": "v2"})
            assert resp.status_code == 202, resp.text
            job_id = resp.json()["job_id"]
            assert resp.json()["total"] == N_ITEMS + len(BAD)
            # uploads while the job runs: embedded with v1 (served) and v2 (being filled)
            uploads = [
                client.post("/items", json={"item_id": i, "metadata": {"title": f"{i} lighthouse"}}).json()["job_id"]
                for i in NEW
            ]
            uploads.append(
                client.post("/items", json={"item_id": CHANGED[0], "metadata": {"title": CHANGED[1]}}).json()["job_id"]
            )
            assert all(wait_job(client, u, timeout=120)["status"] == "succeeded" for u in uploads)
            events: dict[str, int] = {}  # what happened with how many items still pending
            deadline = time.monotonic() + 600
            while True:
                job = client.get(f"/jobs/{job_id}").json()
                p = job["progress"]
                if job["status"] in ("succeeded", "failed"):
                    break
                if "kill" not in events and p["done"] + p["failed"] >= 150:
                    workers[0].kill()
                    events["kill"] = p["pending"]
                if "kill" in events and "restart" not in events and p["done"] + p["failed"] >= 300:
                    svc.redis.restart()  # every queued and unacknowledged message is lost
                    events["restart"] = p["pending"]
                assert time.monotonic() < deadline, job
                time.sleep(0.1)
            time.sleep(1.0)  # a little querying on the new version
            models = client.get("/models").json()
    finally:
        querier.halt.set()
        querier.join(60)
        for w in workers:
            w.stop()
    assert events["kill"] > 0 and events["restart"] > 0, events  # both happened mid-job
    assert job["status"] == "succeeded", job
    p = job["progress"]
    assert (p["total"], p["done"], p["failed"], p["pending"]) == (N_ITEMS + 2, N_ITEMS, 2, 0), p
    assert [f["item_id"] for f in p["failures"]] == BAD and all("png image" in f["error"] for f in p["failures"])
    assert p["switched"] and p["source_version"] == "v1" and p["target_version"] == "v2"
    assert models["served"] == "v2"
    # zero downtime: every query answered, with items, before and after the switch
    # the job ran under a steady stream of queries (how many depends on the machine: every session of shared
    # embedded storage loads the whole collection, so this floor is kept low)
    assert querier.errors == [] and querier.requests > 20, querier.errors[:5]
    assert querier.versions[0] == "v1" and querier.versions[-1] == "v2"
    assert sorted(set(querier.versions)) == ["v1", "v2"]
    # exactly one point per item in the new version, written by v2; the uploads landed in both versions
    assert svc.qdrant_count("items__v2") == N_ITEMS + len(NEW)
    v2 = svc.points("items__v2")
    assert sorted(v2) == sorted(good + NEW) and {p["model_version"] for p in v2.values()} == {"v2"}
    assert v2[CHANGED[0]]["metadata"]["title"] == CHANGED[1]
    v1 = svc.points("items__v1")
    assert set(NEW) <= set(v1) and v1[CHANGED[0]]["metadata"]["title"] == CHANGED[1]
    assert {v1[i]["model_version"] for i in NEW} == {"v1"}


def test_rollback_round_trip(broker_service: BrokerService) -> None:
    svc = broker_service
    worker = Worker(svc.env, "rollback")
    try:
        with httpx.Client(base_url=svc.api.url, timeout=60) as client:
            assert client.get("/models").json()["served"] == "v2"
            back = client.post("/models/v1/activate")
            assert back.status_code == 200, back.text
            assert (back.json()["served"], back.json()["previous"]) == ("v1", "v2")
            recs = client.get("/users/u0/recommendations", params={"k": 5}).json()
            assert recs["model_version"] == "v1" and len(recs["items"]) == 5  # at once
            assert client.get(f"/items/{NEW[0]}").json()["model_version"] == "v1"
            catch_up = wait_job(client, back.json()["catch_up_job"], timeout=300)
            assert catch_up["status"] == "succeeded", catch_up
            everything = N_ITEMS + len(BAD) + len(NEW)
            assert (catch_up["progress"]["total"], catch_up["progress"]["skipped"]) == (everything, everything)
            assert catch_up["progress"]["switched"] is False

            again = client.post("/models/v2/activate").json()
            assert (again["served"], again["previous"]) == ("v2", "v1")
            catch_up = wait_job(client, again["catch_up_job"], timeout=300)["progress"]
            assert (catch_up["skipped"], catch_up["failed"]) == (N_ITEMS + len(NEW), len(BAD))  # v2 has them all
            sim = client.get("/items/r000/similar", params={"k": 5}).json()
            assert len(sim["items"]) == 5
            assert client.get("/users/u0/recommendations").json()["model_version"] == "v2"

            missing = client.post("/models/v9/activate")
            assert missing.status_code == 404 and "v9" in missing.json()["detail"]
            never = client.post("/models/v3/activate")
            assert never.status_code == 409 and "no collections" in never.json()["detail"]
            listing = {v["version"]: v for v in client.get("/models").json()["versions"]}
            assert [listing[v]["indexed"] for v in ("v1", "v2", "v3")] == [True, True, False]
            assert (listing["v1"]["dim"], listing["v2"]["dim"]) == (32, 16)
    finally:
        worker.stop()
    assert svc.qdrant_count("items__v2") == N_ITEMS + len(NEW)


def test_embedded_default_failure_share_skip_retention_and_cli(tmp_path: Path, models_dir: Path) -> None:
    """No broker: the in-process worker runs the chunks. Too many failures keep the served version; a retry with a
    larger allowance skips what the failed job already wrote; a third version switches and keep-N removes v1."""
    from entrypoints.cli import app
    from entrypoints.demo import Server

    settings = Settings(
        data_dir=tmp_path, reembed_chunk_size=8, reembed_max_failed_share=0.01, keep_versions=2, reembed_stall_seconds=5
    )
    rt = serve_v1(settings, models_dir, 30)
    with Server(settings, rt) as server, httpx.Client(base_url=server.url, timeout=60) as client:
        first = client.post("/jobs/reembed", json={"model_version": "v2"}).json()
        job = wait_job(client, first["job_id"], timeout=300)
        assert job["status"] == "failed" and "2 of 32 items failed (6.2%)" in job["error"], job
        assert client.get("/models").json()["served"] == "v1"

        second = client.post("/jobs/reembed", json={"model_version": "v2", "max_failed_share": 0.1}).json()
        p = wait_job(client, second["job_id"], timeout=300)["progress"]
        assert (p["done"], p["skipped"], p["failed"], p["switched"]) == (30, 30, 2, True)

        runner = CliRunner()
        result = runner.invoke(app, ["reembed", "--model", "v3", "--max-failed-share", "0.1", "--url", server.url])
        assert result.exit_code == 0, result.output
        assert "switched to v3" in result.output and "bad-0" in result.output
        listing = {v["version"]: v["indexed"] for v in client.get("/models").json()["versions"]}
        assert listing == {"v1": False, "v2": True, "v3": True}  # keep 2: served v3 and the previous v2
        assert runner.invoke(app, ["activate", "v1", "--url", server.url]).exit_code == 1
        result = runner.invoke(app, ["activate", "v2", "--url", server.url])
        assert result.exit_code == 0 and "serving v2 (was v3)" in result.output, result.output
        result = runner.invoke(app, ["models", "--url", server.url])
        assert result.exit_code == 0 and "served: v2" in result.output, result.output
        result = runner.invoke(app, ["reembed", "--resume", second["job_id"], "--url", server.url])
        assert result.exit_code == 1 and "already succeeded" in result.output, result.output
        assert client.get("/users/u1/recommendations").json()["model_version"] == "v2"
