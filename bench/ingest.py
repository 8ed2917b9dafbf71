"""Ingest throughput per modality on the embedded default, next to the raw encoder throughput on the same items
in the same run (the pipeline's efficiency ratio), and upload->servable latency p50/p95."""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from encoders.artifacts import save_version  # noqa: E402
from encoders.features import ItemInput, item_inputs  # noqa: E402
from encoders.training import TrainConfig, train  # noqa: E402
from entrypoints.demo import Server, upload  # noqa: E402
from entrypoints.runtime import build_runtime  # noqa: E402
from services.embedding import index_dataset  # noqa: E402
from services.events import import_interactions  # noqa: E402
from thaw.client import wait_job  # noqa: E402
from thaw.datasets import Item, load_dataset, split_items  # noqa: E402
from thaw.settings import Settings  # noqa: E402
from thaw.synthetic import generate_catalog  # noqa: E402

MODES = {"text": ("text",), "image": ("image",), "audio": ("audio",), "all": ("text", "image", "audio")}


def restrict(item: Item, keep: tuple[str, ...], new_id: str) -> Item:
    return Item(
        new_id,
        item.fields if "text" in keep else {},
        item.image if "image" in keep else None,
        item.audio if "audio" in keep else None,
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--items", type=int, default=40, help="items per modality")
    parser.add_argument("--json", type=Path, required=True)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="thaw-bench-"))
    ds = load_dataset(generate_catalog(root / "catalog", n_items=400, n_users=300, seed=1))
    split = split_items(ds, seed=0)
    settings = Settings(data_dir=root / "state")
    rt = build_runtime(settings)
    model = train(ds, split, TrainConfig(epochs=10), progress=False)
    save_version(model, rt.registry)
    index_dataset(rt, model, ds, split.warm)
    import_interactions(rt, ds.interactions.for_items(split.warm))
    full = [ds.items[i] for i in sorted(ds.items) if len(ds.items[i].modalities) == 3][: args.items]
    results: dict[str, dict[str, float]] = {}
    with Server(settings, rt) as server, httpx.Client(base_url=server.url, timeout=120) as client:
        for mode, keep in MODES.items():
            items = [restrict(it, keep, f"b-{mode}-{it.item_id}") for it in full]
            inputs = item_inputs(ds, [it.item_id for it in full])
            inputs = [
                ItemInput(
                    f"r-{i.item_id}",
                    i.text if "text" in keep else None,
                    i.image if "image" in keep else None,
                    i.audio if "audio" in keep else None,
                )
                for i in inputs
            ]
            model.encode(inputs[:2])  # warm-up
            t = time.perf_counter()
            for inp in inputs:  # one item at a time, as a task does
                model.encode([inp])
            raw = len(inputs) / (time.perf_counter() - t)
            t = time.perf_counter()
            with ThreadPoolExecutor(4) as pool:  # uploads in flight at once, the worker drains the queue
                jobs = list(pool.map(lambda it: upload(client, it), items))
            done = [wait_job(client, j) for j in jobs]
            pipeline = len(items) / (time.perf_counter() - t)
            assert all(j["status"] == "succeeded" for j in done), done
            latencies = []
            for it in items[:15]:
                again = restrict(it, keep, it.item_id + "-lat")
                t = time.perf_counter()
                wait_job(client, upload(client, again))
                latencies.append(time.perf_counter() - t)
            results[mode] = {
                "encoder_items_per_s": round(raw, 2),
                "pipeline_items_per_s": round(pipeline, 2),
                "efficiency_ratio": round(pipeline / raw, 3),
                "servable_p50_s": round(float(np.percentile(latencies, 50)), 4),
                "servable_p95_s": round(float(np.percentile(latencies, 95)), 4),
            }
            print(mode, results[mode])
    rt.close()
    out = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}",
        "items_per_modality": len(full),
        "results": results,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
