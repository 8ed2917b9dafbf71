"""Shared fixtures: a small synthetic catalogue and a model trained on it (once per session)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def catalog(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from thaw.synthetic import generate_catalog

    return generate_catalog(tmp_path_factory.mktemp("catalog"), n_items=160, n_users=120, audio_seconds=1.5, seed=3)


@pytest.fixture(scope="session")
def movielens() -> Path:
    path = SHARED_DATA / "movielens-100k"
    if not (path / "interactions.csv").is_file():
        pytest.skip(f"needs the shared MovieLens data at {path} (absent in a fresh clone)")
    return path
