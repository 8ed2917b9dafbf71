"""Experiments: offline replay — held-out interactions replayed in time order through a model trained on the past:
each user arrives, is served k items by their arm's policy, and a served item counts as clicked when the user
interacted with it in the held-out data. It yields the same exposures, events and report as an online experiment,
so a team can choose arms before going live. The model side (training, predictions) is encoders.replay; this module
is the pure simulation over the arrays it computes."""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from tqdm import tqdm

from thaw.datasets import Dataset, Interactions, Split
from thaw.experiments.assignment import seed_of
from thaw.experiments.interleaving import team_draft
from thaw.experiments.policies import Candidates, Policy, UserContext, rank
from thaw.experiments.report import Catalogue, EventLog, ExposureLog, Shown, build_report
from thaw.experiments.spec import Arm, ExperimentSpec
from thaw.factors import fold_in_events
from thaw.scoring import profile

CATALOGUES = ("all", "cold")


@dataclass
class ReplayConfig:
    k: int = 20  # items served per arrival
    holdout: float = 0.2  # each user's latest share of warm interactions is held out (with all cold-test ones)
    catalogue: str = "all"  # serve from all items ("all") or from the items cold at the start only ("cold")
    conversion_rating: float | None = 5.0  # a held-out interaction rated >= this is a conversion

    def __post_init__(self) -> None:
        if self.catalogue not in CATALOGUES:
            raise ValueError(f"catalogue must be one of {CATALOGUES}, got {self.catalogue!r}")
        if not 0.0 <= self.holdout < 1.0:
            raise ValueError(f"holdout must be in [0, 1), got {self.holdout}")


@dataclass
class HeldOut:
    train: Dataset  # what the model may learn from: warm interactions before each user's holdout, and cold_val
    events: Interactions  # held out, in time order: every cold-test interaction + each user's latest warm ones


@dataclass
class ReplayModel:
    """What the replay ranks with, computed by the model side for the catalogue (warm and cold-test items with
    content): predicted factors, content_knn vectors, learned CF factors (NaN where the model has none), the users'
    factors and content profiles, and the serving defaults."""

    item_ids: list[str]
    content: np.ndarray
    knn: np.ndarray
    cf: np.ndarray
    user_ids: list[str]
    user_factors: np.ndarray
    user_gram: np.ndarray  # U^T U: the fold-in of an item from its audience
    profiles: dict[str, np.ndarray]
    alpha: float
    als_reg: float
    als_alpha: float
    shrinkage: float
    cold_val_ndcg: float | None = None
    knn_weight: float = 0.0
    knn_beta: float = 0.0


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


@dataclass
class _State:
    """The replay's catalogue as it evolves: interaction counts, CF vectors folded in from audiences, what each user
    has seen, and the exposures and clicks so far."""

    model: ReplayModel
    config: ReplayConfig
    cix: dict[str, int]
    counts: np.ndarray
    cf: np.ndarray  # the model's learned factors, and folded-in ones for items that gain an audience
    learned: np.ndarray  # items with ALS factors: events never move them
    servable: np.ndarray
    cold_at_start: np.ndarray
    seen: dict[str, set[int]]
    first_ts: dict[int, float]
    positives: dict[str, dict[int, tuple[float, str]]] = field(default_factory=lambda: defaultdict(dict))
    stream: list[tuple[float, int, str, float]] = field(default_factory=list)  # organic: (time, item, user, weight)
    created: np.ndarray = field(default_factory=lambda: np.zeros(0))
    audience: dict[int, list[tuple[int, float]]] = field(default_factory=lambda: defaultdict(list))
    exposures: list[ExposureLog] = field(default_factory=list)
    inter_exposures: list[ExposureLog] = field(default_factory=list)
    events: list[EventLog] = field(default_factory=list)
    cursor: int = 0

    @property
    def uix(self) -> dict[str, int]:
        return {u: i for i, u in enumerate(self.model.user_ids)}


