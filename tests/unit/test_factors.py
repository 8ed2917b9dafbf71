"""CF factors: planted answers for ALS (checkerboard), fold-in (exact row recovery, implicit's own update, the pull
toward a prior) and content-regularised ALS."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from thaw.datasets import Interactions
from thaw.factors import confidence_matrix, content_regularised_als, fit_als, fold_in, fold_in_events, solve_rows


def _events(pairs: list[tuple[str, str]], weights: list[float] | None = None) -> Interactions:
    users, items = zip(*pairs, strict=True)
    w = np.ones(len(pairs), np.float32) if weights is None else np.asarray(weights, np.float32)
    return Interactions(np.array(users, object), np.array(items, object), w)


def test_fold_in_recovers_a_planted_row_exactly() -> None:
    """Rows scaled so that y_j . x = 1 for a planted x: the noise-free least-squares update returns x."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=6)
    y = rng.normal(size=(20, 6))
    y = y / (y @ x)[:, None]
    np.testing.assert_allclose(fold_in(y, rng.uniform(1, 5, 20), 0.0), x, rtol=1e-5)


def test_fold_in_with_gram_is_implicits_own_update() -> None:
    """With Y^T Y of all items, fold-in equals implicit's recalculate_user for a user absent from training."""
    rng = np.random.default_rng(1)
    pairs = [(f"u{u}", f"i{i}") for u in range(30) for i in range(25) if rng.random() < 0.3]
    alpha = 5.0
    f = fit_als(_events(pairs), factors=4, regularization=0.1, iterations=5, alpha=alpha)
    liked = [3, 7, 11]
    confidences = 1.0 + alpha * np.array([1.0, 2.0, 1.0])

    from implicit.cpu.als import AlternatingLeastSquares

    model = AlternatingLeastSquares(factors=4, regularization=0.1, alpha=1.0)
    model.item_factors = f.items
    row = np.zeros((1, len(f.item_ids)), np.float32)
    row[0, liked] = confidences
    import scipy.sparse as sp

    expected = model.recalculate_user(0, sp.csr_matrix(row))
    got = fold_in(f.items[liked], confidences, 0.1, gram=f.items.T.astype(np.float64) @ f.items)
    np.testing.assert_allclose(got, np.ravel(expected), rtol=1e-3, atol=1e-4)


def test_fold_in_events_recovers_trained_users_and_items() -> None:
    """The one fold-in serving uses: a trained user's own events (repeated ones add up, weights scaled by als_alpha as
    training builds confidences), against the model's item factors with their Gram matrix, land on that user's ALS
    vector (within implicit's conjugate-gradient tolerance); likewise an item from its audience. Confidence 1 + w
    (without alpha), or no Gram matrix, lands 25-40 % away."""
    rng = np.random.default_rng(2)
    pairs = [(f"u{u}", f"i{i}") for u in range(40) for i in range(30) if rng.random() < 0.25]
    weights = rng.integers(1, 4, len(pairs)).astype(float)
    alpha, reg = 5.0, 0.1
    f = fit_als(_events(pairs, list(weights)), factors=4, regularization=reg, iterations=60, alpha=alpha)
    items, users = f.items.astype(np.float64), f.users.astype(np.float64)
    iix = {i: k for k, i in enumerate(f.item_ids)}
    uix = {u: k for k, u in enumerate(f.user_ids)}

    def error(got: np.ndarray, want: np.ndarray) -> float:
        return float(np.linalg.norm(got - want) / np.linalg.norm(want))

    for user in ("u3", "u10", "u20"):
        rows = [k for k, (u, i) in enumerate(pairs) if u == user]
        y, w = items[[iix[pairs[k][1]] for k in rows]], weights[rows]
        want = f.users[uix[user]]
        assert error(fold_in_events(y, w, reg=reg, alpha=alpha, gram=items.T @ items), want) < 0.03
        assert error(fold_in(y, 1.0 + w, reg), want) > 0.2
        assert error(fold_in_events(y, w, reg=reg, alpha=alpha), want) > 0.2
    rows = [k for k, (u, i) in enumerate(pairs) if i == "i7"]
    y, w = users[[uix[pairs[k][0]] for k in rows]], weights[rows]
    assert error(fold_in_events(y, w, reg=reg, alpha=alpha, gram=users.T @ users), f.items[iix["i7"]]) < 0.03


