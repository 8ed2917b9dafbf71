"""Encoders: any subset of modalities encodes; each encoder and the whole model save and load to identical outputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from encoders.artifacts import ThawModel, save_version
from encoders.features import ItemInput, item_inputs
from encoders.training import TrainConfig, train
from thaw.datasets import load_dataset, split_items
from thaw.registry import Registry, UnknownVersionError
from thaw.synthetic import generate_catalog


@pytest.fixture(scope="module")
def small_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[ThawModel, object]:
    catalog = generate_catalog(tmp_path_factory.mktemp("enc"), n_items=48, n_users=40, audio_seconds=1.0, seed=2)
    ds = load_dataset(catalog)
    split = split_items(ds, seed=0)
    return train(ds, split, TrainConfig(factors=8, epochs=2, eval_every=1, hidden=32), progress=False), (ds, split)


def test_any_subset_of_modalities_encodes(small_model: tuple[ThawModel, object]) -> None:
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
    registry = Registry(tmp_path)
    path = save_version(model, registry)
    assert registry.versions() == [model.version] == ["v1"] and (path / "versions.json").exists()
    assert registry.config(model.version) == model.config
    user_gram, item_gram = registry.grams(model.version)
    np.testing.assert_allclose(user_gram, model.user_factors.T.astype(np.float64) @ model.user_factors, rtol=1e-5)
    np.testing.assert_allclose(item_gram, model.item_factors.T.astype(np.float64) @ model.item_factors, rtol=1e-5)
    loaded = ThawModel.load(path)
    after = loaded.encode(inputs)
    for a, b in zip(before, after, strict=True):
        np.testing.assert_allclose(a.content, b.content, atol=1e-6)
        for m in a.embeddings:
            np.testing.assert_allclose(a.embeddings[m], b.embeddings[m], atol=1e-6)
    np.testing.assert_array_equal(loaded.user_factors, model.user_factors)
    assert loaded.alpha == model.alpha and loaded.user_ids == model.user_ids
    with pytest.raises(UnknownVersionError, match=r"'v99' is not trained; have \['v1'\]"):
        registry.config("v99")
    assert registry.next_version() == "v2"


@pytest.mark.parametrize("modality", ["text", "image", "audio"])
def test_each_encoder_saves_and_loads_to_identical_outputs(
    small_model: tuple[ThawModel, object], tmp_path: Path, modality: str
) -> None:
    """One modality alone: its backbone/CNN embedding and its head's prediction survive save -> load exactly."""
    model, (ds, _) = small_model  # type: ignore[misc]
    full = [i for i in item_inputs(ds, sorted(ds.items)) if getattr(i, modality) is not None][:6]
    inputs = [ItemInput(i.item_id, **{modality: getattr(i, modality)}) for i in full]
    model.save(tmp_path / "m")
    before, after = model.encode(inputs), ThawModel.load(tmp_path / "m").encode(inputs)
    for a, b in zip(before, after, strict=True):
        assert set(a.embeddings) == {modality}
        assert torch.allclose(torch.from_numpy(a.content), torch.from_numpy(b.content), atol=1e-6)
        assert torch.allclose(
            torch.from_numpy(a.embeddings[modality]), torch.from_numpy(b.embeddings[modality]), atol=1e-6
        )
    assert not np.allclose(before[0].content, before[1].content)  # inputs differ, so outputs must too


def test_each_modality_s_encode_time_is_observed_per_item(small_model: tuple[ThawModel, object]) -> None:
    from services.embedding import ENCODE_SECONDS, encode

    model, (ds, _) = small_model  # type: ignore[misc]
    full = next(i for i in item_inputs(ds, sorted(ds.items)) if i.text and i.image is not None and i.audio is not None)
    inputs = [ItemInput("t", text=full.text), ItemInput("a", audio=full.audio), full]

    def counts() -> dict[str, float]:
        return {
            s.labels["modality"]: s.value
            for m in ENCODE_SECONDS.collect()
            for s in m.samples
            if s.name.endswith("_count")
        }

    before = counts()
    timings: dict[str, float] = {}
    assert len(model.encode(inputs, timings)) == 3 and set(timings) == {"text", "image", "audio"}
    assert all(seconds > 0 for seconds in timings.values())
    encode(model, inputs)
    after = counts()
    grown = {m: after.get(m, 0) - before.get(m, 0) for m in ("text", "image", "audio")}
    assert grown == {"text": 2, "image": 1, "audio": 2}  # one observation per item that has the modality
