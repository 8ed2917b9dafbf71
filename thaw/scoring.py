"""Pure scoring: an item's served vector, the user's content profiles, and the cold-start scorer that evaluation,
training's choice on cold validation and serving share: the CF score, similarity to the user's Thaw profile and
content_knn similarity to their history, blended."""

from __future__ import annotations

import numpy as np


def cf_weight(interactions: int, shrinkage: float) -> float:
    """How far an item has moved from its predicted vector to its learned CF vector: n / (n + shrinkage)."""
    return interactions / (interactions + shrinkage) if interactions > 0 else 0.0


def served_vector(
    cf: np.ndarray | None, content: np.ndarray | None, interactions: int, shrinkage: float
) -> np.ndarray | None:
    """The vector a user embedding is scored against: predicted factors for a new item, sliding to the learned
    CF factors as interactions accumulate."""
    if cf is None:
        return content
    if content is None:
        return cf
    w = cf_weight(interactions, shrinkage)
    return w * cf + (1.0 - w) * content


def served_vectors(cf: np.ndarray, content: np.ndarray, interactions: np.ndarray, shrinkage: float) -> np.ndarray:
    """`served_vector` for n items at once: (n, d) CF and content rows (a row of NaN: the item lacks that vector)
    and their interaction counts; an item with neither vector gets a zero row."""
    has_cf, has_content = ~np.isnan(cf).any(axis=1), ~np.isnan(content).any(axis=1)
    w = np.array([cf_weight(int(n), shrinkage) for n in interactions], dtype=float).reshape(-1)
    w = np.where(has_content, w, 1.0) * has_cf
    return w[:, None] * np.nan_to_num(cf) + (1.0 - w)[:, None] * np.nan_to_num(content)


def profile(vectors: list[np.ndarray], weights: list[float] | None = None) -> np.ndarray | None:
    """Unit-length weighted centroid of the user's history in content space (None without history)."""
    if not vectors:
        return None
    w = np.ones(len(vectors)) if weights is None else np.asarray(weights, float)
    units = np.stack([v / (np.linalg.norm(v) + 1e-12) for v in vectors])
    centroid = (w[:, None] * units).sum(0)
    norm = np.linalg.norm(centroid)
    return centroid / norm if norm > 0 else None


def zscore(x: np.ndarray) -> np.ndarray:
    std = float(x.std())
    return (x - x.mean()) / std if std > 1e-12 else np.zeros_like(x, dtype=float)


