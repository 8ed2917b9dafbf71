"""Test helpers: loopback ports, and uploading a dataset item over HTTP."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import numpy as np


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 60) -> None:
    """Wait until something listens on the loopback port."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise TimeoutError(f"nothing listens on port {port}")


def plant_version(
    models_dir: Path,
    version: str,
    *,
    dim: int,
    embedding_dims: dict[str, int],
    alpha: float = 1.0,
    modalities: list[str] | None = None,
) -> None:
    """A trained version's config and factor Gram matrices, without a network: for tests that plant vectors in the
    index directly and serve them."""
    from safetensors.numpy import save_file

    from thaw.registry import FACTORS, ModelConfig

    config = ModelConfig(
        version=version,
        dim=dim,
        embedding_dims=embedding_dims,
        modalities=sorted(embedding_dims) if modalities is None else modalities,
        alpha=alpha,
        als_reg=0.05,
        als_alpha=10.0,
        cf_shrinkage=10.0,
        net={},
        backbones={},
        training={},
        train_items=[],
        train_users=0,
    )
    config.write(models_dir / version)
    zeros = np.zeros((dim, dim))
    empty = np.zeros((0, dim), np.float32)
    save_file({"users": empty, "items": empty, "user_gram": zeros, "item_gram": zeros}, models_dir / version / FACTORS)
