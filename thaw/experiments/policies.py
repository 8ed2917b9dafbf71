"""Experiments: the recommendation policies, registered by name. Each says which candidates to fetch from the index
(`queries`) and scores candidate arrays (`scores`): the API fetches candidates from the index and ranks them with a
policy, the offline replay ranks the whole catalogue with the same policy."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from thaw.schema import CF, CONTENT
from thaw.scoring import cosine, score_items, served_vectors

KNN_MODALITIES = ("text", "image")  # frozen, model-free backbones: the audio embedding is learned by Thaw itself


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
    knn_history: np.ndarray | None = None  # the knn vectors of the items of `knn_profile`, one row each
    history: list[str] = field(default_factory=list)  # the items of `profile`, in the order of `history_content`
    history_content: np.ndarray | None = None  # their content vectors, one row each


@dataclass(frozen=True)
class Search:
    """Candidates: the items nearest to `vector` by the named vector `using` (only warm ones with `warm_only`)."""

    using: str
    vector: np.ndarray
    warm_only: bool = False


@dataclass(frozen=True)
class TopBy:
    """Candidates: the items with the largest integer payload `key`."""

    key: str


@dataclass(frozen=True)
class Sample:
    """Candidates: items drawn at random."""


Query = Search | TopBy | Sample


_REGISTRY: dict[str, type[Policy]] = {}


@dataclass(frozen=True)
class Policy(ABC):
    """One arm's ranking rule. `alpha` and `model_version` belong to tunable policies (None: the model's tuned
    alpha, the served version)."""

    alpha: float | None = None
    model_version: str | None = None

    name: ClassVar[str]
    tunable: ClassVar[bool] = False
    context: ClassVar[frozenset[str]] = frozenset()  # the UserContext fields it reads: vector, profile, knn_profile
    arrays: ClassVar[tuple[str, ...]] = ()  # the Candidates arrays it scores: content, cf, knn (as `reads` adds to)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _REGISTRY[cls.name] = cls

    def __post_init__(self) -> None:
        if not self.tunable and (self.alpha is not None or self.model_version is not None):
            raise ValueError(f"alpha and model_version apply to the thaw policy only; {self.name!r} got them")
        if self.alpha is not None and not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {self.alpha}")

    def reads(self, knn_weight: float) -> tuple[frozenset[str], tuple[str, ...]]:
        """The UserContext fields and Candidates arrays it uses under a model whose knn weight is `knn_weight`."""
        return self.context, self.arrays

    def queries(self, user: UserContext, *, cold_only: bool, knn_dims: Sequence[int]) -> list[Query]:
        """Which candidates to fetch from the index for this user (the API; the replay ranks everything)."""
        return []

    @abstractmethod
    def scores(
        self,
        cands: Candidates,
        user: UserContext,
        *,
        default_alpha: float,
        shrinkage: float,
        seed: int,
        default_knn_weight: float = 0.0,
        default_knn_beta: float = 0.0,
    ) -> np.ndarray:
        """One score per candidate, higher is better; -inf marks an item the policy never shows."""

    def as_dict(self) -> dict[str, Any]:
        return {"policy": self.name, "alpha": self.alpha, "model_version": self.model_version}


def index_vectors(arrays: Sequence[str]) -> list[str]:
    """The named vectors candidates need from the index for these Candidates arrays."""
    names = {"content": [CONTENT], "cf": [CF], "knn": list(KNN_MODALITIES)}
    return [v for a in arrays for v in names[a]]


def knn_searches(knn_profile: np.ndarray | None, knn_dims: Sequence[int]) -> list[Query]:
    """Candidates nearest to a content_knn profile by each of its parts (text, image); ranked jointly after."""
    if knn_profile is None:
        return []
    out: list[Query] = []
    offset = 0
    for modality, d in zip(KNN_MODALITIES, knn_dims, strict=True):
        part = knn_profile[offset : offset + d]
        offset += d
        if d and np.linalg.norm(part) > 0:
            out.append(Search(modality, part))
    return out


class ThawPolicy(Policy):
    """The CF score against each item's served vector (predicted factors sliding to learned ones as interactions
    come), blended by alpha with similarity to the user's content profile, and by the model's knn weight with
    content_knn similarity to the user's history (thaw.scoring.score_items; both weights chosen on cold
    validation in training)."""

    name = "thaw"
    tunable = True
    context = frozenset({"vector", "profile"})
    arrays = ("content", "cf")

    def reads(self, knn_weight: float) -> tuple[frozenset[str], tuple[str, ...]]:
        """content_knn's profile, history and vectors only where the model gives them weight."""
        if knn_weight == 0.0:
            return self.context, self.arrays
        return self.context | {"knn_profile", "knn_history"}, (*self.arrays, "knn")

    def queries(self, user: UserContext, *, cold_only: bool, knn_dims: Sequence[int]) -> list[Query]:
        if user.vector is None:
            return []
        return [Search(CONTENT, user.vector), Search(CF, user.vector), *knn_searches(user.knn_profile, knn_dims)]

    def scores(
        self,
        cands: Candidates,
        user: UserContext,
        *,
        default_alpha: float,
        shrinkage: float,
        seed: int,
        default_knn_weight: float = 0.0,
        default_knn_beta: float = 0.0,
    ) -> np.ndarray:
        n = len(cands)
        out = np.full(n, -np.inf)
        if n == 0 or user.vector is None or (cands.content is None and cands.cf is None):
            return out
        nan = np.full((n, len(user.vector)), np.nan, np.float32)
        cf = nan if cands.cf is None else cands.cf
        content = nan if cands.content is None else cands.content
        ok = ~(np.isnan(cf).any(axis=1) & np.isnan(content).any(axis=1))
        served = served_vectors(cf[ok], content[ok], cands.interactions[ok], shrinkage)
        blended_content = None if np.isnan(content[ok]).any() else content[ok]
        alpha = default_alpha if self.alpha is None else self.alpha
        knn = None if cands.knn is None else cands.knn[ok]
        out[ok] = score_items(
            user.vector,
            served,
            blended_content,
            user.profile,
            alpha,
            knn=knn,
            knn_profile=user.knn_profile,
            knn_weight=default_knn_weight,
            knn_history=user.knn_history,
            knn_beta=default_knn_beta,
        )
        return out


