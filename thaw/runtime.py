"""Composition root: builds the index, media store, database and model handle that API and workers share."""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine

from indexer.collections import Index, activate, active_collection_version
from thaw.db import make_engine
from thaw.settings import Settings
from workers.media import MediaStore

if TYPE_CHECKING:
    from encoders.artifacts import ThawModel


class ModelNotReadyError(RuntimeError):
    """No trained model is active yet."""


@dataclass
class Runtime:
    index: Index
    store: MediaStore
    engine: Engine
    models_dir: Path
    max_upload_bytes: int = 20 * 1024 * 1024
    max_audio_seconds: float = 600.0
    max_image_pixels: int = 40_000_000
    _models: dict[str, ThawModel] = field(default_factory=dict, repr=False)  # the two most recently used
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @classmethod
    def from_settings(cls, settings: Settings) -> Runtime:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        if settings.qdrant_url:
            index = Index(url=settings.qdrant_url, api_key=settings.qdrant_api_key)
        else:
            index = Index(path=settings.qdrant_path, shared=settings.shared_qdrant_path)
        return cls(
            index=index,
            store=MediaStore(settings.media_dir),
            engine=make_engine(settings.db_url),
            models_dir=settings.models_dir,
            max_upload_bytes=settings.max_upload_bytes,
            max_audio_seconds=settings.max_audio_seconds,
            max_image_pixels=settings.max_image_pixels,
        )

    def active_version(self) -> str:
        """The served version: where the `items` alias points (the serving truth; pinned within an API request);
        before anything is indexed, the models directory's ACTIVE pointer."""
        from encoders.artifacts import active_version

        version = active_collection_version(self.index) or active_version(self.models_dir)
        if version is None:
            raise ModelNotReadyError(f"no active model under {self.models_dir}: run `thaw train` first")
        return version

    def activate(self, version: str) -> str | None:
        """Serve `version`: one atomic swap of the `items`/`users` aliases, then the ACTIVE pointer follows.
        Returns the version served before. IndexError_ if the version has no collections."""
        from encoders.artifacts import list_versions, set_active

        if version not in list_versions(self.models_dir):
            raise ModelNotReadyError(f"model version {version!r} not found under {self.models_dir}")
        previous = active_collection_version(self.index)
        activate(self.index, version)
        set_active(self.models_dir, version)
        return previous

    def model_config(self) -> dict[str, Any]:
        """The active model's config.json (cheap: no weights are loaded)."""
        version = self.active_version()
        config: dict[str, Any] = json.loads((self.models_dir / version / "config.json").read_text())
        config.setdefault("version", version)
        return config

    def model(self, version: str | None = None) -> ThawModel:
        """The loaded model of `version` (default: the served one). The two most recently used versions stay
        loaded: while a re-embedding job runs, uploads are encoded with both the served and the target version."""
        from encoders.artifacts import ThawModel

        wanted = version or self.active_version()
        with self._lock:
            model = self._models.pop(wanted, None)
            if model is None:
                if not (self.models_dir / wanted).is_dir():
                    raise ModelNotReadyError(f"model version {wanted!r} not found under {self.models_dir}")
                model = ThawModel.load(self.models_dir / wanted)
            self._models[wanted] = model
            while len(self._models) > 2:
                self._models.pop(next(iter(self._models)))
            return model

    def close(self) -> None:
        self.index.close()
        self.engine.dispose()
