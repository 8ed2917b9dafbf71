"""Cold-start evaluation: ranking metrics (pure) and the per-user protocol over a set of cold items."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from thaw.datasets import Dataset, Interactions
from thaw.scoring import cosine, profile, score_items, soft_max_cosine, unit_rows


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
    knn_histories: Histories | None = None,
    knn_beta: float = 0.0,
) -> dict[str, list[str]]:
    """Every user with cold positives ranks all cold items by thaw.scoring.score_items (alpha=1, knn_weight=0:
    CF score only); `knn`: the cold items' content_knn vectors, `knn_profiles`: the users' knn profiles,
    `knn_histories`: their histories' knn vectors (read where `knn_beta` > 0)."""
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
            knn_history=knn_histories.of(user) if knn_histories is not None and knn_beta > 0.0 else None,
            knn_beta=knn_beta,
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
    knn_histories: Histories | None = None,
    knn_beta: float = 0.0,
) -> float:
    """NDCG@20 of `rank_cold` over the users with positives among `cold_ids` (0 when there are none), computed on
    the users x items score matrix at once (`cold_ndcg_grid` with one candidate)."""
    return cold_ndcg_grid(
        user_ids,
        user_factors,
        cold_ids,
        cold_pred,
        positives,
        [(alpha, knn_weight)],
        profiles=profiles,
        knn=knn,
        knn_profiles=knn_profiles,
        knn_histories=knn_histories,
        knn_beta=knn_beta,
    )[(alpha, knn_weight)]


def _warm_events(ds: Dataset, warm_ids: Sequence[str]) -> dict[str, list[int]]:
    """Each user's interactions with the warm items, as indices into `warm_ids`, in event order (repeats kept)."""
    index = {item: i for i, item in enumerate(warm_ids)}
    rows: dict[str, list[int]] = {}
    for user, item in zip(ds.interactions.user_ids.tolist(), ds.interactions.item_ids.tolist(), strict=True):
        if item in index:
            rows.setdefault(user, []).append(index[item])
    return rows


def history_profiles(ds: Dataset, warm_ids: Sequence[str], warm_pred: np.ndarray) -> dict[str, np.ndarray]:
    """Each user's profile over `warm_pred`, the vectors of the warm items (Thaw's predicted factors: the content
    profile; content_knn vectors: the knn profile): the unit centroid of their warm items' vectors."""
    rows = _warm_events(ds, warm_ids)
    return {u: p for u, r in rows.items() if (p := profile([warm_pred[i] for i in r])) is not None}


@dataclass(frozen=True)
class Histories:
    """Users' warm histories in one vector space (content_knn's): the warm items' vectors and each user's rows."""

    vectors: np.ndarray
    rows: Mapping[str, np.ndarray]

    def of(self, user: str) -> np.ndarray | None:
        """The user's history vectors (None without history)."""
        rows = self.rows.get(user)
        return None if rows is None else self.vectors[rows]


def history_rows(ds: Dataset, warm_ids: Sequence[str], vectors: np.ndarray) -> Histories:
    """Each user's warm items (`warm_ids`, rows of `vectors`) among the dataset's interactions, in event order, each
    once."""
    rows = _warm_events(ds, warm_ids)
    return Histories(vectors, {u: np.asarray(list(dict.fromkeys(r)), np.int64) for u, r in rows.items()})


def ndcg_rows(
    scores: np.ndarray, positive: np.ndarray, k: int = 20, n_positives: np.ndarray | None = None
) -> np.ndarray:
    """`ndcg_at_k` of every row of a (users, items) score matrix against a 0/1 positive mask of the same shape, each
    row ranked as `rank_by_scores` ranks (descending score, ties broken by position); `n_positives`: the users'
    positive counts when some positives are not among the columns (default: the mask's row sums)."""
    n_users, n_items = scores.shape
    top = min(k, n_items)
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    counts = positive.sum(1) if n_positives is None else np.asarray(n_positives)
    ideal = np.concatenate([[0.0], np.cumsum(discounts)])[np.minimum(counts, k)]
    if top == 0 or n_users == 0:
        return np.zeros(n_users)
    kth = -np.partition(-scores, top - 1, axis=1)[:, top - 1 : top]  # each row's top-th largest score
    above, at = scores > kth, scores == kth
    chosen = above | (at & (np.cumsum(at, axis=1) <= top - above.sum(1, keepdims=True)))  # first ties by position
    cols = np.nonzero(chosen)[1].reshape(n_users, top)
    order = np.argsort(-np.take_along_axis(scores, cols, 1), axis=1, kind="stable")
    gains = np.take_along_axis(positive, np.take_along_axis(cols, order, 1), 1).astype(float)
    dcg = gains @ discounts[:top]
    return np.divide(dcg, ideal, out=np.zeros(n_users), where=ideal > 0)


