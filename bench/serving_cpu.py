"""The serving path's own cost, without HTTP: similar items and recommendations (with and without `cold_only`)
called in-process on a catalogue that `bench/scale.py --root DIR` built, as wall and CPU milliseconds per request.
CPU time is what bounds throughput on a shared machine, so two index builds compare fairly in one run.

    python -m bench.serving_cpu --root /tmp/scale/100k --items 100000
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from bench.scale import USERS_N
from entrypoints.runtime import build_runtime
from services import items, recommendations
from thaw.settings import Settings


def measure(call: Callable[[int], object], requests: int) -> dict[str, float]:
    for q in range(30):  # warm-up
        call(q)
    wall, cpu = time.perf_counter(), time.process_time()
    for q in range(requests):
        call(q)
    return {
        "wall_ms": round(1000 * (time.perf_counter() - wall) / requests, 2),
        "cpu_ms": round(1000 * (time.process_time() - cpu) / requests, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--items", type=int, required=True)
    parser.add_argument("--requests", type=int, default=300)
    args = parser.parse_args()
    rt = build_runtime(Settings(data_dir=args.root))
    rt.index.open()
    rng = np.random.default_rng(1)
    item_ids = [str(int(i)) for i in rng.integers(0, args.items, args.requests + 30)]
    users = [f"u{int(u)}" for u in rng.integers(0, USERS_N, args.requests + 30)]
    out = {
        "similar": measure(lambda q: items.similar_items(rt, item_ids[q], "content", 10, None), args.requests),
        "recommendations": measure(lambda q: recommendations.recommend(rt, users[q], 10), args.requests),
        "recommendations_cold_only": measure(
            lambda q: recommendations.recommend(rt, users[q], 10, cold_only=True), args.requests
        ),
    }
    rt.close()
    print(json.dumps({"root": str(args.root), "items": args.items, **out}, indent=2))


if __name__ == "__main__":
    main()
