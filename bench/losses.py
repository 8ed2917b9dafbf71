"""Training objectives compared on cold-validation NDCG@20 (and cold test) on one split, features computed once:
MSE onto item factors, weighted prediction error (WPE), and a softmax over users against their factors."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from encoders.evaluate import run_protocol  # noqa: E402
from encoders.features import catalogue_features  # noqa: E402
from encoders.training import TrainConfig  # noqa: E402
from thaw.datasets import load_dataset, split_items  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--min-rating", type=float, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--losses", default="mse,wpe,softmax")
    parser.add_argument("--json", type=Path, required=True)
    args = parser.parse_args()
    ds = load_dataset(args.data, min_rating=args.min_rating)
    features = catalogue_features(ds, progress=False)
    split = split_items(ds, seed=args.seed)
    out = {}
    for loss in args.losses.split(","):
        run = run_protocol(ds, split, TrainConfig(seed=args.seed, loss=loss), features, seed=args.seed, progress=False)
        out[loss] = {
            "cold_val_ndcg@20": run["protocol"]["cold_val_ndcg@20"],
            "alpha": run["protocol"]["alpha"],
            "cold_test": run["methods"],
        }
        print(loss, json.dumps(out[loss]["cold_val_ndcg@20"]), {m: v["ndcg@20"] for m, v in run["methods"].items()})
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
