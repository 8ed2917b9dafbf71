"""Training: heads recover planted factors; cold items' interactions never reach ALS or the heads (no leakage)."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from encoders.audio import N_MELS
from encoders.features import Table
from encoders.fusion import Head
from encoders.linear import ridge_map
from encoders.tags import TagFactors
from encoders.text import TEXT_DIM
from encoders.training import Preferences, TrainConfig, loss_fn, train, training_events, wpe_loss
from encoders.vision import IMAGE_DIM
from thaw.datasets import Dataset, Split, load_dataset, split_items
from thaw.schema import WORD_PREFIX, item_tags, item_tokens
from thaw.synthetic import generate_catalog


def _planted(n: int = 400, dim: int = 8, n_in: int = 64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Content features that are a known linear map of known factors, plus a little noise."""
    g = torch.Generator().manual_seed(seed)
    factors = torch.randn(n, dim, generator=g)
    feats = factors @ torch.randn(dim, n_in, generator=g) + 0.05 * torch.randn(n, n_in, generator=g)
    return feats, factors


def _r2(pred: torch.Tensor, target: torch.Tensor) -> float:
    return float(1 - ((pred - target) ** 2).sum() / ((target - target.mean(0)) ** 2).sum())


def test_ridge_map_recovers_planted_factors() -> None:
    feats, factors = _planted()
    w, b = ridge_map(feats[:300], factors[:300], lam=1e-3)
    assert _r2(feats[300:] @ w.T + b, factors[300:]) > 0.99


def test_wpe_loss_without_the_score_matrix_equals_the_dense_loss() -> None:
    """The Gram form of the WPE loss gives the dense loss's value and gradient, rows without positives included."""
    rng = np.random.default_rng(5)
    dense = (rng.random((12, 40)) < 0.2).astype(np.float32)
    dense[4] = 0.0
    indptr = np.concatenate([[0], np.cumsum(dense.sum(1).astype(int))])
    prefs = Preferences(
        indptr, np.flatnonzero(dense.ravel()) % 40, torch.from_numpy(rng.normal(size=(40, 6)).astype(np.float32))
    )
    idx = [4, 0, 7, 7, 11]
    np.testing.assert_array_equal(prefs.dense(idx).numpy(), dense[idx])
    pred = torch.from_numpy(rng.normal(size=(5, 6)).astype(np.float32)).requires_grad_(True)
    want = loss_fn("wpe", pred, torch.zeros(5, 6), prefs.factors, torch.from_numpy(dense[idx]), 10.0)
    (want_grad,) = torch.autograd.grad(want, pred)
    got = wpe_loss(pred, prefs, idx, 10.0)
    (got_grad,) = torch.autograd.grad(got, pred)
    assert got.item() == pytest.approx(want.item(), rel=1e-5)
    np.testing.assert_allclose(got_grad.numpy(), want_grad.numpy(), rtol=1e-4, atol=1e-6)


def test_trained_head_recovers_planted_factors() -> None:
    """From a random start (no ridge initialisation), gradient training alone reaches R^2 > 0.9 on held-out items."""
    torch.manual_seed(0)
    feats, factors = _planted()
    head = Head(feats.shape[1], factors.shape[1], hidden=64, dropout=0.0)
    opt = torch.optim.Adam(head.parameters(), lr=3e-3)
    for _ in range(300):
        loss = loss_fn("mse", head(feats[:300]), factors[:300], torch.zeros(1, 8), torch.zeros(300, 1), 1.0)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        assert _r2(head(feats[300:]), factors[300:]) > 0.9


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_catalog(tmp_path_factory.mktemp("tiny"), n_items=40, n_users=30, audio_seconds=1.0, seed=5)


def test_no_cold_interactions_reach_als_or_the_heads(tiny: Path) -> None:
    ds = load_dataset(tiny)
    split = split_items(ds, seed=1)
    cold = set(split.cold_val) | set(split.cold_test)
    assert cold and not set(training_events(ds, split).item_ids.tolist()) & cold
    model = train(ds, split, TrainConfig(factors=8, epochs=1, eval_every=1, hidden=16), progress=False)
    assert model.item_ids == sorted(split.warm)  # ALS item factors: exactly the warm items
    warm_users = set(ds.interactions.for_items(split.warm).user_ids.tolist())
    assert set(model.user_ids) == warm_users
    assert model.config.train_items == model.item_ids  # the heads' training table
    assert not set(model.config.train_items) & cold


