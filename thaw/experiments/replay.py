"""Experiments: offline replay — a model trained on the past, then held-out interactions replayed in time order:
each user arrives, is served k items by their arm's policy, and a served item counts as clicked when the user
interacted with it in the held-out data. It yields the same exposures, events and report as an online experiment,
so a team can choose arms before going live."""

from __future__ import annotations

import logging
import random
import time
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm import tqdm

from api.blend import profile
from thaw.datasets import Dataset, Interactions, Split
from thaw.experiments.assignment import seed_of
from thaw.experiments.interleaving import team_draft
from thaw.experiments.policies import Candidates, Policy, UserContext, knn_matrix, rank
from thaw.experiments.report import Catalogue, EventLog, ExposureLog, Shown, build_report
from thaw.experiments.spec import Arm, ExperimentSpec
from thaw.factors import fold_in

if TYPE_CHECKING:
    from encoders.training import Table, TrainConfig

log = logging.getLogger(__name__)
CATALOGUES = ("all", "cold")


@dataclass
class ReplayConfig:
    k: int = 20  # items served per arrival
    holdout: float = 0.2  # each user's latest share of warm interactions is held out (with all cold-test ones)
    catalogue: str = "all"  # serve from all items ("all") or from the items cold at the start only ("cold")
    conversion_rating: float | None = 5.0  # a held-out interaction rated >= this is a conversion


@dataclass
class HeldOut:
    train: Dataset  # what the model may learn from: warm interactions before each user's holdout, and cold_val
    events: Interactions  # held out, in time order: every cold-test interaction + each user's latest warm ones


@dataclass
class ReplayResult:
    summary: dict[str, Any]  # protocol, report, interleaving, timings: what `thaw ab simulate` writes as JSON
    exposures: list[ExposureLog]  # the A/B lists, then the interleaved ones
    events: list[EventLog]  # the clicks: held-out interactions with a served item
    held_out: HeldOut


