"""Services: the runtime — the handles every service works with (index, media store, database, model registry and
the loaded models), built once by the entry point from settings."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from indexer.collections import ITEMS, USERS, Index, activate, active_collection_version, collection_name, has_version
from services.media_store import MediaStore
from thaw.errors import ConflictError, UnavailableError
from thaw.registry import ModelConfig, Registry

if TYPE_CHECKING:
    from encoders.artifacts import ThawModel


class ModelNotReadyError(UnavailableError):
    """No model version is served yet."""


class VersionNotIndexedError(ConflictError):
    """A trained model version whose collections do not exist (never indexed, or removed by retention)."""


@dataclass(frozen=True)
class Limits:
    max_upload_bytes: int = 20 * 1024 * 1024
    max_audio_seconds: float = 600.0
    max_image_pixels: int = 40_000_000


@dataclass(frozen=True)
class ModelView:
    """One model version as serving sees it: its collections (the aliases, for the served version), its config and
    the Gram matrices its fold-ins use."""

    version: str
    items: str
    users: str
    config: ModelConfig
    user_gram: np.ndarray
    item_gram: np.ndarray

    @property
    def served(self) -> bool:
        return self.items == ITEMS


@dataclass
class Runtime:
    index: Index
    store: MediaStore
    engine: Engine
    registry: Registry
    limits: Limits = field(default_factory=Limits)
    _models: dict[str, ThawModel] = field(default_factory=dict, repr=False)  # the two most recently used
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @contextmanager
    def session(self) -> Iterator[Session]:
        with Session(self.engine) as session:
            yield session

    def active_version(self) -> str:
        """The served version: where the `items` alias points (the serving truth; pinned within an API request)."""
        version = active_collection_version(self.index)
        if version is None:
            raise ModelNotReadyError("no model is served yet: run `thaw train` first")
        return version

    def view(self, version: str | None = None) -> ModelView:
        """The served version (ModelNotReadyError without one), or `version`, which must be trained
        (UnknownVersionError) and indexed (VersionNotIndexedError)."""
        active = self.active_version()
        if version is None or version == active:
            name, items, users = active, ITEMS, USERS
        else:
            self.registry.path(version)
            items, users = collection_name(ITEMS, version), collection_name(USERS, version)
            if not has_version(self.index, version):
                raise VersionNotIndexedError(
                    f"model version {version!r} has no indexed collections {items}, {users}: re-embed the catalogue "
                    f'with it first (POST /jobs/reembed {{"model_version": "{version}"}})'
                )
            name = version
        user_gram, item_gram = self.registry.grams(name)
        return ModelView(name, items, users, self.registry.config(name), user_gram, item_gram)

    def activate(self, version: str) -> str | None:
        """Serve `version`: one atomic swap of the `items`/`users` aliases. Returns the version served before.
        UnknownVersionError if it is not trained, IndexError_ if it has no collections."""
        self.registry.path(version)
        previous = active_collection_version(self.index)
        activate(self.index, version)
        return previous

    def model(self, version: str | None = None) -> ThawModel:
        """The loaded model of `version` (default: the served one). The two most recently used versions stay
        loaded: while a re-embedding job runs, uploads are encoded with both the served and the target version."""
        from encoders.artifacts import ThawModel

        wanted = version or self.active_version()
        with self._lock:
            model = self._models.pop(wanted, None)
            if model is None:
                model = ThawModel.load(self.registry.path(wanted))
            self._models[wanted] = model
            while len(self._models) > 2:
                self._models.pop(next(iter(self._models)))
            return model

    def close(self) -> None:
        self.index.close()
        self.engine.dispose()
