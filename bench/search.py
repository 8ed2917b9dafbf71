"""Similar-items and recommendation latency p50/p99 through the HTTP API at 10k and 100k items (embedded Qdrant),
next to an exact numpy brute-force top-k over the same vectors in the same run (the baseline)."""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
from sqlalchemy.orm import Session

from entrypoints.demo import Server
from entrypoints.runtime import build_runtime
from indexer.collections import ITEMS, USERS, activate, ensure_collections
from indexer.writer import ItemPoint, upsert_items, upsert_users
from services.db import Interaction
from thaw.settings import Settings

DIM, TEXT = 32, 384


def percentiles(samples: list[float]) -> dict[str, float]:
    return {
        "p50_ms": round(1000 * float(np.percentile(samples, 50)), 2),
        "p99_ms": round(1000 * float(np.percentile(samples, 99)), 2),
    }


def run(n_items: int, queries: int, rng: np.random.Generator) -> dict[str, object]:
    root = Path(tempfile.mkdtemp(prefix="thaw-search-"))
    settings = Settings(data_dir=root)
    rt = build_runtime(settings)
    version = "v1"
    (settings.models_dir / version).mkdir(parents=True)
    (settings.models_dir / version / "config.json").write_text(json.dumps({"version": version, "alpha": 0.7}))
    (settings.models_dir / "ACTIVE").write_text(version)
    ensure_collections(rt.index, version, DIM, {"text": TEXT})
    content = rng.normal(size=(n_items, DIM)).astype(np.float32)
    cf = content + 0.3 * rng.normal(size=(n_items, DIM)).astype(np.float32)
    text = rng.normal(size=(n_items, TEXT)).astype(np.float32)
    t = time.perf_counter()
    for start in range(0, n_items, 2000):
        points = [
            ItemPoint(
                str(i),
                {"content": content[i], "cf": cf[i], "text": text[i]},
                {"modalities": ["text"], "model_version": version, "interactions": 5},
            )
            for i in range(start, min(start + 2000, n_items))
        ]
        upsert_items(rt.index, f"{ITEMS}__{version}", points, keep_cf=False)
    load_s = time.perf_counter() - t
    users = rng.normal(size=(200, DIM)).astype(np.float32)
    upsert_users(rt.index, f"{USERS}__{version}", [f"u{i}" for i in range(200)], users, [{"source": "als"}] * 200)
    activate(rt.index, version)
    with Session(rt.engine) as session:
        session.add_all(
            Interaction(user_id=f"u{u}", item_id=str(int(i))) for u in range(200) for i in rng.integers(0, n_items, 20)
        )
        session.commit()
    out: dict[str, object] = {"items": n_items, "load_s": round(load_s, 1)}
    with Server(settings, rt) as server, httpx.Client(base_url=server.url, timeout=60) as client:
        sim, rec, brute = [], [], []
        for q in range(queries):
            item = str(int(rng.integers(n_items)))
            t = time.perf_counter()
            r = client.get(f"/items/{item}/similar", params={"k": 10})
            sim.append(time.perf_counter() - t)
            assert r.status_code == 200 and len(r.json()["items"]) == 10, r.text
            t = time.perf_counter()
            r = client.get(f"/users/u{q % 200}/recommendations", params={"k": 10})
            rec.append(time.perf_counter() - t)
            assert r.status_code == 200 and len(r.json()["items"]) == 10, r.text
            t = time.perf_counter()
            scores = content @ content[int(item)]
            np.argpartition(-scores, 11)[:11]
            brute.append(time.perf_counter() - t)
    rt.close()
    out.update(
        {"similar": percentiles(sim), "recommendations": percentiles(rec), "numpy_bruteforce_topk": percentiles(brute)}
    )
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="10000,100000")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--json", type=Path, required=True)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    results = []
    for n in (int(s) for s in args.sizes.split(",")):
        results.append(run(n, args.queries, rng))
        print(results[-1])
    out = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}",
        "backend": "embedded Qdrant (QdrantClient(path=...)) through the HTTP API",
        "results": results,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