def test_fold_in_refuses_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="confidences"):
        fold_in(np.zeros((3, 2)), np.ones(4), 0.1)
    with pytest.raises(ValueError, match="gram"):
        fold_in(np.ones((3, 2)), np.ones(3), 0.1, gram=np.eye(3))


def test_als_ranks_each_users_held_out_block_item_first() -> None:
    """Checkerboard: users 0-9 like items 0-9, users 10-19 like items 10-19; each user's own diagonal item is held
    out. Among the items a user has not seen, the held-out one of their block must come first."""
    pairs, held = [], {}
    for u in range(20):
        block = range(0, 10) if u < 10 else range(10, 20)
        held[f"u{u}"] = f"i{block[u % 10]}"
        pairs += [(f"u{u}", f"i{i}") for i in block if f"i{i}" != held[f"u{u}"]]
    f = fit_als(_events(pairs), factors=4, regularization=1.0, iterations=30, seed=0)
    assert len(f.item_ids) == 20 and f.users.dtype == np.float32 and f.items.shape == (20, 4)
    seen = {(u, i) for u, i in pairs}
    for k, user in enumerate(f.user_ids):
        scores = f.items @ f.users[k]
        unseen = [j for j, item in enumerate(f.item_ids) if (user, item) not in seen]
        assert f.item_ids[max(unseen, key=lambda j: scores[j])] == held[user]


def test_confidence_is_one_plus_alpha_times_summed_weight() -> None:
    events = _events([("a", "x"), ("a", "x"), ("b", "y")], [1.0, 2.0, 0.5])
    m = confidence_matrix(events, ["a", "b"], ["x", "y"], alpha=4.0).toarray()
    np.testing.assert_allclose(m, [[13.0, 0.0], [0.0, 3.0]])


def test_als_is_seeded_and_refuses_empty_input() -> None:
    pairs = [(f"u{u}", f"i{(u * 3 + k) % 9}") for u in range(12) for k in range(3)]
    a = fit_als(_events(pairs), factors=3, iterations=3, seed=7)
    b = fit_als(_events(pairs), factors=3, iterations=3, seed=7)
    np.testing.assert_array_equal(a.users, b.users)
    empty = Interactions(np.array([], object), np.array([], object), np.array([], np.float32))
    with pytest.raises(ValueError, match="warm split is empty"):
        fit_als(empty)


def test_fold_in_with_a_prior_solves_the_pulled_least_squares_problem() -> None:
    """min sum_j c_j (1 - x.y_j)^2 + reg |x|^2 + w |x - prior|^2, solved directly as one stacked least-squares
    system; a very strong pull lands on the prior itself."""
    rng = np.random.default_rng(2)
    y, c, prior = rng.normal(size=(15, 4)), rng.uniform(1, 5, 15), rng.normal(size=4)
    reg, w = 0.3, 2.0
    a = np.vstack([np.sqrt(c)[:, None] * y, np.sqrt(reg) * np.eye(4), np.sqrt(w) * np.eye(4)])
    b = np.concatenate([np.sqrt(c), np.zeros(4), np.sqrt(w) * prior])
    expected = np.linalg.lstsq(a, b, rcond=None)[0]
    np.testing.assert_allclose(fold_in(y, c, reg, prior=prior, prior_weight=w), expected, rtol=1e-5)
    np.testing.assert_allclose(fold_in(y, c, reg, prior=prior, prior_weight=1e9), prior, atol=1e-6)


