"""Unit tests with planted answers: ids, blend arithmetic, fold-in, ALS, metrics, datasets and the split."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from thaw.datasets import Interactions, load_dataset, split_items
from thaw.evaluation import (
    Histories,
    cold_ndcg,
    cold_ndcg_grid,
    evaluate_rankings,
    ndcg_at_k,
    ndcg_rows,
    precision_at_k,
    rank_by_scores,
    rank_cold,
    recall_at_k,
)
from thaw.factors import fit_als, fold_in
from thaw.schema import InvalidIdError, check_id, item_text, point_id, user_point_id
from thaw.scoring import (
    blend,
    cf_weight,
    knn_similarity,
    profile,
    score_items,
    served_vector,
    soft_max_cosine,
    strongest,
    zscore,
)


def test_point_ids_are_deterministic_and_distinct() -> None:
    assert point_id("42") == point_id("42")
    assert point_id("42") != point_id("43")
    assert point_id("42") != user_point_id("42")
    assert point_id("42")[14] == "5"  # uuid5


@pytest.mark.parametrize("bad", ["", " ", "../x", "a" * 129, "semi;colon", None, 1.5, True, ["x"]])
def test_invalid_ids_are_refused_with_a_reason(bad: object) -> None:
    with pytest.raises(InvalidIdError, match="must be"):
        check_id(bad)


def test_valid_ids() -> None:
    assert check_id(17) == "17"
    assert check_id("song-1.v2:x_y") == "song-1.v2:x_y"


def test_item_text_flattens_fields_in_order() -> None:
    text = item_text({"description": "A toy story.", "title": "Toy", "genres": ["Animation", "Comedy"], "year": 1995})
    assert text == "Toy. genres: Animation, Comedy. A toy story."  # non-text values (year) are left out


def test_blend_arithmetic() -> None:
    cf = np.array([1.0, 2.0, 3.0])
    content = np.array([3.0, 2.0, 1.0])
    np.testing.assert_allclose(blend(cf, content, 1.0), zscore(cf))
    np.testing.assert_allclose(blend(cf, content, 0.0), zscore(content))
    np.testing.assert_allclose(blend(cf, content, 0.5), np.zeros(3), atol=1e-12)  # opposite orders cancel
    np.testing.assert_allclose(blend(cf, None, 0.3), cf)
    with pytest.raises(ValueError, match="alpha"):
        blend(cf, content, 1.5)


def test_served_vector_slides_from_content_to_cf() -> None:
    cf, content = np.array([1.0, 0.0]), np.array([0.0, 1.0])
    np.testing.assert_allclose(served_vector(cf, content, 0, 10.0), content)
    np.testing.assert_allclose(served_vector(cf, content, 10, 10.0), [0.5, 0.5])
    np.testing.assert_allclose(served_vector(None, content, 5, 10.0), content)
    assert cf_weight(90, 10.0) == pytest.approx(0.9)


def test_profile_is_unit_centroid() -> None:
    p = profile([np.array([2.0, 0.0]), np.array([0.0, 5.0])])
    assert p is not None
    np.testing.assert_allclose(p, [math.sqrt(0.5), math.sqrt(0.5)])
    assert profile([]) is None


def test_strongest_names_the_history_rows_closest_to_each_candidate() -> None:
    history = np.array([[1.0, 0.0], [0.0, 3.0], [1.0, 1.0]])
    contents = np.array([[2.0, 0.1], [0.0, 1.0], [-1.0, -1.0], [np.nan, np.nan]])
    picks = strongest(contents, history, top=2)
    assert [[j for j, _ in row] for row in picks] == [[0, 2], [1, 2], [], []]  # positive cosines only; NaN: none
    assert picks[1][1][1] == pytest.approx(math.sqrt(0.5))


def test_fold_in_recovers_a_planted_row() -> None:
    """Rows y_j scaled so that y_j . x = 1 for a planted x: the noise-free fold-in returns x."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=4)
    y = rng.normal(size=(12, 4))
    y = y / (y @ x)[:, None]
    np.testing.assert_allclose(fold_in(y, rng.uniform(1, 5, 12), 1e-9), x, rtol=1e-4)


