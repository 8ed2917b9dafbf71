"""Entry points: the `thaw` command line — train, reindex, serve, ingest, reembed, models, activate, evaluate,
demo, ab."""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:
    from thaw.client import Job, ThawClient

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
app = typer.Typer(help="Thaw: content embeddings for cold-start recommendation.", no_args_is_help=True)
console = Console()

DataOpt = Annotated[Path | None, typer.Option("--data", help="dataset directory (shared/data/README.md format)")]


@app.command()
def train(
    data: Annotated[Path, typer.Option("--data", help="dataset directory")],
    seed: int = 0,
    min_rating: Annotated[float | None, typer.Option(help="keep interactions rated >= this")] = None,
    activate: Annotated[bool, typer.Option(help="index the catalogue with this version and make it active")] = True,
    epochs: int = 40,
) -> None:
    """Train a model version on all the history and write it under the models directory: choices are made on a
    seeded internal validation split (--seed), then the model is refitted on every interaction."""
    from encoders.artifacts import save_version
    from encoders.training import TrainConfig, train_all
    from entrypoints.runtime import build_runtime
    from services.embedding import index_dataset
    from services.events import import_interactions
    from thaw.datasets import load_dataset
    from thaw.settings import Settings

    rt = build_runtime(Settings())
    ds = load_dataset(data, min_rating=min_rating)
    model = train_all(ds, TrainConfig(seed=seed, epochs=epochs), progress=True)
    path = save_version(model, rt.registry)
    val = model.metrics["validation"]
    console.print(
        f"model [bold]{model.version}[/] written to {path} (internal validation NDCG@20 {val['cold_val_ndcg@20']}, "
        f"scorer {val['scorer']}: alpha {model.alpha}, knn weight {model.knn_weight}; "
        f"refitted on {len(model.item_ids)} items, {len(model.user_ids)} users)"
    )
    if activate:
        n = index_dataset(rt, model, ds, sorted(ds.items))
        import_interactions(rt, ds.interactions)
        console.print(f"indexed {n} items; {model.version} is served")
    rt.close()


@app.command()
def reindex(
    version: Annotated[
        str | None, typer.Option(help="model version (default: the served one, else the newest)")
    ] = None,
) -> None:
    """Rebuild a version's index from the database, the media store and the model, then serve it (e.g. to move an
    existing data directory onto the embedded engine). That version serves nothing while it runs."""
    from rich.progress import Progress

    from entrypoints.runtime import build_runtime
    from services.reindex import rebuild
    from thaw.settings import Settings

    rt = build_runtime(Settings())
    try:
        with Progress(console=console) as bar:
            task = bar.add_task("reindex", total=None)
            served, n, skipped = rebuild(
                rt, version, progress=lambda done, total: bar.update(task, completed=done, total=total)
            )
    finally:
        rt.close()
    console.print(f"indexed {n} items; {served} is served")
    if skipped:
        console.print(f"[yellow]{len(skipped)} items skipped (their originals cannot be encoded): {skipped[:10]}[/]")


@app.command()
def serve(host: str = "127.0.0.1", port: int = 8000, workers: int = 1) -> None:
    """Run the API (embedded default: a Celery worker runs inside this process)."""
    import uvicorn

    from thaw.settings import Settings

    settings = Settings()
    if workers > 1 and settings.embedded_broker:
        raise typer.BadParameter("several API workers need THAW_BROKER_URL and a Qdrant server (THAW_QDRANT_URL)")
    uvicorn.run("entrypoints.runtime:create_app", factory=True, host=host, port=port, workers=workers)


