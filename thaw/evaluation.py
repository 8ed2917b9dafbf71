"""Cold-start evaluation: ranking metrics (pure) and the per-user protocol over a set of cold items."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from thaw.datasets import Dataset, Interactions
from thaw.scoring import profile, score_items


def recall_at_k(ranked: Sequence[str], positives: set[str], k: int) -> float:
    """Hits in the top k over the user's positives (0 when there are none)."""
    return len(set(ranked[:k]) & positives) / len(positives) if positives else 0.0


def precision_at_k(ranked: Sequence[str], positives: set[str], k: int) -> float:
    return len(set(ranked[:k]) & positives) / k


def ndcg_at_k(ranked: Sequence[str], positives: set[str], k: int) -> float:
    """Binary-gain NDCG; the ideal DCG puts min(k, |positives|) hits on top."""
    dcg = sum(1.0 / np.log2(r + 2) for r, item in enumerate(ranked[:k]) if item in positives)
    ideal = sum(1.0 / np.log2(r + 2) for r in range(min(k, len(positives))))
    return float(dcg / ideal) if ideal else 0.0


def user_positives(interactions: Interactions, items: Sequence[str]) -> dict[str, set[str]]:
    """Each user's positives among `items` (users with none are left out)."""
    wanted = set(items)
    out: dict[str, set[str]] = {}
    for user, item in zip(interactions.user_ids.tolist(), interactions.item_ids.tolist(), strict=True):
        if item in wanted:
            out.setdefault(user, set()).add(item)
    return out


def evaluate_rankings(
    rankings: Mapping[str, Sequence[str]],
    positives: Mapping[str, set[str]],
    *,
    n_items: int,
    ks: Sequence[int] = (20, 100),
) -> dict[str, float]:
    """Average Recall/Precision/NDCG@k over the users in `positives`, plus item coverage@20.

    `rankings[user]` ranks all candidate (cold) items for that user; a user without a ranking scores zero.
    """
    users = sorted(positives)
    out: dict[str, float] = {}
    for k in ks:
        out[f"recall@{k}"] = float(np.mean([recall_at_k(rankings.get(u, []), positives[u], k) for u in users]))
        out[f"precision@{k}"] = float(np.mean([precision_at_k(rankings.get(u, []), positives[u], k) for u in users]))
        out[f"ndcg@{k}"] = float(np.mean([ndcg_at_k(rankings.get(u, []), positives[u], k) for u in users]))
    shown = {item for u in users for item in list(rankings.get(u, []))[:20]}
    out["coverage@20"] = len(shown) / n_items if n_items else 0.0
    return out


def rank_by_scores(scores: np.ndarray, item_ids: Sequence[str]) -> list[str]:
    """Item ids sorted by descending score (ties broken by position, so results are deterministic)."""
    order = np.argsort(-scores, kind="stable")
    return [item_ids[i] for i in order]


def rank_cold(
    user_ids: list[str],
    user_factors: np.ndarray,
    cold_ids: list[str],
    cold_pred: np.ndarray,
    positives: Mapping[str, set[str]],
    *,
    alpha: float = 1.0,
    profiles: Mapping[str, np.ndarray] | None = None,
    knn: np.ndarray | None = None,
    knn_profiles: Mapping[str, np.ndarray] | None = None,
    knn_weight: float = 0.0,
) -> dict[str, list[str]]:
    """Every user with cold positives ranks all cold items by thaw.scoring.score_items (alpha=1, knn_weight=0:
    CF score only); `knn`: the cold items' content_knn vectors, `knn_profiles`: the users' knn profiles."""
    uix = {u: i for i, u in enumerate(user_ids)}
    out = {}
    for user in positives:
        if user not in uix:
            continue
        prof = (profiles or {}).get(user)
        scores = score_items(
            user_factors[uix[user]],
            cold_pred,
            cold_pred if prof is not None else None,
            prof,
            alpha,
            knn=knn,
            knn_profile=(knn_profiles or {}).get(user),
            knn_weight=knn_weight,
        )
        out[user] = rank_by_scores(scores, cold_ids)
    return out


def cold_ndcg(
    user_ids: list[str],
    user_factors: np.ndarray,
    cold_ids: list[str],
    cold_pred: np.ndarray,
    positives: Mapping[str, set[str]],
    *,
    alpha: float = 1.0,
    profiles: Mapping[str, np.ndarray] | None = None,
    knn: np.ndarray | None = None,
    knn_profiles: Mapping[str, np.ndarray] | None = None,
    knn_weight: float = 0.0,
) -> float:
    """NDCG@20 of `rank_cold` over the users with positives among `cold_ids` (0 when there are none)."""
    if not positives:
        return 0.0
    ranks = rank_cold(
        user_ids,
        user_factors,
        cold_ids,
        cold_pred,
        positives,
        alpha=alpha,
        profiles=profiles,
        knn=knn,
        knn_profiles=knn_profiles,
        knn_weight=knn_weight,
    )
    return evaluate_rankings(ranks, positives, n_items=len(cold_ids), ks=(20,))["ndcg@20"]


def history_profiles(ds: Dataset, warm_ids: Sequence[str], warm_pred: np.ndarray) -> dict[str, np.ndarray]:
    """Each user's profile over `warm_pred`, the vectors of the warm items (Thaw's predicted factors: the content
    profile; content_knn vectors: the knn profile): the unit centroid of their warm items' vectors."""
    index = {item: i for i, item in enumerate(warm_ids)}
    rows: dict[str, list[np.ndarray]] = {}
    for user, item in zip(ds.interactions.user_ids.tolist(), ds.interactions.item_ids.tolist(), strict=True):
        if item in index:
            rows.setdefault(user, []).append(warm_pred[index[item]])
    return {u: p for u, vs in rows.items() if (p := profile(vs)) is not None}
