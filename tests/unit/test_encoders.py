"""Encoders: a head recovers planted factors; save/load round trips; any modality subset; no leakage."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from encoders.artifacts import ItemInput, ThawModel, active_version, list_versions, save_version, set_active
from encoders.fusion import ThawNet
from encoders.training import TrainConfig, _loss, item_inputs, train
from thaw.datasets import load_dataset, split_items


def test_text_head_recovers_planted_factors() -> None:
    torch.manual_seed(0)
    n, dim = 400, 8
    factors = torch.randn(n, dim)
    feats = {
        "text": factors @ torch.randn(dim, 384) + 0.05 * torch.randn(n, 384),
        "image": torch.zeros(n, 1280),
        "audio": torch.zeros(n, 128),
    }
    masks = torch.tensor([[True, False, False]] * n)
    net = ThawNet(dim=dim, hidden=64, dropout=0.0)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    train_idx, test_idx = torch.arange(300), torch.arange(300, 400)
    for _ in range(400):
        pred, _ = net({k: v[train_idx] for k, v in feats.items()}, masks[train_idx])
        loss = _loss("mse", pred, factors[train_idx], torch.zeros(1, dim), torch.zeros(300, 1), 1.0)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        pred, _ = net({k: v[test_idx] for k, v in feats.items()}, masks[test_idx])
    r2 = 1 - ((pred - factors[test_idx]) ** 2).sum() / ((factors[test_idx] - factors[test_idx].mean(0)) ** 2).sum()
    assert r2 > 0.9


@pytest.fixture(scope="module")
def small_model(catalog: Path) -> tuple[ThawModel, object]:
    ds = load_dataset(catalog)
    split = split_items(ds, seed=0)
    return train(ds, split, TrainConfig(epochs=2, eval_every=1), progress=False), (ds, split)


def test_no_cold_interactions_reach_training(small_model: tuple[ThawModel, object]) -> None:
    model, (ds, split) = small_model  # type: ignore[misc]
    assert set(model.item_ids) == set(split.warm)  # ALS factors (and the heads' targets) are warm items only
    warm_users = set(ds.interactions.for_items(split.warm).user_ids.tolist())
    assert set(model.user_ids) == warm_users
    assert not set(model.item_ids) & (set(split.cold_val) | set(split.cold_test))


def test_any_subset_of_modalities_encodes(small_model: tuple[ThawModel, object], catalog: Path) -> None:
    model, (ds, _) = small_model  # type: ignore[misc]
    full = next(i for i in item_inputs(ds, sorted(ds.items)) if i.text and i.image is not None and i.audio is not None)
    cases = {
        "text": ItemInput("t", text=full.text),
        "image": ItemInput("i", image=full.image),
        "audio": ItemInput("a", audio=full.audio),
        "all": full,
    }
    out = model.encode(list(cases.values()))
    for (name, _), enc in zip(cases.items(), out, strict=True):
        assert enc.content.shape == (model.dim,) and np.isfinite(enc.content).all()
        assert set(enc.embeddings) == ({"text", "image", "audio"} if name == "all" else {name})
        for m, e in enc.embeddings.items():
            assert e.shape == (model.embedding_dims[m],)
            assert np.linalg.norm(e) == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(ValueError, match="no text, image or audio"):
        model.encode([ItemInput("empty")])


def test_model_saves_and_loads_to_identical_outputs(small_model: tuple[ThawModel, object], tmp_path: Path) -> None:
    model, (ds, _) = small_model  # type: ignore[misc]
    inputs = item_inputs(ds, sorted(ds.items)[:12])
    before = model.encode(inputs)
    path = save_version(model, tmp_path)
    assert list_versions(tmp_path) == [model.version] and (path / "versions.json").exists()
    set_active(tmp_path, model.version)
    assert active_version(tmp_path) == model.version
    loaded = ThawModel.load(path)
    after = loaded.encode(inputs)
    for a, b in zip(before, after, strict=True):
        np.testing.assert_allclose(a.content, b.content, atol=1e-6)
        for m in a.embeddings:
            np.testing.assert_allclose(a.embeddings[m], b.embeddings[m], atol=1e-6)
    np.testing.assert_array_equal(loaded.user_factors, model.user_factors)
    assert loaded.alpha == model.alpha and loaded.user_ids == model.user_ids
    with pytest.raises(ValueError, match="unknown model version"):
        set_active(tmp_path, "v99")
