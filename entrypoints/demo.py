"""Entry points: the demo run — train on a catalogue, serve it, ingest the cold items over HTTP, and measure
cold-start quality. `Server` runs the API on a thread of this process (the demo's and the benches')."""

from __future__ import annotations

import json
import os
import random
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import uvicorn

from entrypoints.runtime import build_runtime, create_app
from services.events import import_interactions
from services.runtime import Runtime
from thaw.client import ThawAPIError, ThawClient
from thaw.datasets import Dataset, Item, Split
from thaw.evaluation import evaluate_rankings, user_positives
from thaw.settings import Settings


class Server:
    """uvicorn on a background thread of this process (the embedded default: one process owns Qdrant)."""

    def __init__(self, settings: Settings, runtime: Runtime) -> None:
        config = uvicorn.Config(create_app(settings, runtime), host="127.0.0.1", port=0, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        port = self.server.servers[0].sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    def __enter__(self) -> Server:
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the API server did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


def upload(client: httpx.Client, item: Item) -> str:
    """POST one dataset item to /items as multipart (metadata + media files); returns the job id."""
    files = {}
    for field, path in (("image", item.image), ("audio", item.audio)):
        if path is not None:
            files[field] = (path.name, path.read_bytes(), "application/octet-stream")
    data = {"item_id": item.item_id, "metadata": json.dumps(item.fields)}
    resp = client.post("/items", data=data, files=files or None)
    if resp.status_code != 202:
        raise RuntimeError(f"upload of {item.item_id} failed: {resp.status_code} {resp.text}")
    return str(resp.json()["job_id"])


def run_demo(ds: Dataset, split: Split, data_dir: Path, *, seed: int = 0, progress: bool = True) -> dict[str, Any]:
    from encoders.artifacts import save_version
    from encoders.training import TrainConfig, train
    from services.embedding import index_dataset

    if data_dir.exists():
        shutil.rmtree(data_dir)
    settings = Settings(data_dir=data_dir, log_level=os.environ.get("THAW_LOG_LEVEL", "WARNING"))  # a report, not a log
    rt = build_runtime(settings)
    t0 = time.perf_counter()
    model = train(ds, split, TrainConfig(seed=seed), progress=progress)
    save_version(model, rt.registry)
    train_s = time.perf_counter() - t0
    index_dataset(rt, model, ds, split.warm)
    import_interactions(rt, ds.interactions.for_items(split.warm))

    cold = [i for i in split.cold_test if ds.items[i].modalities]
    latencies, failed = [], []
    with Server(settings, rt) as server, ThawClient(server.url) as thaw:
        for item_id in cold:
            start = time.perf_counter()
            item = ds.items[item_id]
            accepted = thaw.upload_item(item_id, item.fields, image=item.image, audio=item.audio)
            job = thaw.wait_job(accepted["job_id"], poll_s=0.01)
            if job["status"] != "succeeded":
                failed.append({"item_id": item_id, "error": job["error"]})
                continue
            latencies.append(time.perf_counter() - start)
        positives = user_positives(ds.interactions, cold)
        rankings: dict[str, list[str]] = {}
        for user in positives:
            try:
                recs = thaw.recommendations(user, k=len(cold), cold_only=True)
            except ThawAPIError:  # a user the service cannot serve is left out of the figures
                continue
            rankings[user] = [r["item_id"] for r in recs["items"]]
        similar = thaw.similar(cold[0], k=5)
    rng = random.Random(seed)
    random_rankings = {u: rng.sample(cold, len(cold)) for u in positives}
    metrics = {
        name: {
            m: round(v, 4)
            for m, v in evaluate_rankings(r, positives, n_items=len(cold), ks=(20,)).items()
            if m in ("recall@20", "ndcg@20")
        }
        for name, r in (("thaw", rankings), ("random", random_rankings))
    }
    rt.close()
    return {
        "items_ingested": len(latencies),
        "items_failed": failed,
        "servable_latency_s": {
            "p50": round(float(np.percentile(latencies, 50)), 4) if latencies else None,
            "p95": round(float(np.percentile(latencies, 95)), 4) if latencies else None,
        },
        "cold": metrics,
        "n_users_evaluated": len(positives),
        "n_cold_items": len(cold),
        "model_version": model.version,
        "train_s": round(train_s, 1),
        "example_similar": similar,
    }
