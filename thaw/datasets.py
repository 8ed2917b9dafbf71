"""Dataset reading: interactions.csv + items.jsonl (+ split.csv) -> items, interactions and the warm/cold split."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from thaw.schema import MODALITIES, Modality, check_id, item_text

SPLITS = ("warm", "cold_val", "cold_test")


class DatasetError(ValueError):
    """A dataset directory that does not follow the format in shared/data/README.md."""


@dataclass
class Item:
    item_id: str
    fields: dict[str, Any]
    image: Path | None = None
    audio: Path | None = None

    @property
    def text(self) -> str:
        return item_text(self.fields)

    @property
    def modalities(self) -> tuple[Modality, ...]:
        present = {"text": bool(self.text), "image": self.image is not None, "audio": self.audio is not None}
        return tuple(m for m in MODALITIES if present[m])


@dataclass
class Interactions:
    """Parallel arrays, one row per implicit-feedback event."""

    user_ids: np.ndarray
    item_ids: np.ndarray
    weights: np.ndarray
    ratings: np.ndarray | None = None
    timestamps: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.user_ids)

    def subset(self, mask: np.ndarray) -> Interactions:
        return Interactions(
            self.user_ids[mask],
            self.item_ids[mask],
            self.weights[mask],
            None if self.ratings is None else self.ratings[mask],
            None if self.timestamps is None else self.timestamps[mask],
        )

    def for_items(self, item_ids: set[str] | list[str]) -> Interactions:
        wanted = set(item_ids)
        return self.subset(np.fromiter((i in wanted for i in self.item_ids), bool, len(self)))


@dataclass
class Split:
    warm: list[str]
    cold_val: list[str]
    cold_test: list[str]


@dataclass
class Dataset:
    root: Path
    items: dict[str, Item]
    interactions: Interactions
    split_file: dict[str, str] | None = None


def _read_items(path: Path, root: Path) -> dict[str, Item]:
    items: dict[str, Item] = {}
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                item_id = check_id(row.get("item_id") if isinstance(row, dict) else None)
            except (json.JSONDecodeError, ValueError) as exc:
                raise DatasetError(f"{path}:{lineno}: expected a JSON object with a valid item_id: {exc}") from exc
            media: dict[str, Path | None] = {}
            for key in ("image", "audio"):
                rel = row.get(key)
                file = (root / rel).resolve() if isinstance(rel, str) and rel else None
                media[key] = file if file is not None and file.is_file() else None  # absent file: no modality
            fields = {k: v for k, v in row.items() if k not in ("item_id", "image", "audio")}
            items[item_id] = Item(item_id, fields, media["image"], media["audio"])
    return items


def _read_interactions(path: Path, min_rating: float | None) -> Interactions:
    with path.open(encoding="utf-8", newline="") as fh:
        reader = csv.DictReader(fh)
        header = reader.fieldnames or []
        if "user_id" not in header or "item_id" not in header:
            raise DatasetError(
                f"{path}: header must have user_id,item_id (optional rating,weight,timestamp); got {header}"
            )
        rows = list(reader)
    users = np.array([r["user_id"] for r in rows], dtype=object)
    items = np.array([r["item_id"] for r in rows], dtype=object)
    try:
        weights = np.array([float(r["weight"]) if "weight" in header else 1.0 for r in rows], np.float32)
        ratings = np.array([float(r["rating"]) for r in rows], np.float32) if "rating" in header else None
        stamps = np.array([float(r["timestamp"]) for r in rows], np.float64) if "timestamp" in header else None
    except ValueError as exc:
        raise DatasetError(f"{path}: weight, rating and timestamp must be numbers: {exc}") from exc
    out = Interactions(users, items, weights, ratings, stamps)
    if min_rating is not None:
        if ratings is None:
            raise DatasetError(f"--min-rating needs a rating column in {path}")
        out = out.subset(ratings >= min_rating)
    return out


def load_dataset(path: Path, *, min_rating: float | None = None) -> Dataset:
    """Read a dataset directory (format: shared/data/README.md); unknown item ids in interactions are dropped."""
    root = Path(path).resolve()
    for name in ("interactions.csv", "items.jsonl"):
        if not (root / name).is_file():
            raise DatasetError(f"{root} is not a dataset directory: {name} is missing")
    items = _read_items(root / "items.jsonl", root)
    interactions = _read_interactions(root / "interactions.csv", min_rating)
    interactions = interactions.for_items(set(items))
    split_file = _read_split(root / "split.csv") if (root / "split.csv").is_file() else None
    return Dataset(root, items, interactions, split_file)


def load_items(path: Path) -> dict[str, Item]:
    """Only the items of a dataset directory (its items.jsonl), e.g. to onboard a catalogue's content."""
    root = Path(path).resolve()
    if not (root / "items.jsonl").is_file():
        raise DatasetError(f"{root} is not a dataset directory: items.jsonl is missing")
    return _read_items(root / "items.jsonl", root)


def _read_split(path: Path) -> dict[str, str]:
    with path.open(encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh))
    bad = [r for r in rows if r.get("split") not in SPLITS]
    if bad:
        raise DatasetError(f"{path}: split must be one of {SPLITS}; got {bad[0].get('split')!r}")
    return {r["item_id"]: r["split"] for r in rows}


def split_items(
    ds: Dataset, *, seed: int = 0, split_file: Path | None = None, fractions: tuple[float, float] = (0.1, 0.1)
) -> Split:
    """Split the items that have interactions into warm / cold validation / cold test.

    A split file (argument, else the dataset's split.csv) fixes the split; otherwise it is drawn from `seed`:
    `fractions` are the cold validation and cold test shares (10 % each by default).
    """
    with_events = sorted(set(ds.interactions.item_ids.tolist()))
    fixed = _read_split(split_file) if split_file is not None else ds.split_file
    if fixed is not None:
        groups: dict[str, list[str]] = {s: [] for s in SPLITS}
        for item_id in with_events:
            groups[fixed.get(item_id, "warm")].append(item_id)
        return Split(groups["warm"], groups["cold_val"], groups["cold_test"])
    rng = np.random.default_rng(seed)
    order = [with_events[i] for i in rng.permutation(len(with_events))]
    n_val, n_test = (max(1, round(f * len(order))) for f in fractions)
    return Split(sorted(order[n_val + n_test :]), sorted(order[:n_val]), sorted(order[n_val : n_val + n_test]))
