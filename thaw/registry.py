"""The model-version registry: which versions are trained (v1, v2, ... under the models directory) and each one's
typed config, read and written here only. No torch: the API reads versions without loading a network."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from safetensors import safe_open

from thaw.errors import NotFoundError

FORMAT = 6  # the layout of a version directory that this code reads and writes
CONFIG = "config.json"
METRICS = "metrics.json"  # training's figures; "validation" holds the internal validation run's
FACTORS = "factors.safetensors"  # users, items, and their Gram matrices user_gram = U^T U, item_gram = V^T V
_VERSION = re.compile(r"^v(\d+)$")


class UnknownVersionError(NotFoundError):
    """A model version that is not trained (no directory with a config under the models directory)."""


def version_key(version: str) -> tuple[int, str]:
    """Order versions v1 < v2 < v10; names outside the vN scheme sort first, by name."""
    match = _VERSION.fullmatch(version)
    return (int(match.group(1)), "") if match else (-1, version)


class ModelConfig(BaseModel):
    """What a trained version is: its vector sizes, the modalities it learned from, its serving defaults (`alpha`,
    `knn_weight`, `knn_beta`, the fold-in's `als_reg` and `als_alpha`, `cf_shrinkage`), the network's shape and the
    settings it was trained with."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    version: str
    format: int = FORMAT
    created_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    dim: int
    embedding_dims: dict[str, int]
    modalities: list[str]  # the modalities warm items had in training; the heads of the others are untrained
    alpha: float  # CF score vs content similarity, chosen on cold validation
    knn_weight: float = 0.0  # content_knn similarity to the user's history in the cold-start score, ditto
    knn_beta: float = 0.0  # that similarity: cosine to the history's centroid (0) or soft item-kNN's sharpness, ditto
    als_reg: float
    als_alpha: float
    cf_shrinkage: float
    net: dict[str, Any]
    backbones: dict[str, str]
    training: dict[str, Any]  # the TrainConfig it was trained with
    train_items: list[str]  # the heads' training set: warm items only
    train_users: int

    @classmethod
    def read(cls, directory: Path) -> ModelConfig:
        path = directory / CONFIG
        try:
            raw = path.read_text()
        except OSError as exc:
            raise UnknownVersionError(f"no model config at {path}: {exc}") from exc
        try:
            return cls.model_validate_json(raw)
        except ValidationError as exc:
            found = re.search(r'"format"\s*:\s*(\d+)', raw)
            raise ValueError(
                f"{path} has model format {found.group(1) if found else 'unknown'}; this Thaw reads format {FORMAT}: "
                f"retrain the version (thaw train) ({exc.error_count()} fields differ)"
            ) from exc

    def write(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        (directory / CONFIG).write_text(self.model_dump_json(indent=2))


class Registry:
    """The trained versions under `root`. A version's config never changes once written, so it is read once."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._configs: dict[str, ModelConfig] = {}
        self._grams: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def versions(self) -> list[str]:
        """Trained versions, oldest first."""
        if not self.root.is_dir():
            return []
        found = [p.name for p in self.root.iterdir() if _VERSION.match(p.name) and (p / CONFIG).is_file()]
        return sorted(found, key=version_key)

    def path(self, version: str) -> Path:
        """The directory of a trained version; UnknownVersionError names the versions there are."""
        if not _VERSION.match(version) or not (self.root / version / CONFIG).is_file():
            raise UnknownVersionError(f"model version {version!r} is not trained; have {self.versions()}")
        return self.root / version

    def config(self, version: str) -> ModelConfig:
        if version not in self._configs:
            self._configs[version] = ModelConfig.read(self.path(version))
        return self._configs[version]

    def metrics(self, version: str) -> dict[str, Any]:
        """The version's training figures ({} when it has none)."""
        path = self.path(version) / METRICS
        found: dict[str, Any] = json.loads(path.read_text()) if path.is_file() else {}
        return found

    def grams(self, version: str) -> tuple[np.ndarray, np.ndarray]:
        """(U^T U, V^T V) of the version's learned user and item factors: what a fold-in adds for the unobserved
        entries of the other side."""
        if version not in self._grams:
            with safe_open(str(self.path(version) / FACTORS), framework="numpy") as fh:
                self._grams[version] = (fh.get_tensor("user_gram"), fh.get_tensor("item_gram"))
        return self._grams[version]

    def next_version(self) -> str:
        taken = [version_key(v)[0] for v in self.versions()]
        return f"v{max(taken, default=0) + 1}"
