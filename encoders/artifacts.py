"""Encoders: the model artifact — one versioned directory (config.json, safetensors, factors, metrics,
library versions) that workers and the API load; versions and the ACTIVE pointer."""

from __future__ import annotations

import json
import os
import platform
import re
from dataclasses import dataclass, field
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from safetensors.numpy import load_file as load_np
from safetensors.numpy import save_file as save_np
from safetensors.torch import load_file, save_file

from encoders import text as text_encoder
from encoders import vision as vision_encoder
from encoders.audio import SAMPLE_RATE, log_mel_crops
from encoders.fusion import MODALITY_ORDER, ThawNet
from encoders.tags import TagFactors, TagVocab

__all__ = [
    "SAMPLE_RATE",
    "EncodedItem",
    "ItemInput",
    "ThawModel",
    "active_version",
    "list_versions",
    "save_version",
    "set_active",
]
FORMAT = 5  # 2: heads are linear (ridge-initialised) + residual MLP; 3: + tag vocabulary (tags.json); 4: the text
# head reads the image embedding too; 5: it reads the tags' target encoding instead (tag_factors.json, .safetensors)


@dataclass
class ItemInput:
    item_id: str
    text: str | None = None
    image: Image.Image | None = None
    audio: np.ndarray | None = None  # mono float32 at SAMPLE_RATE
    tags: frozenset[str] = frozenset()  # thaw.schema.item_tags of the metadata, read with the text


@dataclass
class EncodedItem:
    content: np.ndarray  # predicted CF factors from the fused available modalities
    embeddings: dict[str, np.ndarray] = field(default_factory=dict)  # unit-length content embedding per modality


def features(items: list[ItemInput]) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor, torch.Tensor]:
    """Frozen-backbone features, audio log-mels and the modality mask of a batch."""
    n = len(items)
    masks = torch.tensor(
        [[it.text is not None and bool(it.text), it.image is not None, it.audio is not None] for it in items],
        dtype=torch.bool,
    )
    feats = {"text": torch.zeros(n, text_encoder.TEXT_DIM), "image": torch.zeros(n, vision_encoder.IMAGE_DIM)}
    idx = [i for i in range(n) if masks[i, 0]]
    if idx:
        feats["text"][idx] = torch.from_numpy(text_encoder.embed_texts([items[i].text or "" for i in idx]))
    idx = [i for i in range(n) if masks[i, 1]]
    if idx:
        feats["image"][idx] = torch.from_numpy(vision_encoder.embed_images([items[i].image for i in idx]))  # type: ignore[misc]
    mels, owner = [], []
    for i, it in enumerate(items):
        if it.audio is not None:
            m = log_mel_crops(it.audio)
            mels.append(m)
            owner += [i] * len(m)
    mel = torch.cat(mels) if mels else torch.zeros(0, 64, 188)
    return feats, mel, torch.tensor(owner, dtype=torch.long), masks


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