def _start(model: ReplayModel, config: ReplayConfig, train_events: Interactions) -> _State:
    """Counts, what each user has seen, and when each item was first interacted with, from the training events."""
    cix = {item: j for j, item in enumerate(model.item_ids)}
    counts = np.zeros(len(cix), np.int64)
    for item, c in Counter(train_events.item_ids.tolist()).items():
        if item in cix:
            counts[cix[item]] = c
    servable = counts == 0 if config.catalogue == "cold" else np.ones(len(cix), bool)
    seen: dict[str, set[int]] = defaultdict(set)
    first_ts: dict[int, float] = {}
    stamps = train_events.timestamps
    for row, (user, item) in enumerate(
        zip(train_events.user_ids.tolist(), train_events.item_ids.tolist(), strict=True)
    ):
        if item in cix:
            seen[user].add(cix[item])
            if stamps is not None:
                first_ts[cix[item]] = min(first_ts.get(cix[item], np.inf), float(stamps[row]))
    learned = ~np.isnan(model.cf).any(axis=1)
    return _State(model, config, cix, counts, model.cf.copy(), learned, servable, counts == 0, seen, first_ts)


def _arrivals(s: _State, events: Interactions) -> list[tuple[float, str]]:
    """The held-out events as organic traffic, each known user's servable positives, and users in order of their
    first positive: that is when they arrive."""
    known = set(s.model.user_ids)
    stamps = events.timestamps if events.timestamps is not None else np.arange(len(events), dtype=float)
    threshold = s.config.conversion_rating
    for row, (user, item) in enumerate(zip(events.user_ids.tolist(), events.item_ids.tolist(), strict=True)):
        if item not in s.cix:
            continue
        j, at = s.cix[item], float(stamps[row])
        s.stream.append((at, j, user, float(events.weights[row])))
        converted = threshold is not None and events.ratings is not None and events.ratings[row] >= threshold
        if user in known and s.servable[j] and j not in s.positives[user]:
            s.positives[user][j] = (at, "conversion" if converted else "click")
    arrivals = sorted((min(at for at, _ in pos.values()), user) for user, pos in s.positives.items())
    if not arrivals:
        raise ValueError("no held-out interaction of a known user on a catalogue item: nothing to replay")
    t0 = arrivals[0][0]
    s.created = np.array([t0 if s.cold_at_start[j] else s.first_ts.get(j, t0) for j in range(len(s.cix))])
    return arrivals


def _organic_until(s: _State, at: float, uix: dict[str, int]) -> None:
    """Apply the organic traffic before `at`: counts grow, and an item without ALS factors learns them from its
    audience, as POST /events does."""
    m = s.model
    dirty = set()
    while s.cursor < len(s.stream) and s.stream[s.cursor][0] < at:
        _, j, other, weight = s.stream[s.cursor]
        s.counts[j] += 1
        if not s.learned[j] and other in uix:
            s.audience[j].append((uix[other], weight))
            dirty.add(j)
        s.cursor += 1
    for j in dirty:
        rows = [u for u, _ in s.audience[j]]
        weights = np.array([w for _, w in s.audience[j]])
        s.cf[j] = fold_in_events(m.user_factors[rows], weights, reg=m.als_reg, alpha=m.als_alpha, gram=m.user_gram)


def _serve(s: _State, spec: ExperimentSpec, interleave: tuple[str, str] | None, at: float, user: str, u: int) -> None:
    """Serve one arriving user their arm (and, for the interleaved pair, a team-draft of both) and record the
    clicks: the held-out positives among the served items."""
    m, k = s.model, s.config.k
    idx = np.flatnonzero(s.servable & ~np.isin(np.arange(len(s.cix)), list(s.seen[user])))
    pool = Candidates(m.item_ids, s.counts, m.content, s.cf, m.knn).subset(idx)
    history = m.knn[sorted(s.seen[user])] if s.seen[user] else None
    ctx = UserContext(m.user_factors[u], m.profiles.get(user), profile(list(history)) if history is not None else None)
    ctx.knn_history = history

    def top(policy: Policy, rec_id: str) -> list[int]:
        order, _ = rank(
            policy,
            pool,
            ctx,
            k,
            default_alpha=m.alpha,
            shrinkage=m.shrinkage,
            seed=seed_of(rec_id),
            default_knn_weight=m.knn_weight,
            default_knn_beta=m.knn_beta,
        )
        return [int(idx[i]) for i in order]

    def record(rec_id: str, arm: str | None, served: list[int], teams: list[str] | None) -> ExposureLog:
        shown = [
            Shown(m.item_ids[j], bool(s.counts[j] == 0), float(at - s.created[j]), teams[p] if teams else None)
            for p, j in enumerate(served)
        ]
        hits = [(j, s.positives[user][j]) for j in served if j in s.positives[user]]
        s.events.extend(EventLog(rec_id, user, m.item_ids[j], kind, click_at) for j, (click_at, kind) in hits)
        return ExposureLog(rec_id, arm, user, at, shown)

    arm = spec.assign(user)
    s.exposures.append(record(f"ab:{user}", arm.name, top(arm.policy, f"ab:{user}"), None))
    if interleave is not None and arm.name in interleave:
        rec_id = f"tdi:{user}"
        a, b = (top(spec.arm(name).policy, rec_id) for name in interleave)
        items, teams = team_draft(
            [m.item_ids[j] for j in a], [m.item_ids[j] for j in b], k, random.Random(seed_of(rec_id)), interleave
        )
        s.inter_exposures.append(record(rec_id, None, [s.cix[i] for i in items], teams))


