"""Encoders: an item's content as encoder input, the frozen backbones' features of a batch, and the cached feature
table that training and evaluation read (the backbones run once per catalogue)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from encoders import text as text_encoder
from encoders import vision as vision_encoder
from encoders.audio import N_MELS, SAMPLE_RATE, log_mel_crops
from encoders.tags import TagFactors, TagVocab
from thaw.datasets import Dataset
from thaw.media import MediaError, decode_audio, decode_image
from thaw.schema import item_tokens
from thaw.scoring import knn_matrix

log = logging.getLogger(__name__)


@dataclass
class ItemInput:
    item_id: str
    text: str | None = None
    image: Image.Image | None = None
    audio: np.ndarray | None = None  # mono float32 at SAMPLE_RATE
    tags: frozenset[str] = frozenset()  # thaw.schema.item_tokens of the metadata, read with the text


@dataclass
class EncodedItem:
    content: np.ndarray  # predicted CF factors from the fused available modalities
    embeddings: dict[str, np.ndarray] = field(default_factory=dict)  # unit-length content embedding per modality


Batch = tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor, torch.Tensor]  # feats, mels, mel owner, masks


def features(items: list[ItemInput], timings: dict[str, float] | None = None, *, text: bool = True) -> Batch:
    """Frozen-backbone features, audio log-mels and the modality mask of a batch; `timings` (when given) gets the
    seconds each modality took (modalities absent from the batch are left out). `text=False` leaves the text
    features zero (the caller embeds the texts itself); the mask still says which items have text."""
    clock = timings if timings is not None else {}
    n = len(items)
    masks = torch.tensor(
        [[it.text is not None and bool(it.text), it.image is not None, it.audio is not None] for it in items],
        dtype=torch.bool,
    )
    feats = {"text": torch.zeros(n, text_encoder.TEXT_DIM), "image": torch.zeros(n, vision_encoder.IMAGE_DIM)}
    idx = [i for i in range(n) if masks[i, 0]] if text else []
    if idx:
        start = time.perf_counter()
        feats["text"][idx] = torch.from_numpy(text_encoder.embed_texts([items[i].text or "" for i in idx]))
        clock["text"] = time.perf_counter() - start
    idx = [i for i in range(n) if masks[i, 1]]
    if idx:
        start = time.perf_counter()
        feats["image"][idx] = torch.from_numpy(vision_encoder.embed_images([items[i].image for i in idx]))  # type: ignore[misc]
        clock["image"] = time.perf_counter() - start
    mels, owner = [], []
    start = time.perf_counter()
    for i, it in enumerate(items):
        if it.audio is not None:
            m = log_mel_crops(it.audio)
            mels.append(m)
            owner += [i] * len(m)
    if mels:
        clock["audio"] = time.perf_counter() - start
    mel = torch.cat(mels) if mels else torch.zeros(0, N_MELS, 188)
    return feats, mel, torch.tensor(owner, dtype=torch.long), masks


def item_inputs(ds: Dataset, item_ids: list[str]) -> list[ItemInput]:
    """Decode a dataset's items into encoder input; unreadable media are skipped with a warning."""
    out = []
    for item_id in item_ids:
        item = ds.items[item_id]
        image = audio = None
        try:
            image = decode_image(item.image.read_bytes()) if item.image else None
        except MediaError as exc:
            log.warning("item %s: image skipped: %s", item_id, exc)
        try:
            audio = decode_audio(item.audio.read_bytes(), sample_rate=SAMPLE_RATE) if item.audio else None
        except MediaError as exc:
            log.warning("item %s: audio skipped: %s", item_id, exc)
        out.append(ItemInput(item_id, text=item.text or None, image=image, audio=audio, tags=item_tokens(item.fields)))
    return out


@dataclass
class Table:
    """Cached content features of a set of items (frozen backbones run once); `feats["tags"]` and
    `feats["tag_factors"]` appear once a model's tag vocabulary and tag factors are applied (`with_vocab`,
    `with_tag_factors`)."""

    ids: list[str]
    feats: dict[str, torch.Tensor]
    masks: torch.Tensor
    mels: list[torch.Tensor]
    tags: list[frozenset[str]]

    def subset(self, ids: list[str]) -> Table:
        pos = {item: i for i, item in enumerate(self.ids)}
        idx = [pos[i] for i in ids]
        return Table(
            list(ids),
            {k: v[idx] for k, v in self.feats.items()},
            self.masks[idx],
            [self.mels[i] for i in idx],
            [self.tags[i] for i in idx],
        )

    def with_vocab(self, vocab: TagVocab) -> Table:
        tags = torch.from_numpy(vocab.transform(self.tags))
        return Table(self.ids, dict(self.feats, tags=tags), self.masks, self.mels, self.tags)

    def with_tag_factors(self, factors: TagFactors, own: np.ndarray | None = None) -> Table:
        """`own`: the rows' CF vectors, when `factors` were fitted on these items (leave-one-out)."""
        z = torch.from_numpy(factors.transform(self.tags, own))
        return Table(self.ids, dict(self.feats, tag_factors=z), self.masks, self.mels, self.tags)

    def knn(self) -> np.ndarray:
        """The rows' content_knn vectors (thaw.scoring.knn_matrix of the frozen text and image features)."""
        return knn_matrix(self.feats["text"].numpy(), self.feats["image"].numpy())

    def batch(self, idx: list[int]) -> Batch:
        mels = [self.mels[i] for i in idx]
        owner = torch.tensor([j for j, m in enumerate(mels) for _ in range(len(m))], dtype=torch.long)
        mel = torch.cat([m for m in mels if len(m)]) if len(owner) else torch.zeros(0, N_MELS, 188)
        return {k: v[idx] for k, v in self.feats.items()}, mel, owner, self.masks[idx]


def content_table(inputs: list[ItemInput], batch_size: int = 64, progress: bool = False) -> Table:
    """The frozen features of `inputs`. The texts are embedded in one call, which batches them by length (a batch is
    padded to its longest text, so catalogue-order batches would pad short texts to long ones); images and audio go
    in chunks of `batch_size`."""
    with_text = [i for i, it in enumerate(inputs) if it.text]
    text = torch.zeros(len(inputs), text_encoder.TEXT_DIM)
    if with_text:
        text[with_text] = torch.from_numpy(
            text_encoder.embed_texts([inputs[i].text or "" for i in with_text], progress=progress)
        )
    parts = []
    for start in tqdm(range(0, len(inputs), batch_size), desc="image and audio features", disable=not progress):
        chunk = inputs[start : start + batch_size]
        feats, mel, owner, masks = features(chunk, text=False)
        per_item = [mel[owner == j] for j in range(len(chunk))]
        parts.append((feats, masks, per_item))
    return Table(
        [it.item_id for it in inputs],
        {
            "text": text,
            "image": torch.cat([p[0]["image"] for p in parts]) if parts else torch.zeros(0, vision_encoder.IMAGE_DIM),
        },
        torch.cat([p[1] for p in parts]) if parts else torch.zeros(0, 3, dtype=torch.bool),
        [m for p in parts for m in p[2]],
        [it.tags for it in inputs],
    )


def catalogue_features(ds: Dataset, *, progress: bool = True) -> Table:
    """Frozen-backbone features of every item with content, computed once for all seeds and methods."""
    ids = [i for i in sorted(ds.items) if ds.items[i].modalities]
    return content_table(item_inputs(ds, ids), progress=progress)


def chunks(n: int, size: int = 256) -> list[list[int]]:
    return [list(range(start, min(start + size, n))) for start in range(0, n, size)]
