"""CF factors: implicit-feedback ALS on warm items' interactions, and the fold-in of one new user or item."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from threadpoolctl import threadpool_limits

from thaw.datasets import Interactions


@dataclass
class Factors:
    """ALS output: `users[k]` is the factor row of `user_ids[k]`, `items[k]` that of `item_ids[k]` (both sorted)."""

    user_ids: list[str]
    item_ids: list[str]
    users: np.ndarray  # (n_users, d) float32
    items: np.ndarray  # (n_items, d) float32


def confidence_matrix(
    interactions: Interactions, user_ids: list[str], item_ids: list[str], alpha: float
) -> sp.csr_matrix:
    """(users, items) CSR of confidences 1 + alpha * sum of event weights; repeated events add up."""
    uix = {u: i for i, u in enumerate(user_ids)}
    iix = {it: i for i, it in enumerate(item_ids)}
    rows = np.fromiter((uix[u] for u in interactions.user_ids), np.int32, len(interactions))
    cols = np.fromiter((iix[i] for i in interactions.item_ids), np.int32, len(interactions))
    weights = sp.csr_matrix(
        (interactions.weights.astype(np.float32), (rows, cols)), shape=(len(user_ids), len(item_ids))
    )
    weights.sum_duplicates()
    weights.data = (1.0 + alpha * weights.data).astype(np.float32)
    return weights


def fit_als(
    interactions: Interactions,
    *,
    factors: int = 64,
    regularization: float = 0.05,
    iterations: int = 20,
    alpha: float = 10.0,
    seed: int = 0,
) -> Factors:
    """Weighted matrix factorisation (Hu, Koren, Volinsky 2008): preference 1 for every observed (user, item)
    with confidence 1 + alpha * weight, preference 0 with confidence 1 elsewhere.

    >>> f = fit_als(warm_interactions, factors=32)   # doctest: +SKIP
    >>> scores = f.users @ f.items.T
    """
    from implicit.cpu.als import AlternatingLeastSquares

    if len(interactions) == 0:
        raise ValueError("ALS needs at least one interaction; the warm split is empty")
    if np.any(interactions.weights < 0):
        raise ValueError("interaction weights must be >= 0 (they scale the confidence 1 + alpha * weight)")
    user_ids = sorted(set(interactions.user_ids.tolist()))
    item_ids = sorted(set(interactions.item_ids.tolist()))
    matrix = confidence_matrix(interactions, user_ids, item_ids, alpha)
    model = AlternatingLeastSquares(
        factors=factors,
        regularization=regularization,
        alpha=1.0,  # the matrix already holds the confidences; implicit reads its values as C directly
        iterations=iterations,
        random_state=seed,
        calculate_training_loss=False,
    )
    with threadpool_limits(1, "blas"):
        model.fit(matrix, show_progress=False)
    return Factors(
        user_ids, item_ids, np.asarray(model.user_factors, np.float32), np.asarray(model.item_factors, np.float32)
    )


def fold_in(
    fixed: np.ndarray,
    confidences: np.ndarray,
    reg: float,
    *,
    gram: np.ndarray | None = None,
    prior: np.ndarray | None = None,
    prior_weight: float = 0.0,
) -> np.ndarray:
    """The ALS least-squares update for one new row (a user from their events, or an item from its audience).

    `fixed` (n, d) holds the other side's factors of the n rows it interacted with and `confidences` (n,) their
    confidences c_j = 1 + alpha * w_j. Solves min_x sum_j c_j (1 - x.y_j)^2 + reg |x|^2. With `gram` = Y^T Y over
    *all* rows of the other side, the unobserved entries count too (preference 0, confidence 1), which is exactly
    implicit's update: x = (Y^T Y + sum_j (c_j - 1) y_j y_j^T + reg I)^-1 sum_j c_j y_j. A `prior` (d,) adds
    prior_weight |x - prior|^2: the row is pulled toward it (content-regularised ALS).
    """
    y = np.asarray(fixed, np.float64)
    c = np.asarray(confidences, np.float64)
    if y.ndim != 2 or c.shape != (y.shape[0],):
        raise ValueError(f"fold_in expects fixed (n, d) and confidences (n,); got {y.shape} and {c.shape}")
    d = y.shape[1]
    if gram is None:
        a = (y.T * c) @ y
    else:
        if gram.shape != (d, d):
            raise ValueError(f"gram must be ({d}, {d}) = Y^T Y of the other side; got {gram.shape}")
        a = np.asarray(gram, np.float64) + (y.T * (c - 1.0)) @ y
    a += (reg + prior_weight) * np.eye(d)
    b = (y.T * c).sum(axis=1)
    if prior is not None:
        b += prior_weight * np.asarray(prior, np.float64)
    return np.linalg.solve(a, b).astype(np.float32)


def fold_in_events(
    fixed: np.ndarray,
    weights: np.ndarray,
    *,
    reg: float,
    alpha: float,
    gram: np.ndarray | None = None,
    prior: np.ndarray | None = None,
    shrinkage: float = 0.0,
) -> np.ndarray:
    """A new row's factors from its events, as training would solve it: confidences 1 + alpha * weight (the
    `confidence_matrix` of training) and, with `gram` = Y^T Y of the other side's learned factors, the unobserved
    entries counted too (implicit's exact update; a row with little evidence stays near zero). The one fold-in that
    serving, re-embedding and the offline replay use, for a user from their history and for an item from its
    audience.

    With a `prior` (an item's content-predicted vector) the result is shrunk toward it in proportion to the
    evidence: n / (n + shrinkage) of the fold-in from its n events, the rest the prior (the weights the served
    vector blends learned and predicted factors with), so a handful of events cannot throw a new item far out."""
    vector = fold_in(fixed, 1.0 + alpha * np.asarray(weights, np.float64), reg, gram=gram)
    if prior is None or shrinkage <= 0:
        return vector
    n = len(weights)
    w = n / (n + shrinkage)
    return (w * vector + (1.0 - w) * np.asarray(prior, np.float32)).astype(np.float32)


def solve_rows(
    by_row: sp.csr_matrix,
    other: np.ndarray,
    reg: float,
    *,
    prior: np.ndarray | None = None,
    prior_weight: float = 0.0,
    block_rows: int = 4096,
    block_cols: int = 8192,
) -> np.ndarray:
    """`fold_in` of every row of `by_row` (rows x other side, CSR of confidences) at once, with `gram` = Y^T Y of all
    of `other`: each row solves (Y^T Y + sum_j (c_j - 1) y_j y_j^T + reg I) x = sum_j c_j y_j, plus
    prior_weight |x - prior|^2 where the row's `prior` is not NaN. The systems of `block_rows` rows are built at once
    (the sparse (c - 1) times the other side's outer products y_j y_j^T, `block_cols` of them held at a time) and
    solved batched."""
    y = np.asarray(other, np.float64)
    n_rows, d = by_row.shape[0], y.shape[1]
    gram = y.T @ y
    has = np.zeros(n_rows, bool) if prior is None else ~np.isnan(prior).any(axis=1)
    weight = np.where(has, prior_weight, 0.0)
    target = np.zeros((n_rows, d)) if prior is None else np.where(has[:, None], prior, 0.0)
    excess = by_row.astype(np.float64)
    excess.data -= 1.0  # c_j - 1: the unobserved entries' confidence 1 is in the gram
    blocks = [slice(first, min(first + block_cols, len(y))) for first in range(0, len(y), block_cols)]

    def outer(cols: slice) -> np.ndarray:
        return (y[cols, :, None] * y[cols, None, :]).reshape(-1, d * d)

    whole = outer(blocks[0]) if len(blocks) == 1 else None  # one block: built once for every row block
    out = np.empty((n_rows, d))
    for start in range(0, n_rows, block_rows):
        rows = slice(start, min(start + block_rows, n_rows))
        a = np.broadcast_to(gram + reg * np.eye(d), (rows.stop - start, d, d)).copy()
        a += weight[rows, None, None] * np.eye(d)
        excess_rows = excess[rows]
        for cols in blocks:
            part = excess_rows if whole is not None else excess_rows[:, cols]
            a += (part @ (whole if whole is not None else outer(cols))).reshape(-1, d, d)
        b = by_row[rows] @ y + weight[rows, None] * target[rows]
        out[rows] = np.linalg.solve(a, b[..., None])[..., 0]
    return out


def content_regularised_als(
    interactions: Interactions,
    start: Factors,
    prior: Callable[[np.ndarray], np.ndarray],
    weight: float,
    *,
    alpha: float,
    regularization: float,
    rounds: int = 4,
) -> Factors:
    """Collaborative topic regression's alternation (Wang & Blei 2011) on implicit feedback, from fitted ALS
    factors: each round `prior(items)` says where content puts every item (a row of NaN: the item has no content),
    item rows are re-solved pulled toward it with `weight` times the mean diagonal of U^T U, then user rows are
    re-solved (each side's rows solved together, `solve_rows`). The CF space becomes one that content can predict,
    at some cost in fitting warm interactions."""
    by_user = confidence_matrix(interactions, start.user_ids, start.item_ids, alpha)
    by_item = by_user.T.tocsr()
    users, items = start.users.astype(np.float64), start.items.astype(np.float64)
    pull = weight * float(np.trace(users.T @ users)) / users.shape[1]
    for _ in range(rounds):
        items = solve_rows(by_item, users, regularization, prior=prior(items), prior_weight=pull)
        users = solve_rows(by_user, items, regularization)
    return Factors(start.user_ids, start.item_ids, users.astype(np.float32), items.astype(np.float32))
