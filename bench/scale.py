"""Serving at catalogue scale, through HTTP, on the embedded default (Qdrant Edge): N items with 32-d `cf`, 32-d
`content` and 384-d `text` vectors and realistic payloads, 10k users. Reports similar items and recommendations
(with and without `cold_only`): p50/p99 at one client and throughput at 4 concurrent clients; ANN recall@10 of the
served similar items against an exact numpy top-k over the same vectors, and that exact top-k's own p50 (the
baseline), all in one run; the time the API takes to open the index; the API process's resident memory.

    python -m bench.scale --items 100000 --json bench/results/scale_100k.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
from sqlalchemy.orm import Session

from entrypoints.runtime import build_runtime
from indexer.collections import activate, ensure_collections, optimize
from indexer.writer import ItemPoint, upsert_items, upsert_users
from services.db import Interaction
from tests.helpers import free_port, plant_version, wait_port
from thaw.settings import Settings

DIM, TEXT, USERS_N, HISTORY = 32, 384, 10_000, 20
CLIENTS = 4
TAGS = ["rock", "jazz", "pop", "folk", "ambient", "classical", "hip-hop", "electronic"]


def percentiles(samples: list[float]) -> dict[str, float]:
    return {
        "p50_ms": round(1000 * float(np.percentile(samples, 50)), 2),
        "p99_ms": round(1000 * float(np.percentile(samples, 99)), 2),
    }


def build(settings: Settings, n: int, rng: np.random.Generator) -> tuple[np.ndarray, dict[str, float]]:
    """Write the catalogue, the users and their histories; build the search indexes; serve the version."""
    version = "v1"
    plant_version(settings.models_dir, version, dim=DIM, embedding_dims={"text": TEXT})
    rt = build_runtime(settings)
    items_coll, users_coll = ensure_collections(rt.index, version, DIM, {"text": TEXT})
    content = rng.normal(size=(n, DIM)).astype(np.float32)
    interactions = np.where(rng.random(n) < 0.3, rng.integers(1, 500, n), 0)  # 70% of the catalogue is cold
    t = time.perf_counter()
    for start in range(0, n, 1000):
        stop = min(start + 1000, n)
        cf = content[start:stop] + 0.3 * rng.normal(size=(stop - start, DIM)).astype(np.float32)
        text = rng.normal(size=(stop - start, TEXT)).astype(np.float32)
        points = [
            ItemPoint(
                str(i),
                {"content": content[i], "cf": cf[i - start], "text": text[i - start]},
                {
                    "modalities": ["text"],
                    "model_version": version,
                    "interactions": int(interactions[i]),
                    "revision": 1,
                    "updated_at": "2026-01-01T00:00:00+00:00",
                    "content_hash": f"{i:064x}",
                    "metadata": {"title": f"Item {i}", "tags": [TAGS[i % len(TAGS)], TAGS[(i * 7) % len(TAGS)]]},
                },
            )
            for i in range(start, stop)
        ]
        upsert_items(rt.index, items_coll, points, keep_cf=False)
    load_s = time.perf_counter() - t
    users = rng.normal(size=(USERS_N, DIM)).astype(np.float32)
    upsert_users(rt.index, users_coll, [f"u{u}" for u in range(USERS_N)], users, [{"source": "als"}] * USERS_N)
    t = time.perf_counter()
    optimize(rt.index, version)
    optimize_s = time.perf_counter() - t
    activate(rt.index, version)
    history = rng.integers(0, n, size=(USERS_N, HISTORY))
    with Session(rt.engine) as session:
        session.bulk_insert_mappings(
            Interaction.__mapper__,
            [{"user_id": f"u{u}", "item_id": str(int(i)), "weight": 1.0} for u in range(USERS_N) for i in history[u]],
        )
        session.commit()
    rt.close()
    return content, {"load_s": round(load_s, 1), "optimize_s": round(optimize_s, 1)}


def open_seconds(settings: Settings) -> float:
    """A cold open of the index as the API does at start-up (its served collections loaded)."""
    rt = build_runtime(settings)
    t = time.perf_counter()
    rt.index.open()
    elapsed = time.perf_counter() - t
    rt.close()
    return elapsed


def one_client(client: httpx.Client, paths: list[str]) -> tuple[list[float], int]:
    times, errors = [], 0
    for path in paths:
        t = time.perf_counter()
        r = client.get(path)
        times.append(time.perf_counter() - t)
        errors += r.status_code != 200
    return times, errors


def throughput(url: str, make_path: Callable[[int], str], requests: int) -> tuple[float, int]:
    """Requests per second with CLIENTS threads, each with its own connection, sending `requests` in all."""
    errors = [0] * CLIENTS

    def run(c: int) -> None:
        with httpx.Client(base_url=url, timeout=60) as client:
            _, errors[c] = one_client(client, [make_path(c * requests + q) for q in range(requests // CLIENTS)])

    threads = [threading.Thread(target=run, args=(c,)) for c in range(CLIENTS)]
    t = time.perf_counter()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return (requests // CLIENTS) * CLIENTS / (time.perf_counter() - t), sum(errors)


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def run(n: int, queries: int, rng: np.random.Generator, root: Path | None) -> dict[str, object]:
    """Build the catalogue under `root` (a fresh temporary directory if None), or reuse the one a previous run with
    the same `root` and size built there."""
    root = Path(tempfile.mkdtemp(prefix="thaw-scale-")) if root is None else root
    settings = Settings(data_dir=root)
    built = root / f"built-{n}.json"
    if built.exists():
        content, build_s = np.load(root / "content.npy"), json.loads(built.read_text())
    else:
        content, build_s = build(settings, n, rng)
        np.save(root / "content.npy", content)
        built.write_text(json.dumps(build_s))
    open_s = open_seconds(settings)
    port = free_port()
    env = {**os.environ, "THAW_DATA_DIR": str(root), "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    cmd = [sys.executable, "-m", "uvicorn", "entrypoints.runtime:create_app", "--factory", "--port", str(port)]
    api = subprocess.Popen([*cmd, "--log-level", "warning"], env=env)
    out: dict[str, object] = {"items": n, "users": USERS_N, **build_s, "open_s": round(open_s, 2)}
    try:
        wait_port(port, timeout=600)
        url = f"http://127.0.0.1:{port}"
        items = rng.integers(0, n, size=queries)
        users = rng.integers(0, USERS_N, size=queries)
        kinds: dict[str, Callable[[int], str]] = {
            "similar": lambda q: f"/items/{items[q % queries]}/similar?k=10&using=content",
            "recommendations": lambda q: f"/users/u{users[q % queries]}/recommendations?k=10",
            "recommendations_cold_only": lambda q: f"/users/u{users[q % queries]}/recommendations?k=10&cold_only=true",
        }
        errors = 0
        with httpx.Client(base_url=url, timeout=60) as client:
            one_client(client, [kinds["similar"](q) for q in range(20)])  # warm-up
            hits: list[list[str]] = []
            for q in range(queries):
                r = client.get(kinds["similar"](q))
                errors += r.status_code != 200
                hits.append([h["item_id"] for h in r.json().get("items", [])] if r.status_code == 200 else [])
            for name, make_path in kinds.items():
                times, errs = one_client(client, [make_path(q) for q in range(queries)])
                rps, errs_4 = throughput(url, make_path, queries * 2)
                out[name] = {**percentiles(times), "rps": round(rps, 1)}
                errors += errs + errs_4
        exact_times, recalls = [], []
        unit = content / np.linalg.norm(content, axis=1, keepdims=True)  # similar items rank by cosine
        for q in range(queries):
            item = int(items[q])
            t = time.perf_counter()
            scores = unit @ unit[item]
            scores[item] = -np.inf
            top = np.argpartition(-scores, 10)[:10]
            exact_times.append(time.perf_counter() - t)
            recalls.append(len({str(int(i)) for i in top} & set(hits[q])) / 10)
        out.update(
            {
                "ann_recall@10": round(float(np.mean(recalls)), 4),
                "exact_p50_ms": percentiles(exact_times)["p50_ms"],
                "rss_bytes": rss_bytes(api.pid),
                "errors": errors,
            }
        )
    finally:
        api.terminate()
        api.wait(60)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, required=True)
    parser.add_argument("--queries", type=int, default=300, help="requests per figure at one client")
    parser.add_argument("--json", type=Path, required=True)
    parser.add_argument("--root", type=Path, help="data directory to build in, or to reuse if built there before")
    args = parser.parse_args()
    result = run(args.items, args.queries, np.random.default_rng(0), args.root)
    result["machine"] = f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    result["engine"] = "Qdrant Edge (qdrant-edge-py) in the API process, through the HTTP API (uvicorn, 1 process)"
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
