"""Encoders: closed-form maps onto the CF space — ridge regression, the ridge start of each head, and the search
for a CF space that content can predict (plain or content-regularised ALS, chosen on cold validation)."""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch

from encoders.features import Table
from encoders.fusion import MODALITY_ORDER, Head, ThawNet, head_input
from encoders.tags import TagFactors, without_words
from thaw.datasets import Interactions
from thaw.evaluation import cold_ndcg
from thaw.factors import Factors, content_regularised_als
from thaw.schema import WORD_PREFIX

log = logging.getLogger(__name__)

RIDGE_LAMBDAS = (0.3, 1.0, 3.0, 10.0, 30.0, 100.0)


class Ridge:
    """Closed-form ridge regression from fixed inputs `x` with an unpenalised bias, the system factorised once (for
    `lam`), so mapping onto several targets costs a solve each: `fit(y)` returns W (d_out, d_in) and b (d_out,)
    minimising |x W^T + b - y|^2 + lam |W|^2. Through the smaller of the primal (d x d) and dual (n x n) systems:
    X^T (X X^T + lam I)^-1 Y equals (X^T X + lam I)^-1 X^T Y."""

    def __init__(self, x: torch.Tensor, lam: float) -> None:
        self.xm = x.mean(0)
        self.xc = (x - self.xm).double()
        n, d = self.xc.shape
        self.dual = d > n
        system = self.xc @ self.xc.T if self.dual else self.xc.T @ self.xc
        self.chol = torch.linalg.cholesky(system + lam * torch.eye(len(system), dtype=torch.float64))

    def fit(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        ym = y.mean(0)
        yc = (y - ym).double()
        if self.dual:
            w = (self.xc.T @ torch.cholesky_solve(yc, self.chol)).T.float()
        else:
            w = torch.cholesky_solve(self.xc.T @ yc, self.chol).T.float()
        return w, ym - w @ self.xm


def ridge_map(x: torch.Tensor, y: torch.Tensor, lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Closed-form ridge regression with an unpenalised bias: returns W (d_out, d_in) and b (d_out,) minimising
    |x W^T + b - y|^2 + lam |W|^2 (`Ridge` of x, fitted to y)."""
    return Ridge(x, lam).fit(y)


def init_ridge(
    net: ThawNet,
    inputs: dict[str, torch.Tensor],
    masks: torch.Tensor,
    targets: torch.Tensor,
    val_ndcg: Callable[[ThawNet, int], float],
    grids: Mapping[str, Sequence[float]] | None = None,
) -> dict[str, float]:
    """Set the linear part of each head in `inputs` (modality -> what the head reads, one row per warm item) to the
    ridge map from those features onto the warm items' factors, lambda chosen per modality on cold validation from
    `grids[modality]` (default RIDGE_LAMBDAS); the residual MLPs restart at zero. Returns the chosen lambdas."""
    chosen: dict[str, float] = {}
    for j, modality in enumerate(MODALITY_ORDER):
        have = masks[:, j]
        if modality not in inputs or int(have.sum()) < 2:
            continue
        head = net.heads[modality]
        assert isinstance(head, Head)
        head.reset_residual()
        scores = {}
        for lam in (grids or {}).get(modality, RIDGE_LAMBDAS):
            head.set_linear(*ridge_map(inputs[modality][have], targets[have], lam))
            scores[lam] = val_ndcg(net, j)
        chosen[modality] = max(scores, key=lambda lam: scores[lam])
        head.set_linear(*ridge_map(inputs[modality][have], targets[have], chosen[modality]))
    return chosen


def content_factors(
    events: Interactions,
    factors: Factors,
    warm: Table,
    val: Table,
    val_pos: dict[str, set[str]],
    *,
    pulls: Sequence[float],
    lambdas: Sequence[float],
    als_alpha: float,
    als_reg: float,
    rounds: int,
    words: Sequence[bool] = (False,),
    fixed: Mapping[str, float] | None = None,
) -> tuple[Factors, TagFactors, dict[str, float]]:
    """Plain ALS or content-regularised ALS (each of `pulls` times each of `lambdas`, the ridge lambda of the
    content map from the frozen features), whichever ranks cold validation items best when they are predicted by a
    ridge map from their content features, with the tags' target encoding of the resulting factors, onto those
    factors; the target encoding reads the prose words (`thaw.schema.item_words`) or not, as `words` offers and
    validation prefers. Returns the factors, their tag encoding and the choice ({"pull", "lambda", "words"}: 1.0 where
    the words are read; the text head's ridge start uses the same lambda). `fixed` (a choice made before) skips the
    choice: that pull is applied as is."""
    rows = {item: k for k, item in enumerate(warm.ids)}
    with_content = np.array([item in rows for item in factors.item_ids])
    ordered = warm.subset([i for i in factors.item_ids if i in rows])  # factor order, items with content
    tag_sets = {True: ordered.tags, False: without_words(ordered.tags)}

    def encoding(items: np.ndarray, read_words: bool) -> TagFactors:
        return TagFactors.fit(tag_sets[read_words], items[with_content])

    def score(f: Factors, lam: float, read_words: bool) -> float:
        """Cold-validation NDCG@20 of the ridge map from the warm items' content features, with the tags' target
        encoding of `f`, onto `f`'s item factors."""
        tags, own = encoding(f.items, read_words), f.items[with_content]
        w, b = ridge_map(head_input(ordered.with_tag_factors(tags, own).feats), torch.from_numpy(own).float(), lam)
        pred = head_input(val.with_tag_factors(tags).feats) @ w.T + b
        return cold_ndcg(f.user_ids, f.users, val.ids, pred.numpy(), val_pos)

    frozen = head_input(ordered.feats)
    ridges: dict[float, Ridge] = {}  # per lambda: the frozen features' system, factorised once for every round

    def prior(lam: float) -> Callable[[np.ndarray], np.ndarray]:
        if lam not in ridges:
            ridges[lam] = Ridge(frozen, lam)
        ridge = ridges[lam]

        def where_content_puts(items: np.ndarray) -> np.ndarray:
            """Frozen features only: the tags' encoding of the factors being solved would pull them toward
            themselves (measured: cold validation 0.3930 with it, 0.4019 without, three MovieLens seeds)."""
            w, b = ridge.fit(torch.from_numpy(items[with_content]).float())
            out = np.full(items.shape, np.nan)
            out[with_content] = (frozen @ w.T + b).double().numpy()
            return out

        return where_content_puts

    def pulled(pull: float, lam: float) -> Factors:
        return content_regularised_als(
            events, factors, prior(lam), pull, alpha=als_alpha, regularization=als_reg, rounds=rounds
        )

    if fixed is not None:
        f = pulled(fixed["pull"], fixed["lambda"]) if fixed["pull"] > 0 else factors
        read = bool(fixed.get("words", 0.0))
        return f, encoding(f.items, read), {"pull": fixed["pull"], "lambda": fixed["lambda"], "words": float(read)}
    if not any(any(t.startswith(WORD_PREFIX) for t in tags) for tags in ordered.tags):
        words = [False]  # no prose words on any warm item: nothing to choose
    words = sorted(set(words)) or [False]
    best: dict[str, float] = {"cold_val_ndcg@20": -1.0}
    chosen = factors
    for lam, read in itertools.product(lambdas, words):
        if (now := score(factors, lam, read)) > best["cold_val_ndcg@20"]:
            best = {"pull": 0.0, "lambda": lam, "words": float(read), "cold_val_ndcg@20": round(now, 4)}
    if not bool(warm.masks[:, :2].any()):  # no text or image: nothing to pull toward
        pulls = ()
    for pull, lam in itertools.product(pulls, lambdas):
        f = pulled(pull, lam)
        for read in words:
            if (now := score(f, lam, read)) > best["cold_val_ndcg@20"]:
                best, chosen = {"pull": pull, "lambda": lam, "words": float(read), "cold_val_ndcg@20": round(now, 4)}, f
    log.info(
        "CF factors: content pull %s, words %s (linear map: cold-val NDCG@20 %s)",
        best["pull"],
        best["words"],
        best["cold_val_ndcg@20"],
    )
    return chosen, encoding(chosen.items, bool(best["words"])), best
