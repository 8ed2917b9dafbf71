"""Experiments: the arms' recommendation policies as pure ranking functions over candidate arrays — the API ranks
candidates fetched from the index with them, the offline replay ranks the whole catalogue with them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from api.blend import score_items, served_vectors

POLICIES = ("thaw", "cf_only", "content_knn", "popularity", "random")
KNN_MODALITIES = ("text", "image")  # frozen, model-free backbones: the audio embedding is learned by Thaw itself


@dataclass(frozen=True)
class Policy:
    """One arm's ranking rule. `alpha` and `model_version` belong to `thaw` (None: the model's tuned alpha, the
    active version)."""

    name: str
    alpha: float | None = None
    model_version: str | None = None

    def __post_init__(self) -> None:
        if self.name not in POLICIES:
            raise ValueError(f"unknown policy {self.name!r}; expected one of {', '.join(POLICIES)}")
        if self.name != "thaw" and (self.alpha is not None or self.model_version is not None):
            raise ValueError(f"alpha and model_version apply to the thaw policy only; {self.name!r} got them")
        if self.alpha is not None and not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {self.alpha}")

    def as_dict(self) -> dict[str, Any]:
        return {"policy": self.name, "alpha": self.alpha, "model_version": self.model_version}


@dataclass
class Candidates:
    """The items a policy may rank. `content`: Thaw's predicted factors; `cf`: learned or folded-in CF factors
    (a NaN row where an item has none); `knn`: the content_knn vectors (`knn_matrix`); `interactions`: each item's
    interaction count when served (0 = cold)."""

    item_ids: list[str]
    interactions: np.ndarray
    content: np.ndarray | None = None
    cf: np.ndarray | None = None
    knn: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.item_ids)

    def subset(self, idx: np.ndarray) -> Candidates:
        def take(a: np.ndarray | None) -> np.ndarray | None:
            return None if a is None else a[idx]

        return Candidates(
            [self.item_ids[i] for i in idx], self.interactions[idx], take(self.content), take(self.cf), take(self.knn)
        )


@dataclass
class UserContext:
    """What the policies know of a user: CF factors, the Thaw content profile (unit centroid of the predicted
    factors of their history) and the content_knn profile (unit centroid of their history's knn vectors)."""

    vector: np.ndarray | None = None
    profile: np.ndarray | None = None
    knn_profile: np.ndarray | None = None


def knn_matrix(text: np.ndarray, image: np.ndarray) -> np.ndarray:
    """content_knn vectors: each item's unit text and unit image embeddings side by side (zero rows stay zero, so
    a missing modality adds nothing to the cosine)."""

    def unit(x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, np.float32)
        return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)

    return np.concatenate([unit(text), unit(image)], axis=1)


def scores(
    policy: Policy, cands: Candidates, user: UserContext, *, default_alpha: float, shrinkage: float, seed: int
) -> np.ndarray:
    """One score per candidate, higher is better; -inf marks an item the policy never shows."""
    n = len(cands)
    out = np.full(n, -np.inf)
    if n == 0:
        return out
    if policy.name == "thaw":
        if user.vector is None or (cands.content is None and cands.cf is None):
            return out
        nan = np.full((n, len(user.vector)), np.nan, np.float32)
        cf = nan if cands.cf is None else cands.cf
        content = nan if cands.content is None else cands.content
        ok = ~(np.isnan(cf).any(axis=1) & np.isnan(content).any(axis=1))
        served = served_vectors(cf[ok], content[ok], cands.interactions[ok], shrinkage)
        blended_content = None if np.isnan(content[ok]).any() else content[ok]
        alpha = default_alpha if policy.alpha is None else policy.alpha
        out[ok] = score_items(user.vector, served, blended_content, user.profile, alpha)
    elif policy.name == "cf_only":
        if user.vector is None or cands.cf is None:
            return out
        ok = (cands.interactions > 0) & ~np.isnan(cands.cf).any(axis=1)  # cold items never, until they have some
        out[ok] = cands.cf[ok] @ user.vector
    elif policy.name == "content_knn":
        if user.knn_profile is None or cands.knn is None:
            return out
        norms = np.linalg.norm(cands.knn, axis=1)
        ok = norms > 0
        out[ok] = (cands.knn[ok] @ user.knn_profile) / (norms[ok] * max(float(np.linalg.norm(user.knn_profile)), 1e-12))
    elif policy.name == "popularity":
        out = np.asarray(cands.interactions, float).copy()
    else:  # random
        out = np.random.default_rng(seed).random(n)
    return out


def rank(
    policy: Policy,
    cands: Candidates,
    user: UserContext,
    k: int,
    *,
    default_alpha: float,
    shrinkage: float,
    seed: int = 0,
) -> tuple[list[int], list[float]]:
    """The indices of the policy's top k candidates (ties by candidate order) and their scores."""
    s = scores(policy, cands, user, default_alpha=default_alpha, shrinkage=shrinkage, seed=seed)
    order = [int(i) for i in np.argsort(-s, kind="stable")[:k] if np.isfinite(s[i])]
    return order, [float(s[i]) for i in order]