class ThawModel:
    """A trained model version: the network, the CF factors it was regressed onto, and its serving defaults."""

    def __init__(
        self,
        net: ThawNet,
        *,
        version: str,
        user_ids: list[str],
        user_factors: np.ndarray,
        item_ids: list[str],
        item_factors: np.ndarray,
        config: dict[str, Any],
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
        self.version = version
        self.user_ids, self.user_factors = user_ids, user_factors
        self.item_ids, self.item_factors = item_ids, item_factors
        self.config = config
        self.metrics = metrics or {}

    @property
    def dim(self) -> int:
        return int(self.net.config["dim"])

    @property
    def alpha(self) -> float:
        return float(self.config.get("alpha", 0.5))

    @property
    def embedding_dims(self) -> dict[str, int]:
        return {
            "text": text_encoder.TEXT_DIM,
            "image": vision_encoder.IMAGE_DIM,
            "audio": int(self.net.config["audio_dim"]),
        }

    @torch.inference_mode()
    def encode(self, items: list[ItemInput]) -> list[EncodedItem]:
        if not items:
            return []
        feats, mel, owner, masks = features(items)
        feats["tags"] = torch.from_numpy(self.vocab.transform([it.tags for it in items]))
        feats["tag_factors"] = torch.from_numpy(self.tag_factors.transform([it.tags for it in items]))
        empty = [items[i].item_id for i in range(len(items)) if not masks[i].any()]
        if empty:
            raise ValueError(f"items {empty[:5]} have no text, image or audio to encode")
        feats["audio"] = (
            self.net.audio_embedding(mel, owner, len(items))
            if len(owner)
            else torch.zeros(len(items), int(self.net.config["audio_dim"]))
        )
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
        config = dict(
            self.config,
            version=self.version,
            format=FORMAT,
            net=self.net.config,
            dim=self.dim,
            embedding_dims=self.embedding_dims,
            backbones={"text": text_encoder.BACKBONE, "image": vision_encoder.BACKBONE},
        )
        (directory / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
        save_file({k: v.contiguous() for k, v in self.net.state_dict().items()}, directory / "weights.safetensors")
        save_np({"users": self.user_factors, "items": self.item_factors}, directory / "factors.safetensors")
        (directory / "ids.json").write_text(json.dumps({"users": self.user_ids, "items": self.item_ids}))
        (directory / "tags.json").write_text(json.dumps(self.vocab.to_json()))
        (directory / "tag_factors.json").write_text(json.dumps(self.tag_factors.to_json()))
        save_np(self.tag_factors.arrays(), directory / "tag_factors.safetensors")
        (directory / "metrics.json").write_text(json.dumps(self.metrics, indent=2, sort_keys=True))
        (directory / "versions.json").write_text(json.dumps(library_versions(), indent=2))

    @classmethod
    def load(cls, directory: Path) -> ThawModel:
        config = json.loads((directory / "config.json").read_text())
        if config.get("format") != FORMAT:
            raise ValueError(f"{directory} has model format {config.get('format')}, this Thaw reads {FORMAT}")
        net = ThawNet(**config["net"])
        net.load_state_dict(load_file(directory / "weights.safetensors"))
        factors = load_np(directory / "factors.safetensors")
        ids = json.loads((directory / "ids.json").read_text())
        metrics = json.loads((directory / "metrics.json").read_text()) if (directory / "metrics.json").exists() else {}
        return cls(
            net,
            version=config["version"],
            user_ids=ids["users"],
            user_factors=factors["users"],
            item_ids=ids["items"],
            item_factors=factors["items"],
            config=config,
            vocab=TagVocab.from_json(json.loads((directory / "tags.json").read_text())),
            tag_factors=TagFactors.load(
                json.loads((directory / "tag_factors.json").read_text()), load_np(directory / "tag_factors.safetensors")
            ),
            metrics=metrics,
        )


_VERSION = re.compile(r"^v(\d+)$")


def list_versions(models_dir: Path) -> list[str]:
    if not models_dir.is_dir():
        return []
    found = [
        p.name for p in models_dir.iterdir() if p.is_dir() and _VERSION.match(p.name) and (p / "config.json").exists()
    ]
    return sorted(found, key=lambda v: int(v[1:]))


def save_version(model: ThawModel, models_dir: Path) -> Path:
    """Write the model as the next free version (v1, v2, ...) unless it already names one."""
    if not model.version:
        taken = [int(v[1:]) for v in list_versions(models_dir)]
        model.version = f"v{max(taken, default=0) + 1}"
    path = models_dir / model.version
    model.save(path)
    return path


def active_version(models_dir: Path) -> str | None:
    pointer = models_dir / "ACTIVE"
    return pointer.read_text().strip() or None if pointer.exists() else None


def set_active(models_dir: Path, version: str) -> None:
    if version not in list_versions(models_dir):
        raise ValueError(f"unknown model version {version!r}; have {list_versions(models_dir)}")
    tmp = models_dir / ".ACTIVE.tmp"
    tmp.write_text(version)
    os.replace(tmp, models_dir / "ACTIVE")
