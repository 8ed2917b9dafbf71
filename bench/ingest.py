"""Ingest throughput per modality with 1 and 2 `celery worker` processes (one torch thread each, real Redis broker,
the API under uvicorn owning the embedded index, the workers its peers), each next to the raw batched encoder
throughput of as many processes on the same items in the same run (the pipeline's efficiency ratio); the upload rate
of the API; and upload->servable latency p50/p95 on the idle service.

Pipeline: the items are uploaded while the workers consume nothing (`cancel_consumer`), then the workers drain the
backlog; its time is the jobs' own record, from the first job started to the last one finished. A run holds at least
`--items` items, and as many as the raw encoder gets through in `--pipeline-seconds` (a backlog of a few batches
measures the first message's delivery and the last batch's idle worker, not the steady rate). It covers what a
worker does per item: the broker message, the batch claim, reading and decoding the originals from the media store,
encoding, the upsert over the owning API's socket and the jobs' commit. Raw: `ThawModel.encode` alone on the same
items (decoded beforehand) in batches of THAW_EMBED_BATCH_SIZE, in as many processes as workers, each with one torch
thread, all started at once; their items/s add up. Raw is measured just before and just after the pipeline and the
two averaged, since the machine may be shared."""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from sqlalchemy import func, select

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as `python bench/ingest.py`: the integration tests' server helpers are used

from encoders.features import ItemInput, item_inputs  # noqa: E402
from entrypoints.demo import upload  # noqa: E402
from thaw.datasets import Dataset, Item, load_dataset  # noqa: E402

MODES = {"text": ("text",), "image": ("image",), "audio": ("audio",), "all": ("text", "image", "audio")}
BATCH = 64  # THAW_EMBED_BATCH_SIZE for the workers, and the raw encoder's batch


def restrict(item: Item, keep: tuple[str, ...], new_id: str) -> Item:
    return Item(
        new_id,
        item.fields if "text" in keep else {},
        item.image if "image" in keep else None,
        item.audio if "audio" in keep else None,
    )


def full_items(ds: Dataset, n: int) -> list[str]:
    """`n` item ids of the catalogue's items with text, image and audio (cycled when it has fewer)."""
    full = [i for i in sorted(ds.items) if len(ds.items[i].modalities) == 3]
    return [full[k % len(full)] for k in range(n)]


def raw_process(
    catalog: Path, model_dir: Path, mode: str, n: int, min_seconds: float, threads: int, batch: int
) -> None:
    """One raw encoder process: decode, warm up, say `ready`, wait for `go` on stdin, encode in batches of `batch`
    until `min_seconds` passed, print items/s."""
    import torch

    from encoders.artifacts import ThawModel

    torch.set_num_threads(threads)
    keep = MODES[mode]
    ds = load_dataset(catalog)
    inputs = [
        ItemInput(
            i.item_id,
            i.text if "text" in keep else None,
            i.image if "image" in keep else None,
            i.audio if "audio" in keep else None,
            tags=i.tags,
        )
        for i in item_inputs(ds, full_items(ds, n))
    ]
    model = ThawModel.load(model_dir)
    model.encode(inputs[:batch])  # warm-up
    print("ready", flush=True)
    sys.stdin.readline()
    done, k, t, cpu = 0, 0, time.perf_counter(), time.process_time()
    batches = [inputs[start : start + batch] for start in range(0, len(inputs), batch)]
    while time.perf_counter() - t < min_seconds:  # the batches in turn, the last one when the time is up
        model.encode(batches[k % len(batches)])
        done, k = done + len(batches[k % len(batches)]), k + 1
    cpu_ms = 1000 * (time.process_time() - cpu) / done
    print(json.dumps({"items_per_s": done / (time.perf_counter() - t), "cpu_ms_per_item": cpu_ms}), flush=True)


def cpu_seconds(pids: list[int]) -> float:
    """CPU seconds (user + system, all threads) the processes have used so far."""
    ticks = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        ticks += int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / os.sysconf("SC_CLK_TCK")