@pytest.mark.parametrize(("block_rows", "block_cols"), [(1, 1), (4, 5), (4096, 8192)])
def test_solve_rows_is_fold_in_of_every_row(block_rows: int, block_cols: int) -> None:
    """The batched solve equals `fold_in` row by row (with the gram of all other rows, the prior where it is not
    NaN), whatever the block size, rows without events included."""
    rng = np.random.default_rng(4)
    dense = np.where(rng.random((9, 14)) < 0.3, rng.uniform(1.5, 6.0, (9, 14)), 0.0)
    dense[3] = 0.0  # a row without events
    by_row = sp.csr_matrix(dense)
    other = rng.normal(size=(14, 4))
    prior = rng.normal(size=(9, 4))
    prior[[1, 5]] = np.nan
    got = solve_rows(by_row, other, 0.2, prior=prior, prior_weight=3.0, block_rows=block_rows, block_cols=block_cols)
    gram = other.T @ other
    for r in range(9):
        cols = np.flatnonzero(dense[r])
        has = not np.isnan(prior[r]).any()
        want = fold_in(
            other[cols],
            dense[r, cols],
            0.2,
            gram=gram,
            prior=prior[r] if has else None,
            prior_weight=3.0 if has else 0.0,
        )
        np.testing.assert_allclose(got[r], want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(solve_rows(by_row, other, 0.2)[3], np.zeros(4), atol=1e-12)


def test_content_regularised_als_pulls_items_with_content_toward_the_prior_and_leaves_the_rest_to_the_data() -> None:
    """Two interaction blocks; items i0-i9 have content (their prior is a fixed planted vector), i10-i19 have none.
    With a strong pull the items with content sit on their prior; the others keep fitting their audience, so users
    still rank their own block's content-less items above the other block's."""
    pairs = [(f"u{u}", f"i{i}") for u in range(20) for i in range(20) if (u < 10) == (i % 10 < 5)]
    events = _events(pairs)
    start = fit_als(events, factors=3, regularization=0.1, iterations=10, alpha=5.0)
    target = np.array([0.05, -0.02, 0.01])
    with_content = np.array([int(i[1:]) < 10 for i in start.item_ids])

    def prior(items: np.ndarray) -> np.ndarray:
        out = np.full(items.shape, np.nan)
        out[with_content] = target
        return out

    f = content_regularised_als(events, start, prior, 1e6, alpha=5.0, regularization=0.1, rounds=3)
    np.testing.assert_allclose(f.items[with_content], np.tile(target, (with_content.sum(), 1)), atol=1e-3)
    assert f.user_ids == start.user_ids and f.item_ids == start.item_ids
    scores = f.users @ f.items.T
    for u, user in enumerate(f.user_ids):
        own = [
            k for k, i in enumerate(f.item_ids) if not with_content[k] and (int(user[1:]) < 10) == (int(i[1:]) % 10 < 5)
        ]
        other = [k for k, i in enumerate(f.item_ids) if not with_content[k] and k not in own]
        assert scores[u, own].min() > scores[u, other].max()


def test_content_regularised_als_without_a_pull_stays_at_the_als_solution() -> None:
    """Weight 0 makes each round an ordinary ALS sweep: from converged ALS factors the scores barely move."""
    rng = np.random.default_rng(3)
    events = _events([(f"u{u}", f"i{i}") for u in range(25) for i in range(30) if rng.random() < 0.3])
    start = fit_als(events, factors=4, regularization=0.1, iterations=50, alpha=5.0)
    f = content_regularised_als(
        events, start, lambda items: np.zeros_like(items), 0.0, alpha=5.0, regularization=0.1, rounds=2
    )
    before, after = start.users @ start.items.T, f.users @ f.items.T
    assert np.abs(after - before).max() < 0.05 * np.abs(before).max()


def test_a_folded_in_item_is_shrunk_toward_its_prior_in_proportion_to_evidence() -> None:
    """n events of `shrinkage` 10 weigh n / (n + 10): few leave the vector near its content prediction, many near the
    unshrunk fold-in; without a prior the fold-in is unchanged."""
    rng = np.random.default_rng(0)
    users = rng.normal(0, 0.5, (300, 8))
    gram = users.T @ users
    audience = np.argsort(-(users @ rng.normal(0, 1, 8)))  # the users who like one direction most come first
    prior = rng.normal(0, 0.1, 8)

    def fold(n: int, with_prior: bool) -> np.ndarray:
        kw = {"prior": prior, "shrinkage": 10.0} if with_prior else {}
        return fold_in_events(users[audience[:n]], np.ones(n), reg=0.05, alpha=10.0, gram=gram, **kw)  # type: ignore[arg-type]

    for n, w in ((2, 2 / 12), (13, 13 / 23), (200, 200 / 210)):
        np.testing.assert_allclose(fold(n, True), w * fold(n, False) + (1 - w) * prior, rtol=1e-5, atol=1e-6)
    assert np.linalg.norm(fold(2, True) - prior) < 0.2 * np.linalg.norm(fold(2, False) - prior)
    assert np.linalg.norm(fold(200, True) - fold(200, False)) < 0.05 * np.linalg.norm(fold(200, False) - prior)
