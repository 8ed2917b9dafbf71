"""Encoders: metadata tags -> TF-IDF bag of `field=value` tokens (vocabulary fitted on a model's warm items),
read beside the text embedding by the text head."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence

import numpy as np


class TagVocab:
    """Tokens seen on at least `min_count` training items, with their inverse document frequencies.

    >>> vocab = TagVocab.fit([{"genres=Drama", "has:cast"}, {"genres=Drama"}], min_count=2)
    >>> vocab.tokens
    ['genres=Drama']
    >>> vocab.transform([{"genres=Drama", "unseen"}]).tolist()
    [[1.0]]
    """

    def __init__(self, tokens: Sequence[str], idf: Sequence[float]) -> None:
        if len(tokens) != len(idf):
            raise ValueError(f"expected one idf per token, got {len(tokens)} tokens and {len(idf)} idf values")
        self.tokens = list(tokens)
        self.idf = np.asarray(idf, np.float32)
        self._index = {t: i for i, t in enumerate(self.tokens)}

    @classmethod
    def fit(cls, tag_sets: Sequence[Iterable[str]], *, min_count: int = 2, max_size: int = 50_000) -> TagVocab:
        if min_count < 1 or max_size < 0:
            raise ValueError(f"min_count must be >= 1 and max_size >= 0, got {min_count} and {max_size}")
        counts = Counter(t for tags in tag_sets for t in set(tags))
        kept = sorted((t for t, c in counts.items() if c >= min_count), key=lambda t: (-counts[t], t))[:max_size]
        n = len(tag_sets)
        return cls(sorted(kept), [math.log((1 + n) / (1 + counts[t])) + 1.0 for t in sorted(kept)])

    def __len__(self) -> int:
        return len(self.tokens)

    def transform(self, tag_sets: Sequence[Iterable[str]]) -> np.ndarray:
        """(n, len(vocab)) L2-normalised TF-IDF rows; tokens outside the vocabulary are ignored."""
        out = np.zeros((len(tag_sets), len(self.tokens)), np.float32)
        for row, tags in enumerate(tag_sets):
            cols = [self._index[t] for t in tags if t in self._index]
            out[row, cols] = self.idf[cols]
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.where(norms > 0, norms, 1.0)

    def to_json(self) -> dict[str, list[str] | list[float]]:
        return {"tokens": self.tokens, "idf": self.idf.tolist()}

    @classmethod
    def from_json(cls, data: dict[str, list[str] | list[float]]) -> TagVocab:
        return cls([str(t) for t in data["tokens"]], [float(x) for x in data["idf"]])
