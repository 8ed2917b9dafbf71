"""Encoders: the model artifact — one versioned directory (config.json, safetensors weights and factors, tag
tables, metrics, library versions) that workers load to encode items. The registry (thaw.registry) lists versions
and reads their configs without loading any of this."""

from __future__ import annotations

import json
import platform
import time
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.numpy import load_file as load_np
from safetensors.numpy import save_file as save_np
from safetensors.torch import load_file, save_file

from encoders import text as text_encoder
from encoders import vision as vision_encoder
from encoders.features import EncodedItem, ItemInput, Table, features
from encoders.fusion import MODALITY_ORDER, ThawNet
from encoders.tags import TagFactors, TagVocab
from thaw.registry import FACTORS, METRICS, ModelConfig, Registry


def library_versions() -> dict[str, str]:
    names = (
        "torch",
        "torchaudio",
        "torchvision",
        "sentence-transformers",
        "transformers",
        "timm",
        "implicit",
        "qdrant-client",
        "numpy",
    )
    out = {"python": platform.python_version()}
    for name in names:
        try:
            out[name] = importlib_metadata.version(name)
        except importlib_metadata.PackageNotFoundError:
            out[name] = "absent"
    return out


def embedding_dims(net: ThawNet) -> dict[str, int]:
    """The size of each modality's content embedding (the named vectors an item gets besides cf and content)."""
    return {"text": text_encoder.TEXT_DIM, "image": vision_encoder.IMAGE_DIM, "audio": int(net.config["audio_dim"])}


def model_config(net: ThawNet, **fields: Any) -> ModelConfig:
    """A new version's config (its version number is given when it is saved): the network's shape and backbones
    from `net`, the rest from `fields`."""
    backbones = {"text": text_encoder.BACKBONE, "image": vision_encoder.BACKBONE}
    return ModelConfig(
        version="",
        dim=int(net.config["dim"]),
        embedding_dims=embedding_dims(net),
        net=net.config,
        backbones=backbones,
        **fields,
    )


class ThawModel:
    """A trained model version: the network, the CF factors it was regressed onto, and its serving defaults."""

    def __init__(
        self,
        net: ThawNet,
        *,
        config: ModelConfig,
        user_ids: list[str],
        user_factors: np.ndarray,
        item_ids: list[str],
        item_factors: np.ndarray,
        vocab: TagVocab,
        tag_factors: TagFactors,
        metrics: dict[str, Any] | None = None,
    ) -> None:
        widths = {"tag_dim": len(vocab), "tag_factor_dim": tag_factors.width}
        for key, width in widths.items():
            if int(net.config.get(key, 0)) != width:
                raise ValueError(f"the text head expects {key} {net.config.get(key, 0)}, the tag features give {width}")
        self.net = net.eval()
        self.vocab, self.tag_factors = vocab, tag_factors
        self.user_ids, self.user_factors = user_ids, user_factors
        self.item_ids, self.item_factors = item_ids, item_factors
        self.config = config
        self.metrics = metrics or {}

    @property
    def version(self) -> str:
        return self.config.version

    @property
    def dim(self) -> int:
        return self.config.dim

    @property
    def alpha(self) -> float:
        return self.config.alpha

    @property
    def knn_weight(self) -> float:
        return self.config.knn_weight

    @property
    def knn_beta(self) -> float:
        return self.config.knn_beta

    @property
    def embedding_dims(self) -> dict[str, int]:
        return self.config.embedding_dims

    def prepare(self, table: Table) -> Table:
        """The table with everything this model's text head reads beside the frozen features."""
        return table.with_vocab(self.vocab).with_tag_factors(self.tag_factors)

    @torch.inference_mode()
    def encode(self, items: list[ItemInput], timings: dict[str, float] | None = None) -> list[EncodedItem]:
        """Each item's predicted CF factors and per-modality embeddings; `timings` (when given) gets the seconds each
        modality's encoder took on the batch (audio: the log-mels and the audio network)."""
        if not items:
            return []
        clock = timings if timings is not None else {}
        feats, mel, owner, masks = features(items, clock)
        feats["tags"] = torch.from_numpy(self.vocab.transform([it.tags for it in items]))
        feats["tag_factors"] = torch.from_numpy(self.tag_factors.transform([it.tags for it in items]))
        empty = [items[i].item_id for i in range(len(items)) if not masks[i].any()]
        if empty:
            raise ValueError(f"items {empty[:5]} have no text, image or audio to encode")
        start = time.perf_counter()
        feats["audio"] = (
            self.net.audio_embedding(mel, owner, len(items))
            if len(owner)
            else torch.zeros(len(items), int(self.net.config["audio_dim"]))
        )
        if len(owner):
            clock["audio"] = clock.get("audio", 0.0) + time.perf_counter() - start
        fused, _ = self.net(feats, masks)
        out = []
        for i in range(len(items)):
            emb = {
                m: torch.nn.functional.normalize(feats[m][i], dim=0).numpy().copy()
                for j, m in enumerate(MODALITY_ORDER)
                if masks[i, j]
            }
            out.append(EncodedItem(fused[i].numpy().copy(), emb))
        return out

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in self.net.state_dict().items()}, directory / "weights.safetensors")
        users, items = self.user_factors.astype(np.float64), self.item_factors.astype(np.float64)
        factors = {"users": self.user_factors, "items": self.item_factors}
        save_np({**factors, "user_gram": users.T @ users, "item_gram": items.T @ items}, directory / FACTORS)
        (directory / "ids.json").write_text(json.dumps({"users": self.user_ids, "items": self.item_ids}))
        (directory / "tags.json").write_text(json.dumps(self.vocab.to_json()))
        (directory / "tag_factors.json").write_text(json.dumps(self.tag_factors.to_json()))
        save_np(self.tag_factors.arrays(), directory / "tag_factors.safetensors")
        (directory / METRICS).write_text(json.dumps(self.metrics, indent=2, sort_keys=True))
        (directory / "versions.json").write_text(json.dumps(library_versions(), indent=2))
        self.config.write(directory)  # last: a directory is a version once its config exists

    @classmethod
    def load(cls, directory: Path) -> ThawModel:
        config = ModelConfig.read(directory)
        net = ThawNet(**config.net)
        net.load_state_dict(load_file(directory / "weights.safetensors"))
        factors = load_np(directory / FACTORS)
        ids = json.loads((directory / "ids.json").read_text())
        metrics = json.loads((directory / METRICS).read_text()) if (directory / METRICS).exists() else {}
        return cls(
            net,
            config=config,
            user_ids=ids["users"],
            user_factors=factors["users"],
            item_ids=ids["items"],
            item_factors=factors["items"],
            vocab=TagVocab.from_json(json.loads((directory / "tags.json").read_text())),
            tag_factors=TagFactors.load(
                json.loads((directory / "tag_factors.json").read_text()), load_np(directory / "tag_factors.safetensors")
            ),
            metrics=metrics,
        )


def save_version(model: ThawModel, registry: Registry) -> Path:
    """Write the model as the next free version (v1, v2, ...) unless it already names one."""
    if not model.version:
        model.config = model.config.model_copy(update={"version": registry.next_version()})
    path = registry.root / model.version
    model.save(path)
    return path
