"""Re-embedding throughput with 1 and 2 `celery worker` processes (real Redis broker, the API under uvicorn owning the
embedded index, the workers its peers), each next to the raw encoder throughput measured in the same run just before
it: `ThawModel.encode` on the same items, decoded beforehand, in batches of the chunk size (32), in as many processes
as workers with the torch thread count of one worker (bench/ingest.py's baseline). Runs with torch's default thread
count and with one thread per worker."""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]

from bench.ingest import raw_encoder  # noqa: E402
from encoders.artifacts import save_version  # noqa: E402
from encoders.training import TrainConfig, train  # noqa: E402
from entrypoints.demo import upload  # noqa: E402
from entrypoints.runtime import build_celery, build_runtime  # noqa: E402
from services.embedding import index_dataset  # noqa: E402
from services.events import import_interactions  # noqa: E402
from tests.helpers import free_port, wait_port  # noqa: E402
from thaw.client import wait_job  # noqa: E402
from thaw.datasets import load_dataset, split_items  # noqa: E402
from thaw.settings import Settings  # noqa: E402


def run_job(client: httpx.Client, version: str) -> dict[str, Any]:
    """One re-embedding job; its duration is the API's own record, from the POST to the alias swap."""
    started = client.post("/jobs/reembed", json={"model_version": version})
    started.raise_for_status()
    job = wait_job(client, started.json()["job_id"], timeout=3600, poll_s=0.5)  # slow polls: 2 cores
    p = job["progress"]
    if job["status"] != "succeeded" or p["failed"] or p["skipped"] or not p["switched"]:
        raise RuntimeError(f"re-embedding job did not do the full work: {job}")
    wall = (datetime.fromisoformat(job["finished_at"]) - datetime.fromisoformat(job["created_at"])).total_seconds()
    return {"items": p["total"], "wall_s": round(wall, 2), "items_per_s": round(p["total"] / wall, 2)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--items", type=int, default=200, help="catalogue items (text + image + audio each)")
    parser.add_argument("--chunk-size", type=int, default=32)
    parser.add_argument("--json", type=Path, required=True)
    args = parser.parse_args()
    redis_exe = shutil.which("redis-server")
    if redis_exe is None:
        sys.exit("needs redis-server (Debian package redis-server)")
    root = Path(tempfile.mkdtemp(prefix="thaw-bench-reembed-"))
    from thaw.synthetic import generate_catalog

    catalog = generate_catalog(root / "catalog", n_items=400, n_users=300, seed=1)
    ds = load_dataset(catalog)
    split = split_items(ds, seed=0)
    port = free_port()
    broker = f"redis://127.0.0.1:{port}/0"
    redis = subprocess.Popen(
        [redis_exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(root)],
        stdout=subprocess.DEVNULL,
    )
    wait_port(port)
    settings = Settings(data_dir=root / "state", broker_url=broker, reembed_chunk_size=args.chunk_size)
    rt = build_runtime(settings)
    v1 = train(ds, split, TrainConfig(epochs=10), progress=False)
    save_version(v1, rt.registry)
    v2 = train(ds, split, TrainConfig(epochs=10, seed=1, factors=16), progress=False)  # other vector sizes
    save_version(v2, rt.registry)
    for _ in range(3):  # v3..v5: v2's weights, so every run does the same work into fresh collections
        v2.config = v2.config.model_copy(update={"version": ""})
        save_version(v2, rt.registry)
    items = [i for i in sorted(ds.items) if len(ds.items[i].modalities) == 3][: args.items]
    index_dataset(rt, v1, ds, items)
    import_interactions(rt, ds.interactions.for_items(split.warm))
    rt.close()  # gives up the embedded index: the API owns it, as in a deployment
    rt = build_runtime(settings)  # the database only, from here on
    env = {
        **os.environ,
        "THAW_DATA_DIR": str(settings.data_dir),
        "THAW_BROKER_URL": broker,
        "THAW_REEMBED_CHUNK_SIZE": str(args.chunk_size),
        "OPENBLAS_NUM_THREADS": "1",
        "PYTHONPATH": str(ROOT),
    }
    api_port = free_port()
    api = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "entrypoints.runtime:create_app", "--factory", "--port", str(api_port)]
        + ["--log-level", "warning"],
        env=env,
        cwd=ROOT,
    )
    wait_port(api_port)
    control = build_celery(settings).control
    import torch

    default_threads = torch.get_num_threads()
    runs = []
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{api_port}", timeout=120) as client:
            configs = [(1, default_threads), (2, default_threads), (1, 1), (2, 1)]
            for (n_workers, threads), version in zip(configs, ("v2", "v3", "v4", "v5"), strict=True):
                load_before = os.getloadavg()[0]
                # baseline, with no worker running
                model_dir, n, chunk = rt.registry.path(version), args.items, args.chunk_size
                raw, _ = raw_encoder(catalog, model_dir, "all", n, n_workers, seconds=5.0, threads=threads, batch=chunk)
                workers = [
                    subprocess.Popen(
                        [sys.executable, "-m", "celery", "-A", "entrypoints.worker", "worker", "-P", "solo", "-c", "1"]
                        + ["--without-heartbeat", "--without-mingle", "--without-gossip", "-l", "WARNING"]
                        + ["-n", f"bench{k}@%h"],
                        env={**env, "OMP_NUM_THREADS": str(threads)},
                        cwd=ROOT,
                    )
                    for k in range(n_workers)
                ]
                while len(control.ping(timeout=1.0) or []) < n_workers:
                    pass
                # warm-up: each worker loads the backbones on its first upload (the same items in both runs)
                warm = [upload(client, ds.items[i]) for i in items[: 2 * n_workers]]
                for job_id in warm:
                    wait_job(client, job_id, timeout=600, poll_s=0.5)
                job = run_job(client, version)
                for w in workers:
                    w.terminate()
                    w.wait(60)
                runs.append(
                    {
                        "workers": n_workers,
                        "torch_threads_per_process": threads,
                        "reembed": job,
                        "raw_items_per_s": round(raw, 2),
                        "efficiency": round(job["items_per_s"] / raw, 3),
                        "load_average_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)],
                    }
                )
                print(json.dumps(runs[-1]))
    finally:
        api.terminate()
        api.wait(30)
        redis.terminate()
        redis.wait(10)
        rt.close()
    result = {
        "machine": {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count()},
        "items": args.items,
        "chunk_size": args.chunk_size,
        "modalities": "text + 64x64 image + 3 s audio per item",
        "runs": runs,
        "speedup_2_vs_1_workers": {
            f"{runs[k]['torch_threads_per_process']} torch threads per process": round(
                runs[k + 1]["reembed"]["items_per_s"] / runs[k]["reembed"]["items_per_s"], 3
            )
            for k in (0, 2)
        },
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