def test_als_ranks_the_held_out_block_item_first() -> None:
    """Checkerboard: users 0-9 like items 0-9, users 10-19 like items 10-19; hold one item per user out."""
    users, items = [], []
    for u in range(20):
        block = range(0, 10) if u < 10 else range(10, 20)
        for i in block:
            if i != (u % 10) + (0 if u < 10 else 10):
                users.append(f"u{u}")
                items.append(f"i{i}")
    inter = Interactions(np.array(users, object), np.array(items, object), np.ones(len(users), np.float32))
    f = fit_als(inter, factors=4, regularization=0.01, iterations=30, seed=0)
    scores = f.users @ f.items.T
    for u in range(20):
        own = {f"i{i}" for i in (range(0, 10) if u < 10 else range(10, 20))}
        top = f.item_ids[int(np.argmax(scores[f.user_ids.index(f"u{u}")]))]
        assert top in own


def test_metrics_on_hand_computed_values() -> None:
    ranked = ["a", "b", "c", "d"]
    positives = {"b", "d", "z"}
    assert recall_at_k(ranked, positives, 2) == pytest.approx(1 / 3)
    assert precision_at_k(ranked, positives, 2) == pytest.approx(1 / 2)
    dcg = 1 / math.log2(3) + 1 / math.log2(5)
    idcg = 1 + 1 / math.log2(3) + 1 / math.log2(4)
    assert ndcg_at_k(ranked, positives, 4) == pytest.approx(dcg / idcg)
    assert ndcg_at_k(ranked, positives, 2) == pytest.approx((1 / math.log2(3)) / (1 + 1 / math.log2(3)))
    out = evaluate_rankings({"u1": ranked, "u2": ["d", "c"]}, {"u1": positives, "u2": {"d"}}, n_items=4, ks=(2,))
    assert out["recall@2"] == pytest.approx((1 / 3 + 1) / 2)
    assert out["ndcg@2"] == pytest.approx(((1 / math.log2(3)) / (1 + 1 / math.log2(3)) + 1) / 2)
    assert out["coverage@20"] == pytest.approx(4 / 4)


def test_ndcg_rows_matches_the_per_user_ranking_ties_included() -> None:
    rng = np.random.default_rng(0)
    items = [f"i{j}" for j in range(60)]
    scores = rng.integers(0, 6, size=(40, 60)).astype(float)  # many ties, broken by position as rank_by_scores does
    positive = rng.random((40, 60)) < 0.15
    positive[0] = False
    per_user = [
        evaluate_rankings(
            {"u": rank_by_scores(row, items)}, {"u": {items[j] for j in np.flatnonzero(p)}}, n_items=60, ks=(20,)
        )["ndcg@20"]
        for row, p in zip(scores, positive, strict=True)
    ]
    np.testing.assert_allclose(ndcg_rows(scores, positive), per_user, rtol=0, atol=1e-9)


@pytest.mark.parametrize("beta", [0.0, 10.0])
def test_cold_ndcg_grid_matches_cold_ndcg_for_every_candidate(beta: float) -> None:
    rng = np.random.default_rng(1)
    users, cold = [f"u{i}" for i in range(30)], [f"c{j}" for j in range(50)]
    factors = rng.normal(size=(30, 8)).astype(np.float32)
    pred = rng.normal(size=(50, 8)).astype(np.float32)
    knn = rng.normal(size=(50, 12)).astype(np.float32)
    knn[::7] = 0.0  # items without content_knn vectors tie at cosine 0
    positives = {u: {c for c in cold if rng.random() < 0.1} | {"warm"} for u in users[:25] + ["gone"]}
    positives = {u: p for u, p in positives.items() if len(p) > 1}
    profiles = {u: rng.normal(size=8) for u in users[:20]}
    knn_profiles = {u: rng.normal(size=12).astype(np.float32) for u in users[5:28]}
    warm_knn = rng.normal(size=(40, 12)).astype(np.float32)
    histories = Histories(
        warm_knn, {u: rng.choice(40, size=1 + i % 6, replace=False) for i, u in enumerate(users[3:27])}
    )
    candidates = [(a, w) for w in (0.0, 0.25, 0.5, 1.0) for a in (0.0, 0.5, 1.0)]
    knn_args = {"knn": knn, "knn_profiles": knn_profiles, "knn_histories": histories, "knn_beta": beta}
    grid = cold_ndcg_grid(users, factors, cold, pred, positives, candidates, profiles=profiles, **knn_args)
    for a, w in candidates:
        args = (users, factors, cold, pred, positives)
        options = {"alpha": a, "profiles": profiles, "knn_weight": w, **knn_args}
        ranks = rank_cold(*args, **options)  # the per-user ranking that evaluation ranks cold test items with
        one = evaluate_rankings(ranks, positives, n_items=len(cold), ks=(20,))["ndcg@20"]
        assert grid[(a, w)] == pytest.approx(one, abs=1e-9, rel=0)
        one = cold_ndcg(*args, **options)
        assert one == grid[(a, w)]


