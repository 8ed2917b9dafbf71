"""Encoders: metadata tags -> a TF-IDF bag of `field=value` tokens (vocabulary fitted on a model's warm items) and
their target encoding onto the CF space (`TagFactors`), both read beside the text embedding by the text head."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from thaw.schema import WORD_PREFIX


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


def without_words(tag_sets: Sequence[Iterable[str]]) -> list[frozenset[str]]:
    """The tag sets less their prose words (`thaw.schema.item_words`): what the TF-IDF vocabulary reads, and the
    target encoding when cold validation leaves the words out."""
    return [frozenset(t for t in tags if not t.startswith(WORD_PREFIX)) for tags in tag_sets]


def tag_field(tag: str) -> str | None:
    """The field of a `field=value` tag (`cast=Tom Hanks` -> `cast`); None for the `has:` / `len:` bookkeeping tags,
    which say how much is known about an item rather than what it is."""
    field, sep, _ = tag.partition("=")
    return field if sep and not field.startswith(("has:", "len:")) else None


class TagFactors:
    """Target encoding of metadata tags onto the CF space: for every `field=value` tag, the sum and count of the
    centred CF vectors of the warm items that carry it. An item's features are, per field, the mean over its tags of
    sum / (count + smoothing), divided by the RMS norm of the centred vectors: a new film lands where the warm films
    of its director, cast and writers sit. Tags no warm item carries contribute nothing.

    >>> tf = TagFactors.fit([{"cast=A"}, {"cast=A", "cast=B"}], np.array([[1.0], [3.0]]), smoothing=0.0)
    >>> tf.fields, tf.transform([{"cast=A"}]).tolist()  # centred vectors -1, +1 (RMS 1): cast=A averages 0
    (['cast'], [[0.0]])
    >>> tf.transform([{"cast=A"}, {"cast=A", "cast=B"}], own=np.array([[1.0], [3.0]])).tolist()  # leave-one-out
    [[1.0], [-1.0]]
    """

    def __init__(
        self,
        tokens: Sequence[str],
        sums: np.ndarray,
        counts: np.ndarray,
        mean: np.ndarray,
        scale: float,
        smoothing: float,
    ) -> None:
        if sums.shape != (len(tokens), len(mean)) or counts.shape != (len(tokens),):
            raise ValueError(f"expected sums ({len(tokens)}, {len(mean)}) and counts ({len(tokens)},)")
        self.tokens, self.sums, self.counts = list(tokens), sums.astype(np.float64), counts.astype(np.float64)
        self.mean, self.scale, self.smoothing = mean.astype(np.float64), float(scale), float(smoothing)
        self.fields = sorted({f for t in self.tokens if (f := tag_field(t))})
        self._index = {t: i for i, t in enumerate(self.tokens)}
        column = {f: j for j, f in enumerate(self.fields)}
        self._column = [column[str(tag_field(t))] for t in self.tokens]  # each token's field block

    @classmethod
    def fit(cls, tag_sets: Sequence[Iterable[str]], vectors: np.ndarray, *, smoothing: float = 3.0) -> TagFactors:
        """`vectors[r]` is the CF vector of the item whose tags are `tag_sets[r]`."""
        vectors = np.asarray(vectors, np.float64)
        if len(tag_sets) != len(vectors) or not len(vectors):
            raise ValueError(f"expected one vector per tag set, got {len(vectors)} for {len(tag_sets)}")
        mean = vectors.mean(0)
        centred = vectors - mean
        scale = float(np.sqrt((centred**2).sum(1).mean())) or 1.0
        tokens = sorted({t for tags in tag_sets for t in tags if tag_field(t)})
        index = {t: i for i, t in enumerate(tokens)}
        sums, counts = np.zeros((len(tokens), len(mean))), np.zeros(len(tokens))
        for row, tags in zip(centred, tag_sets, strict=True):
            cols = [index[t] for t in set(tags) if t in index]
            sums[cols] += row
            counts[cols] += 1
        return cls(tokens, sums, counts, mean, scale, smoothing)

    @property
    def width(self) -> int:
        return len(self.fields) * len(self.mean)

    def transform(self, tag_sets: Sequence[Iterable[str]], own: np.ndarray | None = None) -> np.ndarray:
        """(n, width) features. `own[r]`, for items the table was fitted on, is row r's own vector: it is left out
        of its tags' sums, so training rows see what a new item would."""
        d, n = len(self.mean), len(tag_sets)
        rows, toks = [], []
        for row, tags in enumerate(tag_sets):
            for tag in sorted(set(tags)):  # a fixed order: the sums below do not depend on PYTHONHASHSEED
                if (col := self._index.get(tag)) is not None:
                    rows.append(row)
                    toks.append(col)
        r, i = np.asarray(rows, np.int64), np.asarray(toks, np.int64)
        total, count = self.sums[i], self.counts[i]
        if own is not None:
            total = total - (np.asarray(own, np.float64)[r] - self.mean)
            count = count - 1
        keep = count > 0
        r, i, parts = r[keep], i[keep], total[keep] / (count[keep] + self.smoothing)[:, None]
        cell = r * max(len(self.fields), 1) + np.asarray(self._column, np.int64)[i]  # (row, field) of each part
        out = np.zeros((n * len(self.fields), d))
        np.add.at(out, cell, parts)
        per_cell = np.bincount(cell, minlength=len(out))
        out /= np.maximum(per_cell, 1)[:, None]  # per field, the mean over the row's tags
        return (out.reshape(n, self.width) / self.scale).astype(np.float32)

    def arrays(self) -> dict[str, np.ndarray]:
        return {"sums": self.sums, "counts": self.counts, "mean": self.mean}

    def to_json(self) -> dict[str, object]:
        return {"tokens": self.tokens, "scale": self.scale, "smoothing": self.smoothing}

    @classmethod
    def load(cls, data: dict[str, Any], arrays: dict[str, np.ndarray]) -> TagFactors:
        return cls(data["tokens"], arrays["sums"], arrays["counts"], arrays["mean"], data["scale"], data["smoothing"])