def raw_encoder(
    catalog: Path,
    model_dir: Path,
    mode: str,
    n: int,
    processes: int,
    *,
    seconds: float,
    threads: int = 1,
    batch: int = BATCH,
) -> tuple[float, float]:
    """Items/s of `processes` raw encoder processes (`threads` torch threads each, batches of `batch`) started at
    once, each encoding for at least `seconds` (the sum of theirs), and their mean CPU ms per item."""
    cmd = [sys.executable, __file__, "--raw", str(catalog), str(model_dir), mode, str(n), str(threads), str(batch)]
    cmd += ["--raw-seconds", str(seconds)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "OPENBLAS_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    procs = [
        subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT)
        for _ in range(processes)
    ]
    for p in procs:
        assert p.stdout is not None and p.stdout.readline().strip() == "ready"
    for p in procs:
        assert p.stdin is not None
        p.stdin.write("go\n")
        p.stdin.flush()
    results = []
    for p in procs:
        out, _ = p.communicate(timeout=600)
        results.append(json.loads(out.strip().splitlines()[-1]))
    return float(sum(r["items_per_s"] for r in results)), float(np.mean([r["cpu_ms_per_item"] for r in results]))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--items", type=int, default=200, help="items uploaded per modality and worker count")
    parser.add_argument("--latency-uploads", type=int, default=12, help="sequential uploads for upload->servable")
    parser.add_argument("--raw-seconds", type=float, default=4.0, help="least time each raw encoder run takes")
    parser.add_argument(
        "--pipeline-seconds", type=float, default=8.0, help="a run's items: what the raw encoder does in this time"
    )
    parser.add_argument("--modes", nargs="+", choices=list(MODES), default=list(MODES), help="modalities to run")
    parser.add_argument("--workers", nargs="+", type=int, default=[1, 2], help="worker process counts to run")
    parser.add_argument("--json", type=Path)
    raw_args = ("CATALOG", "MODEL_DIR", "MODE", "N", "THREADS", "BATCH")
    parser.add_argument("--raw", nargs=6, metavar=raw_args, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.raw:
        catalog, model_dir, mode, n, threads, batch = args.raw
        raw_process(Path(catalog), Path(model_dir), mode, int(n), args.raw_seconds, int(threads), int(batch))
        return
    if args.json is None:
        parser.error("--json is required")
    run(args)


def run(args: argparse.Namespace) -> None:
    from encoders.artifacts import save_version
    from encoders.training import TrainConfig, train
    from entrypoints.runtime import build_celery, build_runtime
    from services.db import Job
    from services.embedding import index_dataset
    from services.events import import_interactions
    from tests.integration.conftest import ApiServer, RedisServer, Worker
    from thaw.client import wait_job
    from thaw.datasets import split_items
    from thaw.schema import UNFINISHED
    from thaw.settings import Settings
    from thaw.synthetic import generate_catalog

    root = Path(tempfile.mkdtemp(prefix="thaw-bench-ingest-"))
    catalog = generate_catalog(root / "catalog", n_items=400, n_users=300, seed=1)
    ds = load_dataset(catalog)
    split = split_items(ds, seed=0)
    redis = RedisServer(root)
    broker = redis.url
    settings = Settings(data_dir=root / "state", broker_url=broker, embed_batch_size=BATCH)
    rt = build_runtime(settings)
    model = train(ds, split, TrainConfig(epochs=10), progress=False)
    save_version(model, rt.registry)
    index_dataset(rt, model, ds, split.warm)
    import_interactions(rt, ds.interactions.for_items(split.warm))
    rt.close()  # gives up the embedded index: the API owns it, as in a deployment
    rt = build_runtime(settings)  # the database only, from here on
    model_dir = rt.registry.path(model.version)
    env = {
        **os.environ,
        "THAW_DATA_DIR": str(settings.data_dir),
        "THAW_BROKER_URL": broker,
        "THAW_EMBED_BATCH_SIZE": str(BATCH),
        "THAW_LOG_LEVEL": "WARNING",
        "OMP_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
        "PYTHONPATH": str(ROOT),
    }
    api = ApiServer(env)
    control = build_celery(settings).control

    def drained(prefix: str) -> tuple[int, float]:
        """Wait until the jobs of the items named `prefix`* finished; (failed jobs, first start to last finish)."""
        mine = Job.item_id.like(f"{prefix}%")
        with rt.session() as session:
            while session.scalar(select(func.count()).where(mine, Job.status.in_(UNFINISHED))):
                session.rollback()  # a fresh snapshot
                time.sleep(0.2)
            failed = session.scalar(select(func.count()).where(mine, Job.status == "failed")) or 0
            first, last = session.execute(select(func.min(Job.started_at), func.max(Job.finished_at)).where(mine)).one()
        return int(failed), (last - first).total_seconds()

    modalities: dict[str, dict[str, Any]] = {mode: {"workers": {}} for mode in args.modes}
    try:
        with httpx.Client(base_url=api.url, timeout=120) as client:
            for n_workers in args.workers:
                workers = [Worker(env, f"ingest{k}") for k in range(n_workers)]
                while len(control.ping(timeout=1.0) or []) < n_workers:
                    pass
                # warm-up: every worker loads the backbones on its first items
                ids = full_items(ds, 8)
                warm = [upload(client, restrict(ds.items[i], MODES["all"], f"w{n_workers}-{i}")) for i in ids]
                for job_id in warm:
                    wait_job(client, job_id, timeout=600, poll_s=0.2)
                for mode in args.modes:
                    keep = MODES[mode]
                    load_before = os.getloadavg()[0]
                    prefix = f"b{n_workers}-{mode}-"
                    raw_before, raw_cpu_before = raw_encoder(
                        catalog, model_dir, mode, args.items, n_workers, seconds=args.raw_seconds
                    )
                    ids = full_items(ds, max(args.items, round(raw_before * args.pipeline_seconds)))
                    items = [restrict(ds.items[i], keep, f"{prefix}{k}") for k, i in enumerate(ids)]
                    control.cancel_consumer("celery", reply=True)
                    t = time.perf_counter()
                    with ThreadPoolExecutor(4) as pool:  # uploads in flight at once
                        list(pool.map(lambda it: upload(client, it), items))
                    upload_rate = len(items) / (time.perf_counter() - t)
                    pids = {"workers": [w.proc.pid for w in workers], "api": [api.proc.pid]}
                    cpu_before = {name: cpu_seconds(p) for name, p in pids.items()}
                    control.add_consumer("celery", reply=True)
                    failed, seconds = drained(prefix)
                    cpu_ms = {name: 1000 * (cpu_seconds(p) - cpu_before[name]) / len(items) for name, p in pids.items()}
                    if failed:
                        raise RuntimeError(f"{failed} of the {mode} jobs failed")
                    pipeline = len(items) / seconds
                    raw_after, raw_cpu_after = raw_encoder(
                        catalog, model_dir, mode, args.items, n_workers, seconds=args.raw_seconds
                    )
                    raw = (raw_before + raw_after) / 2
                    latencies = []
                    for k in range(args.latency_uploads):
                        t = time.perf_counter()
                        job = wait_job(client, upload(client, restrict(items[k], keep, f"lat{n_workers}-{mode}-{k}")))
                        latencies.append(time.perf_counter() - t)
                        assert job["status"] == "succeeded", job
                    modalities[mode]["workers"][str(n_workers)] = row = {
                        "items": len(items),
                        "raw_items_per_s": round(raw, 2),
                        "pipeline_items_per_s": round(pipeline, 2),
                        "ratio": round(pipeline / raw, 3),
                        "cpu_ms_per_item": {
                            "raw": round((raw_cpu_before + raw_cpu_after) / 2, 3),
                            **{name: round(ms, 3) for name, ms in cpu_ms.items()},
                        },
                        "upload_items_per_s": round(upload_rate, 2),
                        "servable_p50_s": round(float(np.percentile(latencies, 50)), 4),
                        "servable_p95_s": round(float(np.percentile(latencies, 95)), 4),
                        "load_average_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)],
                    }
                    print(mode, n_workers, json.dumps(row), flush=True)
                for w in workers:
                    w.stop()
    finally:
        api.stop()
        redis.stop()
        rt.close()
    out = {
        "machine": {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count()},
        "least_items_per_run": args.items,
        "pipeline_seconds": args.pipeline_seconds,
        "batch_size": BATCH,
        "torch_threads_per_process": 1,
        "media": "text (title, description), 64x64 image, 3 s audio per item",
        "modalities": modalities,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(out, indent=2))
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
