"""Experiments' pure core with planted answers: assignment, intervals, SRM, interleaving, policies, the report."""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

import numpy as np
import pytest
from scipy import stats as sps

from thaw.experiments.assignment import assign, bucket
from thaw.experiments.interleaving import outcome, summarise, team_draft
from thaw.experiments.policies import Candidates, UserContext, index_vectors, make_policy, rank
from thaw.experiments.report import Catalogue, EventLog, ExposureLog, Shown, build_report
from thaw.experiments.spec import Arm, ExperimentSpec, parse_arms, spec_problems
from thaw.experiments.stats import ratio_difference, srm, two_proportion
from thaw.scoring import knn_matrix, score_items, served_vectors, zscore

USERS = [f"user-{i}" for i in range(10_000)]


# --- assignment -------------------------------------------------------------------------------------------------


def test_assignment_is_deterministic_sticky_and_salted() -> None:
    arms = [("a", 0.5), ("b", 0.5)]
    first = [assign(u, "exp-1", arms) for u in USERS[:2000]]
    assert first == [assign(u, "exp-1", arms) for u in USERS[:2000]]  # same user, same arm, every time
    assert all(0.0 <= bucket(u, "s") < 1.0 for u in USERS[:100])
    other = [assign(u, "exp-2", arms) for u in USERS[:2000]]
    # another salt places users independently: a 2x2 contingency table shows no association
    table = Counter(zip(first, other, strict=True))
    chi2, p, _, _ = sps.chi2_contingency([[table["a", "a"], table["a", "b"]], [table["b", "a"], table["b", "b"]]])
    assert p > 0.001
    with pytest.raises(ValueError, match="sum to 1"):
        assign("u", "s", [("a", 0.5), ("b", 0.4)])


def test_assignment_is_balanced_on_10k_simulated_users() -> None:
    shares = [("control", 0.5), ("thaw", 0.3), ("knn", 0.2)]
    counts = Counter(assign(u, "balance", shares) for u in USERS)
    observed = [counts[name] for name, _ in shares]
    _, p = sps.chisquare(observed, [10_000 * s for _, s in shares])
    assert p > 0.001, observed
    for (_, share), n in zip(shares, observed, strict=True):  # within 4 binomial standard deviations
        assert abs(n - 10_000 * share) < 4 * np.sqrt(10_000 * share * (1 - share))


# --- intervals ----------------------------------------------------------------------------------------------------


def _arm(rng: np.random.Generator, n_users: int, p: float, kappa: float, mean_imps: float) -> tuple[np.ndarray, ...]:
    """Per-user impressions and clicks; each user's click propensity ~ Beta(p * kappa, (1 - p) * kappa), so the
    population click-through is p but a user's clicks are correlated (small kappa: strongly)."""
    imps = rng.poisson(mean_imps, n_users) + 1
    clicks = rng.binomial(imps, rng.beta(p * kappa, (1 - p) * kappa, n_users))
    return clicks.astype(float), imps.astype(float)


def test_delta_method_interval_covers_a_known_effect_95_percent_of_the_time() -> None:
    rng = np.random.default_rng(7)
    true_diff, covered, naive_covered, sims = 0.02, 0, 0, 600
    for _ in range(sims):
        ct, nt = _arm(rng, 400, 0.12, 3.0, 12)
        cc, nc = _arm(rng, 400, 0.10, 3.0, 12)
        d = ratio_difference(ct, nt, cc, nc)
        assert d.ci_low is not None and d.ci_high is not None
        covered += d.ci_low <= true_diff <= d.ci_high
        naive = two_proportion(int(ct.sum()), int(nt.sum()), int(cc.sum()), int(nc.sum()))
        naive_covered += naive.ci_low <= true_diff <= naive.ci_high  # type: ignore[operator]
    # 600 simulations: the binomial sd of a 95 % coverage is 0.009, so [0.92, 0.98] is about +-3 sd
    assert 0.92 <= covered / sims <= 0.98, covered / sims
    # per-impression intervals ignore that a user's clicks are correlated: far too narrow here
    assert naive_covered / sims < 0.8, naive_covered / sims


def test_no_effect_gives_uniform_p_values() -> None:
    rng = np.random.default_rng(11)
    ps = [ratio_difference(*_arm(rng, 300, 0.1, 5.0, 8), *_arm(rng, 300, 0.1, 5.0, 8)).p_value for _ in range(400)]
    rejected = sum(p < 0.05 for p in ps if p is not None) / len(ps)
    assert 0.02 <= rejected <= 0.085, rejected  # about 5 % false positives (binomial sd 0.011)


