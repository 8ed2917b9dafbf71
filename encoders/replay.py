"""Encoders: the offline replay's model side — train on the past, compute what the replay ranks with (predicted
factors, content_knn vectors, learned factors, users' profiles) and run the pure simulation of thaw.experiments."""

from __future__ import annotations

import time

import numpy as np

from encoders.features import Table
from encoders.fusion import predict
from encoders.training import TrainConfig, train
from thaw.datasets import Dataset, Split
from thaw.evaluation import history_profiles
from thaw.experiments.replay import ReplayConfig, ReplayModel, ReplayResult, holdout_split, simulate
from thaw.experiments.spec import ExperimentSpec


def replay(
    ds: Dataset,
    split: Split,
    spec: ExperimentSpec,
    config: ReplayConfig,
    train_config: TrainConfig,
    features: Table,
    *,
    interleave: tuple[str, str] | None = None,
    progress: bool = True,
) -> ReplayResult:
    """Hold out the future, train on the past (cold validation tunes it as in `thaw train`), and replay."""
    t = time.perf_counter()
    held = holdout_split(ds, split, config.holdout)
    model = train(held.train, split, train_config, progress=progress, features=features)
    train_s = time.perf_counter() - t
    t = time.perf_counter()
    featured = set(features.ids)
    cat_ids = sorted(i for i in set(split.warm) | set(split.cold_test) if i in featured)
    cix = {item: j for j, item in enumerate(cat_ids)}
    table = model.prepare(features.subset(cat_ids))
    content = predict(model.net, table)
    cf = np.full(content.shape, np.nan, np.float32)
    for j, item in enumerate(model.item_ids):
        if item in cix:
            cf[cix[item]] = model.item_factors[j]
    warm_ids = [i for i in model.item_ids if i in featured]
    warm_pred = predict(model.net, model.prepare(features.subset(warm_ids)))
    users = model.user_factors.astype(np.float64)
    arrays = ReplayModel(
        cat_ids,
        content,
        table.knn(),
        cf,
        model.user_ids,
        model.user_factors,
        users.T @ users,
        history_profiles(held.train, warm_ids, warm_pred),
        model.alpha,
        model.config.als_reg,
        model.config.als_alpha,
        model.config.cf_shrinkage,
        model.metrics.get("cold_val_ndcg@20"),
        model.config.knn_weight,
        model.config.knn_beta,
    )
    result = simulate(held, split, spec, config, arrays, interleave=interleave, progress=progress)
    result.summary["timing_s"] = {"train_s": round(train_s, 2), "replay_s": round(time.perf_counter() - t, 2)}
    return result
