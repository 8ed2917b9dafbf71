"""Encoders: per-modality heads onto the CF space and their fusion for any subset of modalities."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from encoders.audio import AudioCNN
from encoders.features import Table, chunks
from encoders.text import TEXT_DIM
from encoders.vision import IMAGE_DIM

MODALITY_ORDER = ("text", "image", "audio")


TAG_FACTOR_WEIGHT = 1.5  # the text head reads the tags' target encoding (RMS-normalised) at this weight


def head_input(feats: dict[str, torch.Tensor]) -> torch.Tensor:
    """What the text head reads: the text embedding, and the item's tags and their target encoding where the model
    has them, so one linear map fits all metadata features jointly."""
    tags = [feats["tags"]] if "tags" in feats else []
    if "tag_factors" in feats:
        tags.append(TAG_FACTOR_WEIGHT * feats["tag_factors"])
    return torch.cat([feats["text"], *tags], dim=1)


class Head(nn.Module):
    """A linear map onto the CF space (training starts it at the closed-form ridge solution) plus a nonlinear
    residual MLP whose output starts at zero, so training can only move away from ridge where cold
    validation says it pays."""

    def __init__(self, n_in: int, dim: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.linear = nn.Linear(n_in, dim)
        self.mlp = nn.Sequential(nn.Linear(n_in, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, dim))
        self.reset_residual()

    @torch.no_grad()
    def reset_residual(self) -> None:
        """Zero the residual MLP's output layer: the head is its linear map alone again."""
        last = self.mlp[-1]
        assert isinstance(last, nn.Linear)
        last.weight.zero_()
        last.bias.zero_()

    @torch.no_grad()
    def set_linear(self, weight: torch.Tensor, bias: torch.Tensor) -> None:
        self.linear.weight.copy_(weight)
        self.linear.bias.copy_(bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x) + self.mlp(x)


class ThawNet(nn.Module):
    """Text and image heads over frozen backbone features, the audio CNN and its head, and a fusion that takes a
    learned weighted mean over whichever modalities an item has (trained with modality dropout)."""

    def __init__(
        self,
        *,
        dim: int,
        hidden: int = 256,
        dropout: float = 0.1,
        audio_dim: int = 128,
        tag_dim: int = 0,
        tag_factor_dim: int = 0,
    ) -> None:
        super().__init__()
        self.config = {
            "dim": dim,
            "hidden": hidden,
            "dropout": dropout,
            "audio_dim": audio_dim,
            "tag_dim": tag_dim,
            "tag_factor_dim": tag_factor_dim,
        }
        self.audio = AudioCNN(dim=audio_dim)
        self.heads = nn.ModuleDict(
            {
                "text": Head(TEXT_DIM + tag_dim + tag_factor_dim, dim, hidden, dropout),
                "image": Head(IMAGE_DIM, dim, hidden, dropout),
                "audio": Head(audio_dim, dim, hidden, dropout),
            }
        )
        self.weights = nn.Parameter(torch.zeros(len(MODALITY_ORDER)))

    def audio_embedding(self, mels: torch.Tensor, owner: torch.Tensor, n_items: int) -> torch.Tensor:
        """Mean of crop embeddings per item: mels (n_crops, n_mels, frames), owner (n_crops,) -> (n_items, d)."""
        emb = self.audio(mels)
        total = torch.zeros(n_items, emb.shape[1]).index_add(0, owner, emb)
        count = torch.zeros(n_items).index_add(0, owner, torch.ones(len(owner))).clamp_min(1)
        return total / count[:, None]

    def forward(self, feats: dict[str, torch.Tensor], masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """feats: modality -> (B, n_in) plus "tags" (B, tag_dim) and "tag_factors" (B, tag_factor_dim), which the
        text head reads beside the text embedding; masks: (B, 3) bool in MODALITY_ORDER. Returns fused (B, dim) and
        the per-modality predictions (B, 3, dim)."""
        for key, width in (("tags", "tag_dim"), ("tag_factors", "tag_factor_dim")):
            if self.config[width] and key not in feats:
                raise ValueError(f"the text head reads {key}: add them first (Table.with_vocab, .with_tag_factors)")
        inputs = dict(feats, text=head_input(feats))
        preds = torch.stack([self.heads[m](inputs[m]) for m in MODALITY_ORDER], dim=1)
        w = torch.exp(self.weights)[None, :] * masks.float()
        fused = (w[:, :, None] * preds).sum(1) / w.sum(1, keepdim=True).clamp_min(1e-8)
        return fused, preds


@torch.no_grad()
def audio_embeddings(net: ThawNet, table: Table) -> torch.Tensor:
    """(n, audio_dim) CNN embeddings of the table's items (zeros where an item has no audio)."""
    net.eval()
    parts = [net.audio_embedding(*table.batch(idx)[1:3], len(idx)) for idx in chunks(len(table.ids))]
    return torch.cat(parts) if parts else torch.zeros(0, int(net.config["audio_dim"]))


@torch.no_grad()
def predict(net: ThawNet, table: Table, masks: torch.Tensor | None = None) -> np.ndarray:
    """The fused predicted factors of a table's items (`masks`: which modalities each item may use)."""
    audio = audio_embeddings(net, table)
    out = []
    for idx in chunks(len(table.ids)):
        feats, _, _, m = table.batch(idx)
        feats["audio"] = audio[idx]
        out.append(net(feats, m if masks is None else masks[idx])[0].numpy())
    return np.concatenate(out) if out else np.zeros((0, int(net.config["dim"])), np.float32)