# --- sample-ratio mismatch ----------------------------------------------------------------------------------------


def test_srm_flags_a_planted_imbalance_and_not_a_balanced_split() -> None:
    shares = [("a", 0.5), ("b", 0.5)]
    users = {name: [u for u in USERS if assign(u, "srm", shares) == name] for name, _ in shares}
    balanced = srm([len(users["a"]), len(users["b"])], [0.5, 0.5])
    assert not balanced["mismatch"] and balanced["p_value"] > 0.01
    logged_b = users["b"][: int(0.9 * len(users["b"]))]  # a logging bug loses 10 % of arm b's exposures
    broken = srm([len(users["a"]), len(logged_b)], [0.5, 0.5])
    assert broken["mismatch"] and broken["p_value"] < 1e-5
    uneven = [("a", 0.9), ("b", 0.1)]
    counts = Counter(assign(u, "srm2", uneven) for u in USERS)
    assert not srm([counts["a"], counts["b"]], [0.9, 0.1])["mismatch"]  # unequal shares are not a mismatch


# --- interleaving -------------------------------------------------------------------------------------------------


def test_team_draft_keeps_each_teams_order_and_balance() -> None:
    rng = random.Random(0)
    items = [f"i{j}" for j in range(30)]
    for trial in range(200):
        a, b = rng.sample(items, 20), rng.sample(items, 20)
        merged, teams = team_draft(a, b, 10, random.Random(trial))
        assert len(merged) == len(set(merged)) == 10
        for team, ranking in (("A", a), ("B", b)):
            mine = [i for i, t in zip(merged, teams, strict=True) if t == team]
            assert mine == sorted(mine, key=ranking.index)  # drafted in the team's own order
        for n in range(1, 11):  # at every prefix the teams differ by at most one pick
            assert abs(teams[:n].count("A") - teams[:n].count("B")) <= 1
    same = [f"i{j}" for j in range(10)]
    assert team_draft(same, same, 10, random.Random(1))[0] == same  # identical rankings interleave to themselves


def _clicks(ranked: list[int], relevant: set[int], propensity: float, rng: np.random.Generator) -> list[bool]:
    """A user who clicks a relevant item at position p with probability propensity / (1 + p / 3)."""
    return [bool(i in relevant and rng.random() < propensity / (1 + p / 3)) for p, i in enumerate(ranked)]


def _ranking(relevant: set[int], noise: float, rng: np.random.Generator, n: int = 100) -> list[int]:
    """A ranker that scores relevant items +1 plus Gaussian noise (more noise: a worse ranker)."""
    scores = np.array([float(i in relevant) for i in range(n)]) + rng.normal(0, noise, n)
    return [int(i) for i in np.argsort(-scores)]


def _interleave_vs_ab(noise_a: float, noise_b: float, users: int, seed: int) -> tuple[dict[str, Any], float]:
    """Simulated users with 3-7 relevant items among 100 and very different click propensities (Beta(0.3, 1)):
    the interleaving result over all of them, and the p-value of an A/B split of the same users."""
    rng = np.random.default_rng(seed)
    outcomes: list[int] = []
    ab: dict[str, tuple[list[float], list[float]]] = {"A": ([], []), "B": ([], [])}
    for u in range(users):
        relevant = set(rng.choice(100, int(rng.integers(3, 8)), replace=False).tolist())
        propensity = rng.beta(0.3, 1.0)
        a, b = _ranking(relevant, noise_a, rng), _ranking(relevant, noise_b, rng)
        merged, teams = team_draft([str(i) for i in a], [str(i) for i in b], 10, random.Random(u))
        flags = _clicks([int(i) for i in merged], relevant, propensity, rng)
        if any(flags):
            outcomes.append(outcome(teams, flags, "A", "B"))
        arm = "A" if u % 2 else "B"
        ab[arm][0].append(sum(_clicks((a if arm == "A" else b)[:10], relevant, propensity, rng)))
        ab[arm][1].append(10)
    p_ab = ratio_difference(*ab["A"], *ab["B"]).p_value
    return summarise(outcomes), 1.0 if p_ab is None else p_ab