class CfOnlyPolicy(Policy):
    """Collaborative filtering alone: cold items are never shown until they have interactions."""

    name = "cf_only"
    context = frozenset({"vector"})
    arrays = ("cf",)

    def queries(self, user: UserContext, *, cold_only: bool, knn_dims: Sequence[int]) -> list[Query]:
        return [] if user.vector is None or cold_only else [Search(CF, user.vector, warm_only=True)]

    def scores(
        self,
        cands: Candidates,
        user: UserContext,
        *,
        default_alpha: float,
        shrinkage: float,
        seed: int,
        default_knn_weight: float = 0.0,
        default_knn_beta: float = 0.0,
    ) -> np.ndarray:
        out = np.full(len(cands), -np.inf)
        if len(cands) == 0 or user.vector is None or cands.cf is None:
            return out
        ok = (cands.interactions > 0) & ~np.isnan(cands.cf).any(axis=1)
        out[ok] = cands.cf[ok] @ user.vector
        return out


class ContentKnnPolicy(Policy):
    """Cosine of each item's frozen text and image embeddings to the centroid of the user's history."""

    name = "content_knn"
    context = frozenset({"knn_profile"})
    arrays = ("knn",)

    def queries(self, user: UserContext, *, cold_only: bool, knn_dims: Sequence[int]) -> list[Query]:
        return knn_searches(user.knn_profile, knn_dims)

    def scores(
        self,
        cands: Candidates,
        user: UserContext,
        *,
        default_alpha: float,
        shrinkage: float,
        seed: int,
        default_knn_weight: float = 0.0,
        default_knn_beta: float = 0.0,
    ) -> np.ndarray:
        out = np.full(len(cands), -np.inf)
        if len(cands) == 0 or user.knn_profile is None or cands.knn is None:
            return out
        ok = np.linalg.norm(cands.knn, axis=1) > 0
        out[ok] = cosine(cands.knn[ok], user.knn_profile)
        return out


class PopularityPolicy(Policy):
    """The items with the most interactions."""

    name = "popularity"

    def queries(self, user: UserContext, *, cold_only: bool, knn_dims: Sequence[int]) -> list[Query]:
        return [TopBy("interactions")]

    def scores(
        self,
        cands: Candidates,
        user: UserContext,
        *,
        default_alpha: float,
        shrinkage: float,
        seed: int,
        default_knn_weight: float = 0.0,
        default_knn_beta: float = 0.0,
    ) -> np.ndarray:
        return np.asarray(cands.interactions, float).copy()


class RandomPolicy(Policy):
    """Items in a random order seeded per served list."""

    name = "random"

    def queries(self, user: UserContext, *, cold_only: bool, knn_dims: Sequence[int]) -> list[Query]:
        return [Sample()]

    def scores(
        self,
        cands: Candidates,
        user: UserContext,
        *,
        default_alpha: float,
        shrinkage: float,
        seed: int,
        default_knn_weight: float = 0.0,
        default_knn_beta: float = 0.0,
    ) -> np.ndarray:
        return np.random.default_rng(seed).random(len(cands))


POLICIES = tuple(_REGISTRY)


def make_policy(name: str, alpha: float | None = None, model_version: str | None = None) -> Policy:
    """The registered policy `name` with its parameters; ValueError names the policies there are."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown policy {name!r}; expected one of {', '.join(POLICIES)}")
    return _REGISTRY[name](alpha, model_version)


def rank(
    policy: Policy,
    cands: Candidates,
    user: UserContext,
    k: int,
    *,
    default_alpha: float,
    shrinkage: float,
    seed: int = 0,
    default_knn_weight: float = 0.0,
    default_knn_beta: float = 0.0,
) -> tuple[list[int], list[float]]:
    """The indices of the policy's top k candidates (ties by candidate order) and their scores; `default_alpha`,
    `default_knn_weight` and `default_knn_beta` are the model's serving defaults."""
    s = policy.scores(
        cands,
        user,
        default_alpha=default_alpha,
        shrinkage=shrinkage,
        seed=seed,
        default_knn_weight=default_knn_weight,
        default_knn_beta=default_knn_beta,
    )
    order = [int(i) for i in np.argsort(-s, kind="stable")[:k] if np.isfinite(s[i])]
    return order, [float(s[i]) for i in order]
