"""Bulk onboarding throughput: a text-only synthetic catalogue onboarded with `thaw ingest --data` (the command, in
its own process, start-up and model loading included, until the items are served), next to the raw batched MiniLM
throughput on a fixed sample of the same texts in the same run (the ratio). The machine is shared, so the raw
throughput is measured before and after the ingest and the ratio is taken against their mean. After the command
exits, a fresh runtime counts the served collection's points and times similar-items searches over them (p50 of 50,
exact: Edge builds no graph during upserts), then builds the collection's HNSW graphs as `thaw reindex` does after
its bulk load and times the searches again."""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from encoders.artifacts import save_version  # noqa: E402
from encoders.text import embed_texts  # noqa: E402
from encoders.training import TrainConfig, train  # noqa: E402
from entrypoints.runtime import build_runtime  # noqa: E402
from indexer.collections import ITEMS, optimize  # noqa: E402
from services.embedding import index_dataset  # noqa: E402
from services.items import similar_items  # noqa: E402
from services.runtime import Runtime  # noqa: E402
from thaw.datasets import load_dataset, load_items, split_items  # noqa: E402
from thaw.schema import CONTENT, item_text  # noqa: E402
from thaw.settings import Settings  # noqa: E402
from thaw.synthetic import generate_catalog, text_catalog  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def raw_rate(texts: list[str], batch_size: int) -> float:
    """MiniLM alone on the texts, in batches (sentence-transformers orders them by length)."""
    t = time.perf_counter()
    embed_texts(texts, batch_size=batch_size)
    return len(texts) / (time.perf_counter() - t)


def search_p50_ms(rt: Runtime, item_ids: list[str]) -> float:
    """Median time of one similar-items search (by `content`, k=10) for each of the items."""
    times = []
    for item_id in item_ids:
        t = time.perf_counter()
        similar_items(rt, item_id, CONTENT, 10, None)
        times.append((time.perf_counter() - t) * 1000)
    return float(np.median(times))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--items", type=int, default=100_000, help="catalogue size")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--baseline-items", type=int, default=5000, help="texts in the raw MiniLM sample")
    parser.add_argument("--json", type=Path, required=True)
    args = parser.parse_args()
    torch.set_num_threads(1)
    root = Path(tempfile.mkdtemp(prefix="thaw-onboard-"))
    ds = load_dataset(generate_catalog(root / "train", n_items=300, n_users=200, audio_seconds=1.0, seed=1))
    split = split_items(ds, seed=0)
    settings = Settings(data_dir=root / "state")
    rt = build_runtime(settings)
    model = train(ds, split, TrainConfig(epochs=5), progress=False)
    save_version(model, rt.registry)
    index_dataset(rt, model, ds, split.warm)
    rt.close()
    catalogue = text_catalog(root / "catalogue", n_items=args.items, seed=2)
    items = load_items(catalogue)
    texts = [item_text(item.fields) for item in items.values()]
    sample = random.Random(0).sample(texts, min(args.baseline_items, len(texts)))

    embed_texts(sample[: args.batch_size], batch_size=args.batch_size)  # warm-up
    before = raw_rate(sample, args.batch_size)
    print(f"raw MiniLM before: {before:.1f} items/s", flush=True)

    env = {**os.environ, "THAW_DATA_DIR": str(settings.data_dir), "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "entrypoints.cli", "ingest", "--data", str(catalogue)]
    cmd += ["--batch-size", str(args.batch_size)]
    t = time.perf_counter()
    done = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, check=True)
    seconds = time.perf_counter() - t
    summary = done.stdout.strip().splitlines()[-1]
    print(summary, flush=True)
    pipeline = len(texts) / seconds
    rt = build_runtime(settings)
    try:
        served = rt.index.engine().count(ITEMS)
        probes = list(items)[:50]
        exact_ms = search_p50_ms(rt, probes)
        t = time.perf_counter()
        optimize(rt.index, rt.active_version())
        graph_seconds = time.perf_counter() - t
        graph_ms = search_p50_ms(rt, probes)
    finally:
        rt.close()
    print(f"served: {served} points; similar-items p50 {exact_ms:.2f} ms exact", flush=True)
    print(f"graph build: {graph_seconds:.1f} s; similar-items p50 then {graph_ms:.2f} ms", flush=True)
    after = raw_rate(sample, args.batch_size)
    raw = (before + after) / 2
    print(f"raw MiniLM after: {after:.1f} items/s", flush=True)
    out = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}",
        "load_average_at_end": os.getloadavg(),
        "items": len(texts),
        "batch_size": args.batch_size,
        "baseline_items": len(sample),
        "raw_items_per_s": round(raw, 1),
        "raw_items_per_s_before_after": [round(before, 1), round(after, 1)],
        "ingest_seconds": round(seconds, 1),
        "ingest_items_per_s": round(pipeline, 1),
        "ratio": round(pipeline / raw, 3),
        "summary": summary,
        "served_points": served,
        "similar_p50_ms_exact": round(exact_ms, 2),
        "graph_build_seconds": round(graph_seconds, 1),
        "similar_p50_ms_graph": round(graph_ms, 2),
        "ratio_with_graph_build": round(len(texts) / (seconds + graph_seconds) / raw, 3),
    }
    print(json.dumps(out, indent=2))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