def _interleaving_summary(
    s: _State, spec: ExperimentSpec, pair: tuple[str, str], catalogue: Catalogue, t0: float
) -> dict[str, Any]:
    """The interleaving report beside the A/B comparison of the same users."""
    control = spec.control if spec.control in pair else pair[1]
    arms = tuple(Arm(n, spec.arm(n).policy, 0.5) for n in pair)
    same_users = ExperimentSpec(arms, control, spec.salt, "ab")
    ab_exposures = [e for e in s.exposures if e.arm in pair]
    ab_pair = build_report(same_users, ab_exposures, s.events, catalogue, start=t0)
    treatment = same_users.treatments[0]
    tdi = ExperimentSpec(arms, control, spec.salt, "interleaving")
    return {
        "report": build_report(tdi, s.inter_exposures, s.events, catalogue, start=t0),
        "same_users_ab": {
            "users": sum(ab_pair["arms"][n]["users"] for n in pair),
            "ctr": ab_pair["vs_control"][treatment]["ctr"],
            "ctr_cold": ab_pair["vs_control"][treatment]["ctr_cold"],
        },
    }


def simulate(
    held: HeldOut,
    split: Split,
    spec: ExperimentSpec,
    config: ReplayConfig,
    model: ReplayModel,
    *,
    interleave: tuple[str, str] | None = None,
    progress: bool = True,
) -> ReplayResult:
    """Replay the held-out interactions through the arms of `spec` and report. With `interleave` = two arm names,
    the users of those two arms are also served a team-draft interleaving of both policies, and the result sits
    beside the A/B comparison of the same users."""
    if interleave is not None and not set(interleave) <= set(spec.names):
        raise ValueError(f"interleave names arms {interleave}; the experiment's arms are {spec.names}")
    train_events = held.train.interactions.for_items(set(split.warm))
    s = _start(model, config, train_events)
    arrivals = _arrivals(s, held.events)
    uix = s.uix
    for at, user in tqdm(arrivals, desc="replay", unit="user", disable=not progress):
        _organic_until(s, at, uix)
        _serve(s, spec, interleave, at, user, uix[user])
    t0 = arrivals[0][0]
    catalogue = Catalogue(
        int(s.servable.sum()), int((s.servable & s.cold_at_start).sum()), int((s.servable & (s.counts > 0)).sum())
    )
    summary: dict[str, Any] = {
        "protocol": {
            **asdict(config),
            "users_replayed": len(arrivals),
            "catalogue_items": catalogue.items,
            "cold_items_at_start": catalogue.cold,
            "held_out_interactions": len(held.events),
            "train_interactions": len(train_events),
            "model_alpha": model.alpha,
            "cold_val_ndcg@20": model.cold_val_ndcg,
            "start": t0,
            "end": arrivals[-1][0],
        },
        "report": build_report(spec, s.exposures, s.events, catalogue, start=t0),
        "interleaving": None if interleave is None else _interleaving_summary(s, spec, interleave, catalogue, t0),
    }
    return ReplayResult(summary, s.exposures + s.inter_exposures, s.events, held)