def test_a_split_with_an_item_both_warm_and_cold_is_refused(tiny: Path) -> None:
    ds = load_dataset(tiny)
    split = split_items(ds, seed=1)
    bad = Split(split.warm + split.cold_test[:1], split.cold_val, split.cold_test)
    with pytest.raises(ValueError, match="both warm and cold"):
        training_events(ds, bad)


def test_ridge_map_dual_form_equals_primal() -> None:
    """More features than items takes the n x n (dual) system; its solution is the primal one."""
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(30, 80, generator=g), torch.randn(30, 4, generator=g)
    w_dual, b_dual = ridge_map(x, y, lam=2.0)
    xm, ym = x.mean(0).double(), y.mean(0).double()
    xc = x.double() - xm
    w_primal = torch.linalg.solve(xc.T @ xc + 2.0 * torch.eye(80, dtype=torch.float64), xc.T @ (y.double() - ym)).T
    torch.testing.assert_close(w_dual, w_primal.float(), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(b_dual, (ym - w_primal @ xm).float(), atol=1e-5, rtol=1e-4)


def test_tag_factors_read_warm_items_only(tiny: Path, tmp_path: Path) -> None:
    """The tags' target encoding is fitted on warm items' factors alone: a tag only cold items carry never enters
    it, and it equals the encoding refitted from the warm items' tags and the model's item factors."""
    split = split_items(load_dataset(tiny), seed=1)
    cold = set(split.cold_val) | set(split.cold_test)
    shutil.copytree(tiny, tmp_path / "cat", dirs_exist_ok=True)
    rows = [json.loads(line) for line in (tiny / "items.jsonl").read_text().splitlines()]
    for row in rows:
        row["studio"] = f"studio {int(row['item_id']) % 3}"
        row["cast"] = ["only cold"] if row["item_id"] in cold else [f"actor {int(row['item_id']) % 4}"]
    (tmp_path / "cat" / "items.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    ds = load_dataset(tmp_path / "cat")
    model = train(ds, split, TrainConfig(factors=8, epochs=1, eval_every=1, hidden=16), progress=False)
    read = item_tokens if model.metrics["content_pull"]["words"] else item_tags  # the prose words, where chosen
    fields = [f for f in model.tag_factors.fields if not f.startswith(WORD_PREFIX)]
    assert fields == ["cast", "studio"] and "cast=only cold" not in model.tag_factors.tokens
    refit = TagFactors.fit([read(ds.items[i].fields) for i in model.item_ids], model.item_factors)
    assert refit.tokens == model.tag_factors.tokens
    np.testing.assert_allclose(refit.sums, model.tag_factors.sums, atol=1e-5)
    np.testing.assert_array_equal(refit.counts, model.tag_factors.counts)


@pytest.mark.parametrize("patience", [1, 2])
def test_a_trained_stage_stops_after_patience_scorings_without_a_gain(tiny: Path, patience: int) -> None:
    """Scored every epoch, the residual heads stop `patience` scorings after the best one (or at the last epoch),
    and keep the best."""
    ds = load_dataset(tiny)
    config = TrainConfig(factors=8, epochs=12, eval_every=1, patience=patience, hidden=16)
    model = train(ds, split_items(ds, seed=0), config, progress=False)
    history = [h["cold_val_ndcg@20"] for h in model.metrics["history"]["fused"]]
    best = model.metrics["choices"]["epochs"]["residuals"]
    assert len(history) - 1 == min(12, best + patience)
    assert history[best] == max(history) and all(h < history[best] for h in history[:best])


def test_thaw_train_learns_from_every_interaction(tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`thaw train` chooses on an internal validation split, refits on all the history and indexes every item with
    interactions as warm (learned CF factors, its interaction count), so none is served as cold."""
    from collections import Counter

    from fastapi.testclient import TestClient
    from typer.testing import CliRunner

    from entrypoints.cli import app
    from entrypoints.runtime import create_app
    from thaw.settings import Settings

    monkeypatch.setenv("THAW_DATA_DIR", str(tmp_path))
    result = CliRunner().invoke(app, ["train", "--data", str(tiny), "--seed", "1", "--epochs", "2"])
    assert result.exit_code == 0, result.output
    counts = Counter(load_dataset(tiny).interactions.item_ids.tolist())
    with TestClient(create_app(Settings(data_dir=tmp_path))) as client:
        for item_id, n in counts.items():
            body = client.get(f"/items/{item_id}").json()
            assert body["indexed"] and body["interactions"] == n, body
        user = load_dataset(tiny).interactions.user_ids[0]
        recs = client.get(f"/users/{user}/recommendations", params={"k": 100}).json()["items"]
        assert recs and not [r for r in recs if r["cold"] and r["item_id"] in counts]


def _planted_catalogue(out: Path, signal: str, *, seed: int = 0) -> tuple[Dataset, Table]:
    """A text-only catalogue (the frozen text features given, so no backbone runs) where one cold-start scorer is
    right by construction. `knn`: 50 topics, each item's text near its topic's direction, each user after one
    topic: similarity to the user's history finds their items, while one CF factor (popularity, flat here) is blind.
    `cf`: 8 topics nobody cares about and a quality every user wants, carried by one small text dimension: the CF
    factors (popularity) and the regression onto them find it, while similarity to a history drawn across all
    topics is dominated by the topics. `items`: 20 groups of three topics, A, B and their midpoint M (with three times
    as many items); most users after both A and B of one group, the rest after its M: the centroid of an A-and-B
    history points at M, while the items nearest to single history items are A's and B's (item-based kNN)."""
    rng = np.random.default_rng(seed)
    n_items, n_users = 600, 300
    if signal == "items":
        a, b = rng.normal(size=(2, 20, TEXT_DIM))
        centres = np.concatenate([a, b, (a + b) / np.sqrt(2.0)])  # topics 0-19: A, 20-39: B, 40-59: M
        weights = np.repeat([1.0, 1.0, 3.0], 20)
        topic = rng.choice(60, size=n_items, p=weights / weights.sum())
        text = centres[topic] + 0.3 * rng.normal(size=(n_items, TEXT_DIM))
        group, mid = rng.integers(20, size=n_users), rng.random(n_users) < 0.25
        wanted = [[g + 40] if m else [g, g + 20] for g, m in zip(group, mid, strict=True)]
        logits, events = [6.0 * np.isin(topic, w) for w in wanted], 10
    elif signal == "knn":
        topic = rng.integers(50, size=n_items)
        text = rng.normal(size=(50, TEXT_DIM))[topic] + 0.3 * rng.normal(size=(n_items, TEXT_DIM))
        taste = rng.integers(50, size=n_users)
        logits, events = [6.0 * (topic == taste[u]) for u in range(n_users)], 10
    else:
        topics = rng.normal(size=(8, TEXT_DIM))
        topics[:, 0] = 0.0
        topics /= np.linalg.norm(topics, axis=1, keepdims=True)
        quality = rng.normal(size=n_items)
        text = topics[rng.integers(8, size=n_items)] + 0.05 * rng.normal(size=(n_items, TEXT_DIM)) / TEXT_DIM**0.5
        text[:, 0] = 0.1 * quality
        logits, events = [2.5 * quality] * n_users, 15
    ids = [str(i) for i in range(n_items)]
    out.mkdir(parents=True)
    (out / "items.jsonl").write_text("".join(json.dumps({"item_id": i, "title": f"item {i}"}) + "\n" for i in ids))
    rows = ["user_id,item_id"]
    for u in range(n_users):
        p = np.exp(logits[u] - np.max(logits[u]))
        rows += [f"u{u},{i}" for i in rng.choice(n_items, size=events, replace=False, p=p / p.sum())]
    (out / "interactions.csv").write_text("\n".join(rows) + "\n")
    masks = torch.zeros(n_items, 3, dtype=torch.bool)
    masks[:, 0] = True
    feats = {"text": torch.from_numpy(text.astype(np.float32)), "image": torch.zeros(n_items, IMAGE_DIM)}
    empty = [torch.zeros(0, N_MELS, 188) for _ in ids]
    return load_dataset(out), Table(ids, feats, masks, empty, [frozenset() for _ in ids])


@pytest.mark.parametrize(
    ("signal", "scorer", "knn_weight"),
    [("knn", "content_knn", 1.0), ("cf", "regression", 0.0), ("items", "content_knn", 0.75)],
)
def test_cold_validation_picks_the_planted_scorer(tmp_path: Path, signal: str, scorer: str, knn_weight: float) -> None:
    """Training chooses the cold-start scorer on cold validation, and it ships in the model's config: content_knn
    similarity where that is the signal (item-based kNN where the history's centroid misleads), the regression onto
    CF factors where that is."""
    ds, table = _planted_catalogue(tmp_path / signal, signal)
    split = split_items(ds, seed=0, fractions=(0.2, 0.1))
    config = TrainConfig(factors=8 if signal == "cf" else 1, epochs=2, eval_every=1, hidden=16, knn_betas=(0.0, 10.0))
    model = train(ds, split, config, progress=False, features=table)
    grid = model.metrics["scorer_grid"]
    regression, knn = max(v for k, v in grid.items() if k.endswith("knn=0.0")), grid["alpha=1.0,knn=1.0"]
    item_knn = grid["alpha=1.0,knn=1.0,beta=10.0"]
    if signal == "items":  # item-based kNN; the CF factor (popularity: M has more items) may join it in a blend
        assert model.config.knn_beta == 10.0 and model.config.knn_weight >= 0.75, grid
        assert item_knn > 1.2 * knn and item_knn > 1.5 * regression, grid
    else:
        assert (model.metrics["scorer"], model.config.knn_weight) == (scorer, knn_weight), grid
        assert (knn > 1.5 * regression) if signal == "knn" else (regression > 1.5 * max(knn, item_knn)), grid


def test_cold_validation_reads_the_prose_words_where_they_carry_the_taste(tmp_path: Path) -> None:
    """The text embedding is noise and each item's description names its topic: cold validation takes the prose
    words' target encoding into the tag features, and the model keeps it for new items."""
    rng = np.random.default_rng(0)
    n_items, n_users = 500, 250
    topic = rng.integers(8, size=n_items)
    ids = [str(i) for i in range(n_items)]
    out = tmp_path / "words"
    out.mkdir()
    rows = [
        {"item_id": i, "description": f"a paper on subject{t} by author{rng.integers(500)}"}
        for i, t in zip(ids, topic, strict=True)
    ]
    (out / "items.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    taste = rng.integers(8, size=n_users)
    events = ["user_id,item_id"]
    for u in range(n_users):
        liked = np.flatnonzero(topic == taste[u])
        events += [f"u{u},{i}" for i in rng.choice(liked, size=min(8, len(liked)), replace=False)]
    (out / "interactions.csv").write_text("\n".join(events) + "\n")
    ds = load_dataset(out)
    masks = torch.zeros(n_items, 3, dtype=torch.bool)
    masks[:, 0] = True
    feats = {"text": torch.from_numpy((rng.normal(size=(n_items, TEXT_DIM)) / TEXT_DIM**0.5).astype(np.float32))}
    feats["image"] = torch.zeros(n_items, IMAGE_DIM)
    table = Table(ids, feats, masks, [torch.zeros(0, N_MELS, 188) for _ in ids], [item_tokens(r) for r in rows])
    split = split_items(ds, seed=0, fractions=(0.2, 0.1))
    config = TrainConfig(factors=8, epochs=1, eval_every=1, hidden=16, content_pulls=(), text_words=(False, True))
    model = train(ds, split, config, progress=False, features=table)
    assert model.metrics["content_pull"]["words"] == 1.0, model.metrics["content_pull"]
    assert "words:description" in model.tag_factors.fields
    assert not [t for t in model.vocab.tokens if t.startswith("words:")]  # the TF-IDF vocabulary reads no words
    without = train(ds, split, dataclasses.replace(config, text_words=(False,)), progress=False, features=table)
    assert without.metrics["content_pull"]["words"] == 0.0 and "words:description" not in without.tag_factors.fields
    assert model.metrics["cold_val_ndcg@20"] > 1.5 * without.metrics["cold_val_ndcg@20"]
