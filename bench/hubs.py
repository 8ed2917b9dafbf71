"""Hub items in similar-item lists: the k-occurrence skew (the share of top-k lists that the most frequent item
appears in) of the `cf` and `content` spaces of a model trained as `thaw train` trains it, searched by dot product
and by cosine, and with items whose CF vectors are folded in from a few events, unshrunk or shrunk toward their
content prediction. Writes JSON.

    python bench/hubs.py --data ../shared/data/movielens-100k --min-rating 4 --seed 0 --json bench/results/hubs.json
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from encoders.features import Table, catalogue_features
from encoders.fusion import predict
from encoders.training import TrainConfig, train_all
from thaw.datasets import load_dataset
from thaw.factors import fold_in_events


def k_occurrence(x: np.ndarray, k: int, metric: str) -> dict[str, Any]:
    """Every row's top-k neighbours among the other rows (exact search, as the index's); how often each row is one."""
    v = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12) if metric == "cosine" else x
    scores = v @ v.T
    np.fill_diagonal(scores, -np.inf)
    top = np.argpartition(-scores, k, axis=1)[:, :k]
    counts = np.bincount(top.ravel(), minlength=len(x))
    n = len(x)
    return {
        "lists": n,
        "max_share": round(float(counts.max() / n), 4),  # the share of lists the most frequent item is in
        "items_over_5pct": int((counts > 0.05 * n).sum()),
        "never_listed_share": round(float((counts == 0).mean()), 4),
        "top_items": [int(i) for i in np.argsort(-counts, kind="stable")[:3]],
    }


def folded(
    ds: Any, model: Any, content: dict[str, np.ndarray], items: list[str], events: int, shrinkage: float
) -> dict[str, np.ndarray]:
    """The CF vectors of `items` folded in from their first `events` interactions (in time order), as serving folds
    in a new item's audience; shrunk toward the item's content prediction with `shrinkage` > 0."""
    uix = {u: i for i, u in enumerate(model.user_ids)}
    gram = model.user_factors.astype(np.float64).T @ model.user_factors
    order = np.argsort(ds.interactions.timestamps, kind="stable") if ds.interactions.timestamps is not None else None
    users = ds.interactions.user_ids if order is None else ds.interactions.user_ids[order]
    item_col = ds.interactions.item_ids if order is None else ds.interactions.item_ids[order]
    out = {}
    for item in items:
        audience = [uix[u] for u in users[item_col == item][:events]]
        c = model.config
        out[item] = fold_in_events(
            model.user_factors[audience],
            np.ones(len(audience)),
            reg=c.als_reg,
            alpha=c.als_alpha,
            gram=gram,
            prior=content.get(item) if shrinkage > 0 else None,
            shrinkage=shrinkage,
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--min-rating", type=float, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--folded-items", type=int, default=100, help="warm items treated as new, folded in")
    parser.add_argument("--events", type=int, default=13, help="events each folded-in item is folded in from")
    parser.add_argument("--features-cache", type=Path, default=None, help="reuse the frozen features (torch.save)")
    parser.add_argument("--json", type=Path, required=True)
    args = parser.parse_args()

    t0 = time.perf_counter()
    ds = load_dataset(args.data, min_rating=args.min_rating)
    if args.features_cache is not None and args.features_cache.is_file():
        features: Table = torch.load(args.features_cache, weights_only=False)
    else:
        features = catalogue_features(ds)
        if args.features_cache is not None:
            torch.save(features, args.features_cache)
    model = train_all(ds, TrainConfig(seed=args.seed, epochs=args.epochs), features=features)
    served = model.prepare(features)  # every item with content, encoded as a served (new) item is
    pred = predict(model.net, served)
    content = {item: pred[i] for i, item in enumerate(served.ids)}

    cf_ids = list(model.item_ids)
    cf = model.item_factors.astype(np.float64)
    rng = np.random.default_rng(args.seed)
    counts = {i: int((ds.interactions.item_ids == i).sum()) for i in cf_ids}
    eligible = [i for i in cf_ids if counts[i] >= args.events and i in content]
    chosen = sorted(rng.choice(eligible, size=min(args.folded_items, len(eligible)), replace=False).tolist())
    row = {item: j for j, item in enumerate(cf_ids)}
    spaces: dict[str, np.ndarray] = {"content": pred.astype(np.float64), "cf_learned": cf}
    for name, shrinkage in (("cf_folded_unshrunk", 0.0), ("cf_folded_shrunk", model.config.cf_shrinkage)):
        x = cf.copy()
        for item, vec in folded(ds, model, content, chosen, args.events, shrinkage).items():
            x[row[item]] = vec
        spaces[name] = x
    folded_rows = np.array([row[i] for i in chosen])
    results: dict[str, Any] = {}
    for name, x in spaces.items():
        for metric in ("dot", "cosine"):
            r = k_occurrence(x, args.k, metric)
            if name.startswith("cf_folded"):
                norms = np.linalg.norm(x, axis=1)
                r["folded_norm_median"] = round(float(np.median(norms[folded_rows])), 4)
                r["others_norm_median"] = round(float(np.median(np.delete(norms, folded_rows))), 4)
                r["folded_in_top_items"] = sum(int(t in set(folded_rows.tolist())) for t in r["top_items"])
            results[f"{name}/{metric}"] = r
    out = {
        "protocol": {
            "data": str(args.data),
            "min_rating": args.min_rating,
            "seed": args.seed,
            "k": args.k,
            "folded_items": len(chosen),
            "events_per_folded_item": args.events,
            "cf_shrinkage": model.config.cf_shrinkage,
            "n_cf_items": len(cf_ids),
            "n_content_items": len(served.ids),
        },
        "before": {"served_as": "dot product, folded-in CF unshrunk"},
        "after": {"served_as": "cosine for similar items, folded-in CF shrunk toward the content prediction"},
        "k_occurrence": results,
        "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}",
        "wall_s": round(time.perf_counter() - t0, 1),
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(out, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
