"""Encoders: the item cold-start protocol (DropoutNet / GAR / ColdRec) — Thaw, its per-modality ablations and
baselines ranked on the same cold test items in the same process."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import scipy.fft
import torch

from encoders.features import Table
from encoders.fusion import MODALITY_ORDER, predict
from encoders.training import TrainConfig, train, warm_factors
from thaw.datasets import Dataset, Split
from thaw.evaluation import (
    cold_ndcg,
    evaluate_rankings,
    history_profiles,
    history_rows,
    rank_by_scores,
    rank_cold,
    user_positives,
)
from thaw.scoring import cosine, scorer_name, unit_rows

KS = (20, 100)
RIDGE_GRID = (0.1, 1.0, 10.0, 100.0)  # the ridge baselines' lambdas, chosen on cold validation


def _ridge(x: np.ndarray, y: np.ndarray, lam: float) -> np.ndarray:
    """argmin_W |xW - y|^2 + lam |W|^2, through the smaller of the primal (d x d) and dual (n x n) systems."""
    x64, y64 = x.astype(np.float64), y.astype(np.float64)
    if x.shape[1] <= x.shape[0]:
        return np.linalg.solve(x64.T @ x64 + lam * np.eye(x.shape[1]), x64.T @ y64)
    return x64.T @ np.linalg.solve(x64 @ x64.T + lam * np.eye(x.shape[0]), y64)


def all_inputs(table: Table) -> np.ndarray:
    """Every frozen input Thaw's heads read, for `ridge_all`: the MiniLM text embedding, the TF-IDF tag vector (the
    table's vocabulary applied) and the image embedding, each scaled to unit length (a missing one stays zero), and
    a constant."""
    parts = [table.feats[m].numpy().astype(np.float32) for m in ("text", "tags", "image")]
    units = [unit_rows(x) for x in parts]
    return np.hstack([*units, np.ones((len(table.ids), 1), np.float32)])


N_MFCC = 20


def mfcc_stats(table: Table) -> np.ndarray:
    """Hand-crafted audio features: 20 cepstral coefficients (DCT-II of each frame's log-mel spectrum, i.e. MFCCs
    of the encoder's own log-mel input), their mean and standard deviation over time, averaged over an item's
    crops; zeros for items without audio."""
    out = np.zeros((len(table.ids), 2 * N_MFCC), np.float32)
    for row, mels in enumerate(table.mels):
        if len(mels):
            ceps = scipy.fft.dct(mels.numpy(), type=2, axis=1, norm="ortho")[:, :N_MFCC]  # (crops, n_mfcc, frames)
            out[row] = np.concatenate([ceps.mean(2), ceps.std(2)], axis=1).mean(0)
    return out


def run_protocol(
    ds: Dataset, split: Split, config: TrainConfig, features: Table, *, seed: int, progress: bool = True
) -> dict[str, Any]:
    """Train on warm items, tune on cold validation, and rank all cold test items for every user who has a cold
    test interaction, with Thaw, its single-modality ablations and the baselines."""
    timing: dict[str, float] = {}
    t = time.perf_counter()
    model = train(ds, split, config, progress=progress, features=features)
    timing["train_s"] = round(time.perf_counter() - t, 2)
    test_ids = [i for i in split.cold_test if i in set(features.ids)]
    val_ids = [i for i in split.cold_val if i in set(features.ids)]
    warm_ids = [i for i in model.item_ids if i in set(features.ids)]
    test, val, warm = (model.prepare(features.subset(ids)) for ids in (test_ids, val_ids, warm_ids))
    positives = {u: p for u, p in user_positives(ds.interactions, test_ids).items() if u in set(model.user_ids)}
    val_pos = {u: p for u, p in user_positives(ds.interactions, val_ids).items() if u in set(model.user_ids)}
    methods: dict[str, dict[str, float]] = {}

    def score(name: str, rankings: dict[str, list[str]]) -> None:
        methods[name] = {
            k: round(v, 4) for k, v in evaluate_rankings(rankings, positives, n_items=len(test_ids), ks=KS).items()
        }

    t = time.perf_counter()
    warm_pred = predict(model.net, warm)
    profiles = history_profiles(ds, warm_ids, warm_pred)
    warm_knn = warm.knn()
    knn_profiles = history_profiles(ds, warm_ids, warm_knn)  # content_knn's profiles, shared with Thaw's scorer
    test_knn = test.knn()
    score(
        "thaw",
        rank_cold(
            model.user_ids,
            model.user_factors,
            test_ids,
            predict(model.net, test),
            positives,
            alpha=model.alpha,
            profiles=profiles,
            knn=test_knn,
            knn_profiles=knn_profiles,
            knn_weight=model.knn_weight,
            knn_histories=history_rows(ds, warm_ids, warm_knn) if model.knn_beta > 0.0 else None,
            knn_beta=model.knn_beta,
        ),
    )
    for j, modality in enumerate(("text", "image", "audio")):
        if not test.masks[:, j].any():
            continue
        only = torch.zeros_like(test.masks)
        only[:, j] = test.masks[:, j]
        score(
            f"thaw_{modality}",
            rank_cold(
                model.user_ids, model.user_factors, test_ids, predict(model.net, test, only), positives, alpha=1.0
            ),
        )
    timing["thaw_s"] = round(time.perf_counter() - t, 2)

    t = time.perf_counter()
    rng = random.Random(seed)
    score("random", {u: rng.sample(test_ids, len(test_ids)) for u in positives})

    no_profile = np.zeros(test_knn.shape[1], np.float32)
    score(
        "content_knn",
        {u: rank_by_scores(cosine(test_knn, knn_profiles.get(u, no_profile)), test_ids) for u in positives},
    )

    # the baselines map onto plain ALS factors (Thaw's own may be content-regularised)
    _, als = warm_factors(ds, split, config)
    uix = {u: i for i, u in enumerate(als.user_ids)}
    factor_row = {item: i for i, item in enumerate(als.item_ids)}
    als_items = als.items[[factor_row[i] for i in warm_ids]]

    def ridge_baseline(name: str, modality: str | None, x: Callable[[Table], np.ndarray]) -> float:
        """ALS + a closed-form ridge map from features `x` onto the factors of the warm items that have `modality`
        (None: every warm item with content), lambda tuned on cold validation; a cold item without the modality is
        predicted as zero, as Thaw's single-modality ablations do. Scores the cold test items and returns the
        lambda chosen."""

        def has(table: Table) -> np.ndarray:
            masks = table.masks.numpy()
            return np.asarray(masks.any(1) if modality is None else masks[:, MODALITY_ORDER.index(modality)])

        have = has(warm)
        x_warm = x(warm)[have]

        def pred(lam: float, table: Table) -> np.ndarray:
            return np.asarray((x(table) @ _ridge(x_warm, als_items[have], lam)) * has(table)[:, None])

        grid = {lam: cold_ndcg(als.user_ids, als.users, val.ids, pred(lam, val), val_pos) for lam in RIDGE_GRID}
        best = max(grid, key=lambda lam: grid[lam])
        test_pred = pred(best, test)
        score(name, {u: rank_by_scores(test_pred @ als.users[uix[u]], test.ids) for u in positives})
        return best

    best_lam = ridge_baseline("ridge", "text", lambda table: table.feats["text"].numpy())
    all_lam = ridge_baseline("ridge_all", None, all_inputs)
    if test.masks[:, MODALITY_ORDER.index("audio")].any():
        mfcc_warm = mfcc_stats(warm)[warm.masks[:, MODALITY_ORDER.index("audio")].numpy()]
        mu, sd = mfcc_warm.mean(0), mfcc_warm.std(0) + 1e-6
        ridge_baseline(
            "mfcc_ridge",
            "audio",
            lambda table: np.hstack([(mfcc_stats(table) - mu) / sd, np.ones((len(table.ids), 1))]),
        )
    timing["baselines_s"] = round(time.perf_counter() - t, 2)
    return {
        "protocol": {
            "seed": seed,
            "n_users": len(positives),
            "n_cold_test_items": len(test_ids),
            "n_cold_val_items": len(val_ids),
            "n_warm_items": len(model.item_ids),
            "alpha": model.alpha,
            "knn_weight": model.knn_weight,
            "knn_beta": model.knn_beta,
            "scorer": scorer_name(model.knn_weight),
            "scorer_grid": model.metrics["scorer_grid"],  # cold-validation NDCG@20 of every candidate scorer
            "content_pull": model.metrics["content_pull"]["pull"],
            "content_words": model.metrics["content_pull"].get("words", 0.0),  # the prose words' target encoding read
            "ridge_lambda": best_lam,
            "ridge_all_lambda": all_lam,
            "loss": config.loss,
            "cold_val_ndcg@20": model.metrics.get("cold_val_ndcg@20"),
            "epochs": model.metrics["choices"]["epochs"],  # the epoch kept per trained stage
            "history": model.metrics["history"],  # cold-validation NDCG@20 at each scored epoch
        },
        "methods": methods,
        "timing_s": timing,
        "train_stages": model.metrics["stages"],
    }


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The evaluation report, one layout for any number of seeds: `seeds`, `per_seed` (each seed's protocol, methods,
    timing), and every method's metrics' `mean` and `std` over the seeds."""
    methods = runs[0]["methods"]

    def over_seeds(stat: Callable[[list[float]], Any]) -> dict[str, dict[str, float]]:
        return {
            method: {m: round(float(stat([r["methods"][method][m] for r in runs])), 4) for m in methods[method]}
            for method in methods
        }

    return {
        "seeds": [r["protocol"]["seed"] for r in runs],
        "per_seed": runs,
        "mean": over_seeds(np.mean),
        "std": over_seeds(np.std),
    }
