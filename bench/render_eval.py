"""Render the mean ± std table of a multi-seed `thaw evaluate` JSON as Markdown (for docs/evaluation.md)."""

from __future__ import annotations

import json
import sys

COLS = ("recall@20", "ndcg@20", "precision@20", "recall@100", "ndcg@100", "coverage@20")


def main(path: str) -> None:
    with open(path) as fh:
        report = json.load(fh)
    print("| method | " + " | ".join(COLS) + " |")
    print("|---" * (len(COLS) + 1) + "|")
    for method, means in report["mean"].items():
        cells = [f"{means[c]:.4f} ± {report['std'][method][c]:.4f}" for c in COLS]
        print(f"| {method} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main(sys.argv[1])