def holdout_split(ds: Dataset, split: Split, fraction: float) -> HeldOut:
    """Hold out every interaction with a cold-test item and each user's latest `fraction` (rounded down) of their
    warm interactions; cold validation interactions stay with training, which uses them only to tune."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"holdout must be in [0, 1), got {fraction}")
    inter = ds.interactions
    n = len(inter)
    stamps = inter.timestamps if inter.timestamps is not None else np.arange(n, dtype=float)
    items = inter.item_ids.tolist()
    cold_test, warm = set(split.cold_test), set(split.warm)
    held = np.fromiter((i in cold_test for i in items), bool, n)
    by_user: dict[str, list[int]] = defaultdict(list)
    for row, (user, item) in enumerate(zip(inter.user_ids.tolist(), items, strict=True)):
        if item in warm:
            by_user[user].append(row)
    for rows in by_user.values():
        n_hold = int(fraction * len(rows))
        if n_hold:
            rows.sort(key=lambda r: (stamps[r], r))
            held[rows[-n_hold:]] = True
    order = sorted(np.flatnonzero(held).tolist(), key=lambda r: (stamps[r], r))
    events = inter.subset(np.asarray(order, dtype=int))
    if events.timestamps is None:
        events.timestamps = stamps[order]
    return HeldOut(Dataset(ds.root, ds.items, inter.subset(~held), ds.split_file), events)


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
    """Train on the past (a black-box call to encoders.training.train), replay the held-out interactions through
    the arms of `spec`, and report. With `interleave` = two arm names, the users of those two arms are also served
    a team-draft interleaving of both policies, and the result sits beside the A/B comparison of the same users."""
    from encoders.training import history_profiles, predict, train

    if config.catalogue not in CATALOGUES:
        raise ValueError(f"catalogue must be one of {CATALOGUES}, got {config.catalogue!r}")
    if interleave is not None and not set(interleave) <= set(spec.names):
        raise ValueError(f"interleave names arms {interleave}; the experiment's arms are {spec.names}")
    timing: dict[str, float] = {}
    t = time.perf_counter()
    held = holdout_split(ds, split, config.holdout)
    model = train(held.train, split, train_config, progress=progress, features=features)
    timing["train_s"] = time.perf_counter() - t
    t = time.perf_counter()
    featured = set(features.ids)
    cat_ids = sorted(i for i in set(split.warm) | set(split.cold_test) if i in featured)
    cix = {item: j for j, item in enumerate(cat_ids)}
    table = features.subset(cat_ids).for_model(model)
    content = predict(model.net, table)
    knn = knn_matrix(table.feats["text"].numpy(), table.feats["image"].numpy())
    cf = np.full(content.shape, np.nan, np.float32)
    als = np.zeros(len(cat_ids), bool)
    for j, item in enumerate(model.item_ids):
        if item in cix:
            cf[cix[item]] = model.item_factors[j]
            als[cix[item]] = True
    train_events = held.train.interactions.for_items(set(split.warm))
    counts = np.zeros(len(cat_ids), np.int64)
    for item, c in Counter(train_events.item_ids.tolist()).items():
        if item in cix:
            counts[cix[item]] = c
    servable = counts == 0 if config.catalogue == "cold" else np.ones(len(cat_ids), bool)
    cold_at_start = counts == 0
    uix = {u: i for i, u in enumerate(model.user_ids)}
    reg, shrinkage = float(model.config["als_reg"]), float(model.config["cf_shrinkage"])

    seen: dict[str, set[int]] = defaultdict(set)
    first_ts: dict[int, float] = {}
    train_stamps = train_events.timestamps
    for row, (user, item) in enumerate(
        zip(train_events.user_ids.tolist(), train_events.item_ids.tolist(), strict=True)
    ):
        if item in cix:
            seen[user].add(cix[item])
            if train_stamps is not None:
                first_ts[cix[item]] = min(first_ts.get(cix[item], np.inf), float(train_stamps[row]))
    warm_with_features = [i for i in model.item_ids if i in featured]
    warm_table = features.subset(warm_with_features).for_model(model)
    profiles = history_profiles(held.train, warm_with_features, predict(model.net, warm_table))

    ev = held.events
    ev_stamps = ev.timestamps if ev.timestamps is not None else np.arange(len(ev), dtype=float)
    threshold = config.conversion_rating
    ratings = ev.ratings if threshold is not None else None
    positives: dict[str, dict[int, tuple[float, str]]] = defaultdict(dict)
    stream: list[tuple[float, int, str, float]] = []  # organic traffic: (time, item, user, weight)
    for row, (user, item) in enumerate(zip(ev.user_ids.tolist(), ev.item_ids.tolist(), strict=True)):
        if item not in cix:
            continue
        j, at = cix[item], float(ev_stamps[row])
        stream.append((at, j, user, float(ev.weights[row])))
        kind = "conversion" if ratings is not None and ratings[row] >= threshold else "click"
        if user in uix and servable[j] and j not in positives[user]:  # users arrive for what can be served
            positives[user][j] = (at, kind)
    arrivals = sorted((min(at for at, _ in pos.values()), user) for user, pos in positives.items())
    if not arrivals:
        raise ValueError("no held-out interaction of a known user on a catalogue item: nothing to replay")
    t0 = arrivals[0][0]
    created = np.array([t0 if cold_at_start[j] else first_ts.get(j, t0) for j in range(len(cat_ids))])

    cands = Candidates(cat_ids, counts, content, cf, knn)
    audience: dict[int, list[tuple[int, float]]] = defaultdict(list)
    exposures: list[ExposureLog] = []
    inter_exposures: list[ExposureLog] = []
    events: list[EventLog] = []
    cursor = 0

    def top(policy: Policy, pool: Candidates, idx: np.ndarray, ctx: UserContext, rec_id: str) -> list[int]:
        order, _ = rank(
            policy, pool, ctx, config.k, default_alpha=model.alpha, shrinkage=shrinkage, seed=seed_of(rec_id)
        )
        return [int(idx[i]) for i in order]

    def exposure(
        rec_id: str, arm: str | None, user: str, at: float, served: list[int], teams: list[str] | None
    ) -> ExposureLog:
        shown = [
            Shown(cat_ids[j], bool(counts[j] == 0), float(at - created[j]), teams[p] if teams else None)
            for p, j in enumerate(served)
        ]
        return ExposureLog(rec_id, arm, user, at, shown)

    def clicks(rec_id: str, user: str, served: list[int]) -> list[EventLog]:
        hits = [(j, positives[user][j]) for j in served if j in positives[user]]
        return [EventLog(rec_id, user, cat_ids[j], kind, click_at) for j, (click_at, kind) in hits]

    for at, user in tqdm(arrivals, desc="replay", unit="user", disable=not progress):
        dirty = set()
        while cursor < len(stream) and stream[cursor][0] < at:  # organic traffic before this arrival
            _, j, other, weight = stream[cursor]
            counts[j] += 1
            if not als[j] and other in uix:
                audience[j].append((uix[other], weight))
                dirty.add(j)
            cursor += 1
        for j in dirty:  # an item without ALS factors learns them from its audience, as POST /events does
            rows = [u for u, _ in audience[j]]
            cf[j] = fold_in(model.user_factors[rows], np.array([1.0 + w for _, w in audience[j]]), reg)
        idx = np.flatnonzero(servable & ~np.isin(np.arange(len(cat_ids)), list(seen[user])))
        pool = cands.subset(idx)
        history = [knn[j] for j in seen[user]]
        ctx = UserContext(model.user_factors[uix[user]], profiles.get(user), profile(history))
        arm = spec.assign(user)

        rec_id = f"ab:{user}"
        served = top(arm.policy, pool, idx, ctx, rec_id)
        exposures.append(exposure(rec_id, arm.name, user, at, served, None))
        events.extend(clicks(rec_id, user, served))
        if interleave is not None and arm.name in interleave:
            rec_id = f"tdi:{user}"
            a, b = (top(spec.arm(name).policy, pool, idx, ctx, rec_id) for name in interleave)
            items, teams = team_draft(
                [cat_ids[j] for j in a], [cat_ids[j] for j in b], config.k, random.Random(seed_of(rec_id)), interleave
            )
            served = [cix[i] for i in items]
            inter_exposures.append(exposure(rec_id, None, user, at, served, teams))
            events.extend(clicks(rec_id, user, served))
    timing["replay_s"] = time.perf_counter() - t

    catalogue = Catalogue(
        int(servable.sum()), int((servable & cold_at_start).sum()), int((servable & (counts > 0)).sum())
    )
    result: dict[str, Any] = {
        "protocol": {
            **asdict(config),
            "users_replayed": len(arrivals),
            "catalogue_items": catalogue.items,
            "cold_items_at_start": catalogue.cold,
            "held_out_interactions": len(ev),
            "train_interactions": len(train_events),
            "model_alpha": model.alpha,
            "cold_val_ndcg@20": model.metrics.get("cold_val_ndcg@20"),
            "start": t0,
            "end": arrivals[-1][0],
        },
        "report": build_report(spec, exposures, events, catalogue, start=t0),
        "interleaving": None,
    }
    if interleave is not None:
        control = spec.control if spec.control in interleave else interleave[1]
        pair = tuple(Arm(n, spec.arm(n).policy, 0.5) for n in interleave)
        tdi = ExperimentSpec(pair, control, spec.salt, "interleaving")
        same_users = ExperimentSpec(pair, control, spec.salt, "ab")
        ab_pair = build_report(same_users, [e for e in exposures if e.arm in interleave], events, catalogue, start=t0)
        treatment = same_users.treatments[0]
        result["interleaving"] = {
            "report": build_report(tdi, inter_exposures, events, catalogue, start=t0),
            "same_users_ab": {
                "users": sum(ab_pair["arms"][n]["users"] for n in interleave),
                "ctr": ab_pair["vs_control"][treatment]["ctr"],
                "ctr_cold": ab_pair["vs_control"][treatment]["ctr_cold"],
            },
        }
    result["timing_s"] = {k: round(v, 2) for k, v in timing.items()}
    return ReplayResult(result, exposures + inter_exposures, events, held)