def _zscore_rows(x: np.ndarray) -> np.ndarray:
    """thaw.scoring.zscore of every row."""
    std = x.std(axis=1, keepdims=True)
    return np.where(std > 1e-12, (x - x.mean(axis=1, keepdims=True)) / np.where(std > 1e-12, std, 1.0), 0.0)


def cold_ndcg_grid(
    user_ids: list[str],
    user_factors: np.ndarray,
    cold_ids: list[str],
    cold_pred: np.ndarray,
    positives: Mapping[str, set[str]],
    candidates: Sequence[tuple[float, float]],
    *,
    profiles: Mapping[str, np.ndarray] | None = None,
    knn: np.ndarray | None = None,
    knn_profiles: Mapping[str, np.ndarray] | None = None,
    knn_histories: Histories | None = None,
    knn_beta: float = 0.0,
) -> dict[tuple[float, float], float]:
    """`cold_ndcg` of every (alpha, knn_weight) candidate at once, with one content_knn similarity (`knn_beta`, as
    thaw.scoring.knn_similarity reads it): each user's CF scores, Thaw-profile similarities and content_knn
    similarities over the cold items are computed once, then combined per candidate as thaw.scoring.score_items
    combines them, and NDCG@20 is taken over all users together."""
    if not positives:
        return {c: 0.0 for c in candidates}
    uix = {u: i for i, u in enumerate(user_ids)}
    users = [u for u in sorted(positives) if u in uix]
    if not users:
        return {c: 0.0 for c in candidates}
    col = {item: j for j, item in enumerate(cold_ids)}
    pos = np.zeros((len(users), len(cold_ids)), dtype=bool)
    for r, u in enumerate(users):
        pos[r, [col[i] for i in positives[u] if i in col]] = True
    profiles, knn_profiles = profiles or {}, knn_profiles or {}
    norms = np.linalg.norm(cold_pred, axis=1) + 1e-12
    zero = np.zeros(len(cold_ids))
    cf = np.stack([np.asarray(cold_pred @ user_factors[uix[u]], float) for u in users])
    has_prof = np.array([u in profiles for u in users], dtype=bool)[:, None]
    sim = np.stack([np.asarray((cold_pred @ profiles[u]) / norms, float) if u in profiles else zero for u in users])
    if knn_beta > 0.0:
        cosines = {}
        if knn is not None and knn_histories is not None:
            # every cold item's cosine to every warm item once; each user's soft maximum over their rows of it
            table = unit_rows(knn) @ unit_rows(knn_histories.vectors).T
            cosines = {
                u: soft_max_cosine(table[:, rows], knn_beta)
                for u in users
                if (rows := knn_histories.rows.get(u)) is not None and len(rows)
            }
    else:
        cosines = {u: cosine(knn, knn_profiles[u]) for u in users if knn is not None and u in knn_profiles}
    kind = next(iter(cosines.values())).dtype if cosines else zero.dtype  # z-scored in score_items' precision
    knn_cos = np.stack([cosines.get(u, zero).astype(kind) for u in users])
    has_knn = np.array([u in cosines for u in users], dtype=bool)[:, None]
    n_pos = np.array([len(positives[u]) for u in users])
    z_cf, z_sim, z_knn = _zscore_rows(cf), _zscore_rows(sim), _zscore_rows(knn_cos)
    out = {}
    for alpha, w in candidates:
        if not (0.0 <= alpha <= 1.0 and 0.0 <= w <= 1.0):
            raise ValueError(f"alpha and knn_weight must be in [0, 1], got {alpha}, {w}")
        thaw = np.where(has_prof, alpha * z_cf + (1.0 - alpha) * z_sim, cf)
        if w == 0.0:
            scores = thaw
        elif w == 1.0:
            scores = np.where(has_knn, knn_cos, thaw)
        else:
            scores = np.where(has_knn, (1.0 - w) * _zscore_rows(thaw) + w * z_knn, thaw)
        out[(alpha, w)] = float(ndcg_rows(scores, pos, n_positives=n_pos).sum() / len(positives))
    return out