def test_soft_max_cosine_runs_from_the_mean_to_the_maximum() -> None:
    c = np.array([[0.9, 0.1, 0.2], [0.5, 0.5, 0.5]])
    np.testing.assert_allclose(soft_max_cosine(c, 1e-6), c.mean(1), atol=1e-6)
    np.testing.assert_allclose(soft_max_cosine(c, 1e4), c.max(1), atol=1e-3)
    np.testing.assert_allclose(soft_max_cosine(c, 10.0), np.log(np.exp(10 * c).mean(1)) / 10)
    assert soft_max_cosine(np.zeros((2, 0)), 10.0).tolist() == [0.0, 0.0]
    with pytest.raises(ValueError, match="beta"):
        soft_max_cosine(c, 0.0)


def test_item_knn_finds_what_is_near_one_history_item_where_the_centroid_does_not() -> None:
    """A history of two opposite tastes: the centroid sits between them and prefers a bland middle item; item-based
    kNN (beta > 0) prefers an item next to one of the two, as does score_items with the knn weight 1."""
    history = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], np.float32)
    cands = np.array([[0.98, 0.0, 0.2], [0.6, 0.6, 0.53]], np.float32)  # next to the first / in the middle
    centroid = profile(list(history))
    assert np.argmax(knn_similarity(cands, history, centroid, 0.0)) == 1
    assert np.argmax(knn_similarity(cands, history, centroid, 10.0)) == 0
    served, user = np.zeros((2, 2)), np.ones(2)
    scores = score_items(user, served, None, None, 1.0, knn=cands, knn_profile=centroid, knn_weight=1.0)
    assert np.argmax(scores) == 1
    scores = score_items(
        user,
        served,
        None,
        None,
        1.0,
        knn=cands,
        knn_profile=centroid,
        knn_weight=1.0,
        knn_history=history,
        knn_beta=10.0,
    )
    assert np.argmax(scores) == 0
    no_history = score_items(user, served, None, None, 1.0, knn=cands, knn_weight=1.0, knn_beta=10.0)
    np.testing.assert_array_equal(no_history, served @ user)  # nothing known of the user's history: Thaw's score


def test_dataset_reading_and_split(tmp_path: Path) -> None:
    (tmp_path / "items.jsonl").write_text(
        "\n".join(json.dumps({"item_id": i, "title": f"t{i}"}) for i in range(50))
        + '\n{"item_id": 99, "image": "gone.jpg"}\n'
    )
    rows = ["user_id,item_id,rating"] + [
        f"u{u},{i},{1 + (u + i) % 5}" for u in range(10) for i in range(0, 50, 1 + u % 3)
    ]
    (tmp_path / "interactions.csv").write_text("\n".join(rows) + "\nu1,unknown,5\n")
    ds = load_dataset(tmp_path)
    assert len(ds.items) == 51 and ds.items["99"].modalities == ()
    assert "unknown" not in set(ds.interactions.item_ids)
    high = load_dataset(tmp_path, min_rating=4)
    assert high.interactions.ratings is not None and (high.interactions.ratings >= 4).all()
    split = split_items(ds, seed=1)
    assert len(split.cold_val) == len(split.cold_test) == 5 and len(split.warm) == 40
    assert not set(split.warm) & set(split.cold_test)
    assert split_items(ds, seed=1) == split and split_items(ds, seed=2) != split
    (tmp_path / "split.csv").write_text("item_id,split\n0,cold_test\n1,cold_val\n")
    fixed = split_items(load_dataset(tmp_path))
    assert fixed.cold_test == ["0"] and fixed.cold_val == ["1"] and len(fixed.warm) == 48