def test_interleaving_credits_the_planted_better_ranker() -> None:
    better, _ = _interleave_vs_ab(noise_a=0.1, noise_b=5.0, users=300, seed=3)
    assert better["wins"] > 3 * better["losses"] and better["delta"] > 0.3 and better["p_value"] < 1e-6, better
    assert better["wins"] + better["losses"] + better["ties"] == better["impressions_with_clicks"]
    worse, _ = _interleave_vs_ab(noise_a=5.0, noise_b=0.1, users=300, seed=4)
    assert worse["delta"] < -0.3 and worse["p_value"] < 1e-6
    tie, _ = _interleave_vs_ab(noise_a=0.8, noise_b=0.8, users=300, seed=5)
    assert tie["p_value"] > 0.01, tie  # no planted preference, no false alarm


def test_interleaving_is_more_sensitive_than_an_ab_split_of_the_same_traffic() -> None:
    """Power at p < 0.01 over 40 simulations of 300 users, A slightly better than B (noise 0.6 vs 0.9): every user
    sees both rankers at once, so their very different click propensities cancel out (measured: 0.75 vs 0.30)."""
    runs = [_interleave_vs_ab(0.6, 0.9, users=300, seed=100 + s) for s in range(40)]
    power_tdi = np.mean([r[0]["p_value"] < 0.01 and r[0]["delta"] > 0 for r in runs])
    power_ab = np.mean([r[1] < 0.01 for r in runs])
    assert power_tdi >= power_ab + 0.25, (power_tdi, power_ab)


# --- policies -----------------------------------------------------------------------------------------------------

NAN = [np.nan] * 2


def _cands() -> Candidates:
    return Candidates(
        ["w-pop", "cold-near", "w-cf", "cold-far", "w-low"],
        np.array([10, 0, 3, 0, 1]),
        content=np.array([[0.1, 0.0], [2.0, 0.0], [0.5, 0.5], [-1.0, 0.0], [0.0, 1.0]], np.float32),
        cf=np.array([[0.2, 0.0], NAN, [1.0, 0.0], NAN, [0.0, 1.0]], np.float32),
        knn=knn_matrix(np.array([[1, 0], [0, 1], [1, 1], [0, 1], [1, 0]], float), np.zeros((5, 1))),
    )


def _rank(name: str, k: int = 5, seed: int = 0, knn_weight: float = 0.0, **kw: float) -> list[str]:
    user = UserContext(
        np.array([1.0, 0.0], np.float32), np.array([1.0, 0.0]), knn_matrix(np.array([[0.0, 1.0]]), np.zeros((1, 1)))[0]
    )
    policy = make_policy(name, **kw)  # type: ignore[arg-type]
    cands = _cands()
    order, _ = rank(policy, cands, user, k, default_alpha=1.0, shrinkage=10.0, seed=seed, default_knn_weight=knn_weight)
    return [cands.item_ids[i] for i in order]


def test_policies_rank_planted_candidates() -> None:
    assert _rank("cf_only") == ["w-cf", "w-pop", "w-low"]  # cold items never, whatever k
    assert _rank("popularity") == ["w-pop", "w-cf", "w-low", "cold-near", "cold-far"]
    assert _rank("content_knn")[:2] == ["cold-near", "cold-far"]  # same text embedding as the user's history
    assert _rank("thaw", alpha=1.0)[0] == "cold-near"  # a new item whose predicted factors match the user
    assert _rank("random", seed=1) == _rank("random", seed=1) != _rank("random", seed=2)
    assert sorted(_rank("random")) == sorted(_cands().item_ids)
    c = _cands()  # thaw is exactly the service's blend over served vectors
    served = served_vectors(c.cf, c.content, c.interactions, 10.0)  # type: ignore[arg-type]
    expected = score_items(np.array([1.0, 0.0]), served, c.content, np.array([1.0, 0.0]), 0.3)
    assert _rank("thaw", alpha=0.3) == [c.item_ids[i] for i in np.argsort(-expected, kind="stable")]
    # the model's knn weight: 1 serves content_knn's ranking, a blend adds the z-scores
    assert _rank("thaw", knn_weight=1.0) == _rank("content_knn")
    knn_sim = c.knn @ c.knn[1] / np.linalg.norm(c.knn, axis=1)  # type: ignore[index]
    thaw = score_items(np.array([1.0, 0.0]), served, c.content, np.array([1.0, 0.0]), 0.3)
    mixed = 0.5 * zscore(thaw) + 0.5 * zscore(knn_sim)
    assert _rank("thaw", alpha=0.3, knn_weight=0.5) == [c.item_ids[i] for i in np.argsort(-mixed, kind="stable")]
    with pytest.raises(ValueError, match="unknown policy"):
        make_policy("magic")
    with pytest.raises(ValueError, match="thaw policy only"):
        make_policy("popularity", alpha=0.5)