@app.command()
def ingest(
    item_id: Annotated[str | None, typer.Argument(help="one item to upload to a running service")] = None,
    data: DataOpt = None,
    batch_size: Annotated[int, typer.Option(min=1, help="--data: items per batch (one encode, one upsert)")] = 64,
    build_index: Annotated[
        bool,
        typer.Option(
            help="--data: then build the served version's HNSW graphs (about a minute per 100k items, during which "
            "the process that owns the index answers nothing else); without it the onboarded points are searched "
            "exactly until `thaw reindex`"
        ),
    ] = False,
    url: str = "http://127.0.0.1:8000",
    metadata: Annotated[str, typer.Option(help="JSON object of text fields")] = "{}",
    image: Path | None = None,
    audio: Path | None = None,
    wait: bool = True,
) -> None:
    """Upload one item to a running service and wait until it is servable; or, with --data, onboard a dataset's
    whole catalogue into the data directory in batches (resumable: a rerun skips the items already embedded)."""
    if data is not None:
        if item_id is not None:
            raise typer.BadParameter("give an item id (one upload) or --data (a catalogue), not both")
        _ingest_dataset(data, batch_size, build_index)
        return
    if item_id is None:
        raise typer.BadParameter("give an item id to upload, or --data DIR to onboard a catalogue")
    try:
        fields = json.loads(metadata)
    except json.JSONDecodeError as exc:
        raise typer.BadParameter(f"--metadata must be a JSON object: {exc}") from exc
    if not isinstance(fields, dict):
        raise typer.BadParameter(f"--metadata must be a JSON object, got {type(fields).__name__}")
    with _api(url) as client:
        accepted = client.upload_item(item_id, fields, image=image, audio=audio)
        job = client.wait_job(accepted["job_id"]) if wait else accepted
        console.print_json(json.dumps(job))


def _ingest_dataset(data: Path, batch_size: int, build_index: bool) -> None:
    from tqdm import tqdm

    from entrypoints.runtime import build_runtime
    from services.onboard import Outcome, ingest
    from thaw.datasets import load_items
    from thaw.settings import Settings

    items = load_items(data)
    rt = build_runtime(Settings())
    done = Outcome()
    try:
        # closing: an interrupt between two batches still waits for the writer thread before the runtime closes
        with (
            tqdm(total=len(items), desc="ingest", unit="item", disable=None) as bar,
            closing(ingest(rt, items.values(), batch_size)) as landed,
        ):
            for size, out in landed:
                done.add(out)
                bar.update(size)
                bar.set_postfix(embedded=len(done.embedded), skipped=len(done.skipped), failed=len(done.failed))
        if build_index:
            from indexer.collections import optimize

            started = time.monotonic()
            optimize(rt.index, rt.active_version())
            console.print(f"search graphs built in {time.monotonic() - started:.1f} s")
    except KeyboardInterrupt:
        console.print("interrupted: run the same command again to finish (embedded items are skipped)")
        raise typer.Exit(130) from None
    finally:
        rt.close()
    for item, reason in sorted(done.failed.items())[:20]:
        console.print(f"[red]failed[/] {item}: {reason}")
    console.print(
        f"{len(items)} items: {len(done.embedded)} embedded, {len(done.skipped)} unchanged (skipped), "
        f"{len(done.failed)} failed"
    )
    if done.failed:
        raise typer.Exit(1)


@contextmanager
def _api(url: str, timeout: float = 60) -> Iterator[ThawClient]:
    """A client of a running service, sending the first of THAW_API_KEYS (the API's own variable) as X-API-Key. A
    service that cannot be reached, or an error answer, ends the command with one line saying so (exit code 1), not a
    traceback."""
    import httpx

    from thaw.client import ThawAPIError, ThawClient
    from thaw.settings import Settings

    keys = Settings().api_keys
    try:
        with ThawClient(url, api_key=keys[0] if keys else None, timeout=timeout) as client:
            yield client
    except httpx.TransportError as exc:
        reason = str(exc) or type(exc).__name__
        console.print(
            f"[red]cannot reach the Thaw service at {url}[/]: {reason} (is `thaw serve` running?)", soft_wrap=True
        )
        raise typer.Exit(1) from None
    except ThawAPIError as exc:
        console.print(f"[red]{exc.status_code}[/] {exc.reason}", soft_wrap=True)
        raise typer.Exit(1) from None


