"""Composition root: builds the index, media store, database and model handle that API and workers share."""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine

from indexer.collections import Index
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
    _model: ThawModel | None = field(default=None, repr=False)
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
        from encoders.artifacts import active_version

        version = active_version(self.models_dir)
        if version is None:
            raise ModelNotReadyError(f"no active model under {self.models_dir}: run `thaw train` first")
        return version

    def model_config(self) -> dict[str, Any]:
        """The active model's config.json (cheap: no weights are loaded)."""
        version = self.active_version()
        config: dict[str, Any] = json.loads((self.models_dir / version / "config.json").read_text())
        config.setdefault("version", version)
        return config

    def model(self, version: str | None = None) -> ThawModel:
        """The loaded model of `version` (default: the active one), cached until another version is asked for."""
        from encoders.artifacts import ThawModel

        wanted = version or self.active_version()
        with self._lock:
            if self._model is None or self._model.version != wanted:
                if not (self.models_dir / wanted).is_dir():
                    raise ModelNotReadyError(f"model version {wanted!r} not found under {self.models_dir}")
                self._model = ThawModel.load(self.models_dir / wanted)
            return self._model

    def close(self) -> None:
        self.index.close()
        self.engine.dispose()