def blend(cf_scores: np.ndarray, content_scores: np.ndarray | None, alpha: float) -> np.ndarray:
    """alpha * z(CF score) + (1 - alpha) * z(content similarity), standardised over the candidate set so the two
    scales are comparable; without content scores the CF score alone ranks."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    if content_scores is None:
        return np.asarray(cf_scores, float)
    return alpha * zscore(np.asarray(cf_scores, float)) + (1.0 - alpha) * zscore(np.asarray(content_scores, float))


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero)."""
    x = np.asarray(x, np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def knn_matrix(text: np.ndarray, image: np.ndarray) -> np.ndarray:
    """content_knn vectors: each item's unit text and unit image embeddings side by side (zero rows stay zero, so
    a missing modality adds nothing to the cosine)."""
    return np.concatenate([unit_rows(text), unit_rows(image)], axis=1)


def cosine(rows: np.ndarray, query: np.ndarray) -> np.ndarray:
    """Cosine of each row to `query` (0 for a zero row or a zero query)."""
    norms = np.linalg.norm(rows, axis=1) * max(float(np.linalg.norm(query)), 1e-12)
    return np.where(norms > 0, (rows @ query) / np.maximum(norms, 1e-12), 0.0)


def soft_max_cosine(cosines: np.ndarray, beta: float) -> np.ndarray:
    """A soft maximum over the last axis of cosines: log(mean(exp(beta c))) / beta, between the
    mean cosine (beta -> 0) and the largest (beta -> inf). Item-based kNN's score of a candidate against a user's
    history rows: a candidate close to any one of the items they liked ranks high, unlike the cosine to their
    centroid, which rewards being near the average of a varied history."""
    if beta <= 0.0:
        raise ValueError(f"beta must be > 0, got {beta}")
    c = np.asarray(cosines, np.float64)
    if c.shape[-1] == 0:
        return np.zeros(c.shape[:-1])
    top = c.max(axis=-1, keepdims=True)
    lme = np.log(np.exp(beta * (c - top)).mean(axis=-1)) + beta * top[..., 0]  # log-mean-exp, overflow-safe
    return lme / beta


def knn_similarity(knn: np.ndarray, history: np.ndarray | None, profile: np.ndarray | None, beta: float) -> np.ndarray:
    """content_knn similarity of candidates (rows of `knn`) to a user: the cosine to their knn profile (`beta` 0),
    or item-based kNN, the soft maximum (`soft_max_cosine`, sharpness `beta` > 0) of the cosines to their history's
    knn vectors (rows of `history`). Zeros when the user has neither."""
    if beta > 0.0:
        if history is None or len(history) == 0:
            return np.zeros(len(knn))
        return soft_max_cosine(unit_rows(knn) @ unit_rows(history).T, beta)
    return np.zeros(len(knn)) if profile is None else cosine(knn, profile)


SCORERS = ("regression", "blend", "content_knn")


def scorer_name(knn_weight: float) -> str:
    """The cold-start candidate a knn weight names: Thaw's regression onto CF factors (0), content_knn
    similarity to the user's history (1), or a blend of the two."""
    return SCORERS[0] if knn_weight <= 0.0 else SCORERS[2] if knn_weight >= 1.0 else SCORERS[1]


def score_items(
    user: np.ndarray,
    served: np.ndarray,
    contents: np.ndarray | None,
    user_profile: np.ndarray | None,
    alpha: float,
    *,
    knn: np.ndarray | None = None,
    knn_profile: np.ndarray | None = None,
    knn_weight: float = 0.0,
    knn_history: np.ndarray | None = None,
    knn_beta: float = 0.0,
) -> np.ndarray:
    """Scores of candidate items (rows of `served`, their Thaw content vectors and their content_knn vectors) for
    one user: (1 - knn_weight) * z(Thaw's score) + knn_weight * z(content_knn similarity to the user), z-scored over
    the candidates; Thaw's score is the CF score blended by alpha with similarity to the user's Thaw profile, and the
    content_knn similarity is `knn_similarity` (the cosine to the user's knn profile, or with `knn_beta` > 0 the
    soft maximum of the cosines to their history's knn vectors `knn_history`). Without knn vectors or what the
    similarity reads of the user, Thaw's score alone ranks."""
    if not 0.0 <= knn_weight <= 1.0:
        raise ValueError(f"knn_weight must be in [0, 1], got {knn_weight}")
    cf_scores = served @ user
    if contents is None or user_profile is None:
        thaw = blend(cf_scores, None, alpha)
    else:
        norms = np.linalg.norm(contents, axis=1) + 1e-12
        thaw = blend(cf_scores, (contents @ user_profile) / norms, alpha)
    known = (knn_history is not None and len(knn_history) > 0) if knn_beta > 0.0 else knn_profile is not None
    if knn_weight == 0.0 or knn is None or not known:
        return thaw
    similarity = knn_similarity(knn, knn_history, knn_profile, knn_beta)
    if knn_weight == 1.0:
        return similarity
    return (1.0 - knn_weight) * zscore(thaw) + knn_weight * zscore(similarity)


def strongest(contents: np.ndarray, history: np.ndarray, top: int) -> list[list[tuple[int, float]]]:
    """For each candidate (a row of `contents`; a NaN row has no content vector), the history rows that contribute
    most to its content similarity to the user's profile (the unit centroid of `history`): (row, cosine) pairs,
    largest first, up to `top`, positive cosines only."""
    units = history / (np.linalg.norm(history, axis=1, keepdims=True) + 1e-12)
    cands = np.nan_to_num(contents) / (np.linalg.norm(np.nan_to_num(contents), axis=1, keepdims=True) + 1e-12)
    cos = cands @ units.T
    out = []
    for row in cos:
        order = np.argsort(-row, kind="stable")[:top]
        out.append([(int(j), float(row[j])) for j in order if row[j] > 0])
    return out
