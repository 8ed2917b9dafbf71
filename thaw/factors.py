"""CF factors: implicit-feedback ALS on warm items' interactions, and the fold-in of one new user or item."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from threadpoolctl import threadpool_limits

from thaw.datasets import Interactions


@dataclass
class Factors:
    user_ids: list[str]
    item_ids: list[str]
    users: np.ndarray
    items: np.ndarray


def fit_als(
    interactions: Interactions,
    *,
    factors: int = 64,
    regularization: float = 0.05,
    iterations: int = 20,
    alpha: float = 10.0,
    seed: int = 0,
) -> Factors:
    """Weighted matrix factorisation with confidence 1 + alpha * weight (Hu, Koren, Volinsky 2008)."""
    from implicit.cpu.als import AlternatingLeastSquares

    if len(interactions) == 0:
        raise ValueError("ALS needs at least one interaction; the warm split is empty")
    user_ids = sorted(set(interactions.user_ids.tolist()))
    item_ids = sorted(set(interactions.item_ids.tolist()))
    uix = {u: i for i, u in enumerate(user_ids)}
    iix = {it: i for i, it in enumerate(item_ids)}
    rows = np.fromiter((uix[u] for u in interactions.user_ids), np.int32, len(interactions))
    cols = np.fromiter((iix[i] for i in interactions.item_ids), np.int32, len(interactions))
    matrix = sp.csr_matrix(
        (alpha * interactions.weights.astype(np.float32), (rows, cols)), shape=(len(user_ids), len(item_ids))
    )
    model = AlternatingLeastSquares(
        factors=factors,
        regularization=regularization,
        iterations=iterations,
        random_state=seed,
        calculate_training_loss=False,
    )
    with threadpool_limits(1, "blas"):
        model.fit(matrix, show_progress=False)
    return Factors(
        user_ids, item_ids, np.asarray(model.user_factors, np.float32), np.asarray(model.item_factors, np.float32)
    )


def fold_in(fixed: np.ndarray, confidences: np.ndarray, reg: float) -> np.ndarray:
    """The ALS least-squares update for one new row: the factors x minimising
    sum_j c_j (1 - x.y_j)^2 + reg |x|^2 over the rows y_j of `fixed` it interacted with."""
    y = np.asarray(fixed, np.float64)
    c = np.asarray(confidences, np.float64)
    a = (y.T * c) @ y + reg * np.eye(y.shape[1])
    return np.linalg.solve(a, (y.T * c).sum(axis=1)).astype(np.float32)