def _watch(client: ThawClient, job_id: str, poll_s: float = 0.5) -> Job:
    """A progress bar over a re-embedding job until it finishes; returns the final job."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, TextColumn("{task.fields[figures]}"), console=console) as bar:
        task = bar.add_task(f"re-embedding ({job_id})", total=None, figures="")
        while True:
            job = client.get_job(job_id)
            p = job["progress"] or {}
            rate, eta = p.get("items_per_s"), p.get("eta_s")
            figures = f"{rate} items/s, ETA {eta} s" if rate is not None else "waiting for workers"
            bar.update(
                task,
                total=p.get("total"),
                completed=p.get("done", 0) + p.get("failed", 0),
                description=f"{p.get('source_version')} -> {p.get('target_version')}",
                figures=f"{figures}, {p.get('failed', 0)} failed",
            )
            if job["status"] in ("succeeded", "failed"):
                return job
            time.sleep(poll_s)


@app.command()
def reembed(
    model: Annotated[str | None, typer.Option("--model", help="model version to re-embed every item with")] = None,
    filter: Annotated[
        str | None, typer.Option(help='only items whose served payload matches, e.g. {"modalities":"image"}')
    ] = None,
    max_failed_share: Annotated[
        float | None, typer.Option(help="share of items allowed to fail without blocking the switch")
    ] = None,
    resume: Annotated[str | None, typer.Option(help="re-send the pending items of this job, then watch it")] = None,
    url: str = "http://127.0.0.1:8000",
    wait: Annotated[bool, typer.Option(help="watch the job with a progress bar until it finishes")] = True,
) -> None:
    """Re-embed the catalogue with a model version on the workers while the service keeps answering; when every
    item is done the served version switches atomically (roll back with `thaw activate`)."""
    if (model is None) == (resume is None):
        raise typer.BadParameter("give --model VERSION to start a job, or --resume JOB_ID to resume one")
    with _api(url) as client:
        if resume is not None:
            job_id = client.resume_job(resume)["job_id"]
        else:
            match = json.loads(filter) if filter else None
            started = client.reembed(str(model), filter=match, max_failed_share=max_failed_share)
            job_id = started["job_id"]
            console.print(f"job [bold]{job_id}[/]: {started['total']} items into {model}, {started['chunks']} chunks")
        if not wait:
            return
        job = _watch(client, job_id)
    p = job["progress"] or {}
    if p["failures"]:
        table = Table(title=f"{p['failed']} failed items" + (" (first 100)" if p["failed"] > 100 else ""))
        table.add_column("item")
        table.add_column("reason")
        for failure in p["failures"]:
            table.add_row(failure["item_id"], failure["error"])
        console.print(table)
    verdict = "switched to" if p["switched"] else "filled"
    counts = f"{p['done']} done ({p['skipped']} unchanged), {p['failed']} failed"
    console.print(f"{job['status']}: {counts}; {verdict} {p['target_version']}")
    if job.get("error"):
        console.print(job["error"])
    if job["status"] != "succeeded":
        raise typer.Exit(1)


@app.command()
def models(url: str = "http://127.0.0.1:8000") -> None:
    """List model versions: when trained, on how much data (items/users/interactions), alpha, the internal validation
    NDCG@20, vector size, points indexed, which is served."""
    with _api(url) as client:
        listing = client.list_models()
    table = Table(title=f"served: {listing['served']}")
    for col in ("version", "trained", "items/users/interactions", "alpha", "val NDCG@20", "dim", "indexed", "served"):
        table.add_column(col)
    for v in listing["versions"]:
        data = "/".join(
            "?" if v["data"].get(k) is None else str(v["data"][k]) for k in ("items", "users", "interactions")
        )
        ndcg = v["validation"].get("cold_val_ndcg@20")
        table.add_row(
            v["version"],
            (v["trained_at"] or "")[:16].replace("T", " "),
            data,
            "" if v["alpha"] is None else f"{v['alpha']:.2f}",
            "" if ndcg is None else f"{ndcg:.4f}",
            str(v["dim"]),
            "" if v["items"] is None else str(v["items"]),
            "*" if v["served"] else "",
        )
    console.print(table)
    if listing["running_job"]:
        console.print(f"re-embedding job running: {listing['running_job']}")


@app.command()
def activate(version: str, url: str = "http://127.0.0.1:8000") -> None:
    """Serve a kept model version at once (rollback): one atomic alias swap."""
    with _api(url) as client:
        done = client.activate_model(version)
    console.print(f"serving {done['served']} (was {done['previous']})")
    if done["catch_up_job"]:
        console.print(f"catch-up job {done['catch_up_job']} re-embeds items changed since; watch it with GET /jobs/ID")


@app.command()
def demo(
    data: DataOpt = None,
    seed: int = 0,
    json_out: Annotated[Path | None, typer.Option("--json", help="write the summary as JSON")] = None,
    data_dir: Annotated[Path | None, typer.Option(help="where the demo keeps its state")] = None,
    min_rating: float | None = None,
) -> None:
    """Train, serve, ingest the cold items over HTTP, and report latency and cold-start quality vs random."""
    from entrypoints.demo import run_demo
    from thaw.datasets import load_dataset, split_items
    from thaw.synthetic import generate_catalog

    logging.basicConfig(level=logging.WARNING)
    root = Path(tempfile.mkdtemp(prefix="thaw-demo-"))
    if data is None:
        console.print("generating the synthetic catalog (audio, images, text) ...")
        data = generate_catalog(root / "catalog", seed=seed)
    ds = load_dataset(data, min_rating=min_rating)
    split = split_items(ds, seed=seed)
    summary = run_demo(ds, split, data_dir or root / "state", seed=seed)
    table = Table(title="Thaw demo (embedded default)")
    table.add_column("figure")
    table.add_column("value", justify="right")
    table.add_row("items ingested over HTTP", str(summary["items_ingested"]))
    table.add_row(
        "upload→servable p50 / p95 (s)",
        f"{summary['servable_latency_s']['p50']} / {summary['servable_latency_s']['p95']}",
    )
    for method in ("thaw", "random"):
        m = summary["cold"][method]
        table.add_row(f"cold Recall@20 / NDCG@20 — {method}", f"{m['recall@20']:.4f} / {m['ndcg@20']:.4f}")
    table.add_row("users evaluated / cold items", f"{summary['n_users_evaluated']} / {summary['n_cold_items']}")
    table.add_row("training time (s)", str(summary["train_s"]))
    console.print(table)
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(summary, indent=2))
        console.print(f"summary written to {json_out}")


@app.command()
def evaluate(
    data: Annotated[Path, typer.Option("--data", help="dataset directory")],
    json_out: Annotated[Path, typer.Option("--json", help="write the results as JSON")],
    seed: Annotated[list[int], typer.Option(help="one or more seeds for the 80/10/10 item split")] = [0],  # noqa: B006
    split_file: Annotated[Path | None, typer.Option(help="split.csv fixing warm/cold_val/cold_test")] = None,
    min_rating: Annotated[float | None, typer.Option(help="keep interactions rated >= this as positives")] = None,
    loss: Annotated[str, typer.Option(help="mse | wpe | softmax")] = "wpe",
    epochs: int = 40,
) -> None:
    """Item cold-start protocol: Thaw, its ablations and baselines on the same cold test items. The JSON holds
    `seeds`, `per_seed` (protocol, methods, timing) and the methods' `mean` and `std` over seeds; the same seed gives
    the same figures on a re-run."""
    from encoders.evaluate import run_protocol, summarise
    from encoders.features import catalogue_features
    from encoders.training import TrainConfig
    from thaw.datasets import load_dataset, split_items
    from thaw.profiling import StageMeter

    logging.basicConfig(level=logging.WARNING)
    with StageMeter() as meter:
        ds = load_dataset(data, min_rating=min_rating)
        meter.lap("load_dataset")
        features = catalogue_features(ds)
        meter.lap("frozen_features")
    seeds = [0] if split_file is not None else seed
    runs = []
    for s in seeds:
        split = split_items(ds, seed=s, split_file=split_file)
        runs.append(run_protocol(ds, split, TrainConfig(seed=s, loss=loss, epochs=epochs), features, seed=s))
        table = Table(
            title=f"cold test, seed {s}: {runs[-1]['protocol']['n_users']} users, "
            f"{runs[-1]['protocol']['n_cold_test_items']} items"
        )
        for col in ("method", "recall@20", "ndcg@20", "precision@20", "recall@100", "ndcg@100", "coverage@20"):
            table.add_column(col)
        for name, m in runs[-1]["methods"].items():
            table.add_row(
                name,
                *(
                    f"{m[c]:.4f}"
                    for c in ("recall@20", "ndcg@20", "precision@20", "recall@100", "ndcg@100", "coverage@20")
                ),
            )
        console.print(table)
    result = summarise(runs)
    result["stages"] = meter.stages
    json_out.parent.mkdir(parents=True, exist_ok=True)
    json_out.write_text(json.dumps(result, indent=2))
    console.print(f"results written to {json_out}")


ab_app = typer.Typer(help="Cold-start experiments: offline replay and reports.", no_args_is_help=True)
app.add_typer(ab_app, name="ab")


def _print_report(report: dict[str, object], title: str) -> None:
    from thaw.experiments.report import difference_rows, summary_rows

    for rows_of, caption in ((summary_rows, title), (difference_rows, "difference from the control (95 % CI)")):
        header, rows = rows_of(report)
        if not rows:
            continue
        table = Table(title=caption)
        for col in header:
            table.add_column(col)
        for row in rows:
            table.add_row(*row)
        console.print(table)
    srm = report.get("srm")
    if isinstance(srm, dict):
        verdict = "[red]MISMATCH: do not trust this experiment[/]" if srm["mismatch"] else "ok"
        console.print(f"sample-ratio check: users {srm['observed_users']}, chi-square p = {srm['p_value']} — {verdict}")
    inter = report.get("interleaving")
    if isinstance(inter, dict):
        for key in ("all_clicks", "cold_clicks"):
            s = inter[key]
            console.print(
                f"interleaving {inter['treatment']} vs {inter['control']} ({key}): wins {s['wins']}, "
                f"losses {s['losses']}, ties {s['ties']}, delta {s['delta']} [{s['ci_low']}, {s['ci_high']}], "
                f"p = {s['p_value']}"
            )


@ab_app.command("simulate")
def ab_simulate(
    data: Annotated[Path, typer.Option("--data", help="dataset directory")],
    json_out: Annotated[Path, typer.Option("--json", help="write the replay report as JSON")],
    arms: Annotated[
        str,
        typer.Option(
            help="comma-separated [NAME=]POLICY[:alpha=A]; policies: thaw cf_only content_knn popularity random"
        ),
    ] = "thaw,cf_only,content_knn,popularity",
    control: Annotated[str | None, typer.Option(help="the control arm (default: the first)")] = None,
    shares: Annotated[str | None, typer.Option(help="comma-separated traffic shares (default: equal)")] = None,
    seed: Annotated[int, typer.Option(help="seed of the 80/10/10 item split and of training")] = 0,
    split_file: Annotated[Path | None, typer.Option(help="split.csv fixing warm/cold_val/cold_test")] = None,
    min_rating: Annotated[float | None, typer.Option(help="keep interactions rated >= this")] = None,
    k: Annotated[int, typer.Option(help="items served per arrival")] = 20,
    holdout: Annotated[float, typer.Option(help="each user's latest share of warm interactions held out")] = 0.2,
    catalogue: Annotated[str, typer.Option(help="serve from all items, or from the items cold at the start")] = "all",
    conversion_rating: Annotated[float, typer.Option(help="a held-out rating >= this is a conversion")] = 5.0,
    interleave: Annotated[str | None, typer.Option(help="two arms, e.g. thaw,cf_only: also team-draft them")] = None,
    epochs: int = 40,
    chart: Annotated[Path | None, typer.Option(help="PNG chart (default: the JSON path with .png)")] = None,
    salt: str = "replay",
) -> None:
    """Offline replay: train on the past, replay held-out interactions in time order through the arms, report."""
    from encoders.features import catalogue_features
    from encoders.replay import replay
    from encoders.training import TrainConfig
    from thaw.datasets import load_dataset, split_items
    from thaw.experiments.replay import ReplayConfig
    from thaw.experiments.report import chart_png
    from thaw.experiments.spec import parse_arms

    logging.basicConfig(level=logging.WARNING)
    try:
        spec = parse_arms(arms, control=control, shares=shares, salt=salt)
        pair = tuple(a.strip() for a in interleave.split(",")) if interleave else None
        if pair is not None and len(pair) != 2:
            raise ValueError(f"--interleave takes two arm names, got {interleave!r}")
        if pair is not None and not set(pair) <= set(spec.names):
            raise ValueError(f"--interleave names arms {pair}; the experiment's arms are {spec.names}")
        config = ReplayConfig(k=k, holdout=holdout, catalogue=catalogue, conversion_rating=conversion_rating)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    ds = load_dataset(data, min_rating=min_rating)
    split = split_items(ds, seed=seed, split_file=split_file)
    features = catalogue_features(ds)
    result = replay(
        ds,
        split,
        spec,
        config,
        TrainConfig(seed=seed, epochs=epochs),
        features,
        interleave=pair,
    ).summary
    result["protocol"].update(data=str(data), seed=seed, split_file=str(split_file) if split_file else None)
    result["protocol"].update(min_rating=min_rating, epochs=epochs)
    _print_report(result["report"], f"offline replay: {result['protocol']['users_replayed']} users, k={k}")
    if result["interleaving"] is not None:
        _print_report(result["interleaving"]["report"], "interleaving, same users")
        same = result["interleaving"]["same_users_ab"]
        console.print(f"A/B split of the same {same['users']} users: ctr diff {same['ctr']}")
    json_out.parent.mkdir(parents=True, exist_ok=True)
    json_out.write_text(json.dumps(result, indent=2))
    chart = chart or json_out.with_suffix(".png")
    chart.write_bytes(chart_png(result["report"], f"offline replay of {Path(data).name}"))
    console.print(f"report written to {json_out}, chart to {chart}")


@ab_app.command("report")
def ab_report(
    experiment_id: str,
    url: str = "http://127.0.0.1:8000",
    chart: Annotated[Path | None, typer.Option(help="PNG chart (default: experiment-<id>.png)")] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="also write the report as JSON")] = None,
) -> None:
    """The report of an online experiment (from a running service): per-arm metrics, differences, SRM, chart."""
    from thaw.experiments.report import chart_png

    with _api(url, timeout=120) as client:
        report = client.experiment_report(experiment_id)
    _print_report(report, f"experiment {experiment_id}")
    if json_out is not None:
        json_out.write_text(json.dumps(report, indent=2))
    chart = chart or Path(f"experiment-{experiment_id}.png")
    chart.write_bytes(chart_png(report, f"experiment {experiment_id}"))
    console.print(f"chart written to {chart}")


if __name__ == "__main__":
    app()