# --- specs and the report -----------------------------------------------------------------------------------------


def test_spec_problems_and_arm_parsing() -> None:
    a, b = Arm("a", make_policy("thaw"), 0.5), Arm("b", make_policy("cf_only"), 0.4)
    assert spec_problems("ab", [a, b], "a") == ["arm shares must sum to 1 (within 1e-06); got 0.900000"]
    assert "control must name" in spec_problems("ab", [a, a], "x")[1]
    assert "unique" in spec_problems("ab", [a, a], "x")[0]
    spec = parse_arms("thaw,cf_only,t5=thaw:alpha=0.5", control="cf_only")
    assert [x.name for x in spec.arms] == ["thaw", "cf_only", "t5"] and spec.arm("t5").policy.alpha == 0.5
    assert spec.treatments == ["thaw", "t5"] and abs(sum(x.share for x in spec.arms) - 1) < 1e-9


def test_report_counts_joins_slices_and_time_to_first_click() -> None:
    spec = ExperimentSpec((Arm("t", make_policy("thaw"), 0.5), Arm("c", make_policy("cf_only"), 0.5)), "c", "salt")
    start = 1_000_000.0
    exposures = [
        ExposureLog("r1", "t", "u1", start + 3600, [Shown("new", True, 0.0), Shown("old", False, 9e6)]),
        ExposureLog("r2", "t", "u2", start + 7200, [Shown("new", False, 3600.0), Shown("x", False, None)]),
        ExposureLog("r3", "c", "u3", start + 100, [Shown("old", False, 9e6), Shown("x", False, None)]),
    ]
    events = [
        EventLog("r1", "u1", "new", "click", start + 3 * 3600),  # the new item's first click: 2 h after it arrived
        EventLog("r1", "u1", "new", "purchase", start + 4 * 3600),  # same impression: a conversion, not a 2nd click
        EventLog("r2", "u2", "x", "click", start + 7300),
        EventLog("r3", "u1", "old", "click", start + 200),  # another user's rec_id: not joined
        EventLog("r3", "u3", "new", "click", start + 200),  # not in that list: not joined
        EventLog("r9", "u3", "old", "click", start + 200),  # unknown rec_id
    ]
    report = build_report(spec, exposures, events, Catalogue(items=10, cold=2, warm=9), start=start)
    t, c = report["arms"]["t"], report["arms"]["c"]
    assert report["events_joined"] == 3 and report["events_not_joined"] == 3
    assert (t["users"], t["exposures"], c["users"], c["exposures"]) == (2, 2, 1, 1)
    assert t["counts"] == {
        "impressions": 4,
        "impressions_cold": 1,
        "impressions_warm": 3,
        "clicks": 2,
        "clicks_cold": 1,
        "clicks_warm": 1,
        "conversions": 1,
        "conversions_cold": 1,
        "conversions_warm": 0,
    }
    assert c["counts"]["clicks"] == 0 and c["counts"]["impressions"] == 2
    assert t["metrics"]["ctr"]["value"] == 0.5 and t["metrics"]["ctr_cold"]["value"] == 1.0
    assert t["metrics"]["cold_share_shown"]["value"] == 0.25 and t["metrics"]["cold_share_clicked"]["value"] == 0.5
    assert t["metrics"]["coverage"]["value"] == 0.3 and t["metrics"]["coverage_cold"]["value"] == 0.5
    assert t["new_items"] == {
        "items": 1,
        "with_first_click": 1,
        "share_clicked": 1.0,
        "median_hours_to_first_click": 2.0,
    }
    assert report["vs_control"]["t"]["ctr"]["diff"] == 0.5
    assert report["srm"]["observed_users"] == {"t": 2, "c": 1} and not report["srm"]["mismatch"]


def test_the_thaw_policy_reads_content_knn_only_where_the_model_weighs_it() -> None:
    thaw = make_policy("thaw")
    assert thaw.reads(0.0) == (frozenset({"vector", "profile"}), ("content", "cf"))
    knn = frozenset({"vector", "profile", "knn_profile", "knn_history"})  # the history rows: item-based kNN
    assert thaw.reads(0.5) == (knn, ("content", "cf", "knn"))
    assert index_vectors(thaw.reads(0.0)[1]) == ["content", "cf"]
    assert index_vectors(thaw.reads(1.0)[1]) == ["content", "cf", "text", "image"]
    assert make_policy("content_knn").reads(0.0) == (frozenset({"knn_profile"}), ("knn",))
