"""The one settings class. Only entry points (CLI, API factory, Celery app) read it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

from pydantic import field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

MIN_KEY_CHARS = 16
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


class Settings(BaseSettings):
    """Every knob Thaw has, read from THAW_* environment variables.

    The embedded default needs no server: Qdrant on disk under `data_dir`, a filesystem Celery transport
    and SQLite. Setting `qdrant_url` and `broker_url` switches to servers with no other change.
    """

    model_config = SettingsConfigDict(env_prefix="THAW_", env_file=".env", extra="ignore")

    data_dir: Path = Path(".thaw")
    qdrant_url: str | None = None
    qdrant_api_key: str | None = None
    broker_url: str | None = None
    database_url: str | None = None
    media_root: Path | None = None
    model_dir: Path | None = None
    api_keys: Annotated[list[str], NoDecode] = []  # THAW_API_KEYS=k1,k2 (comma-separated; list both to rotate)
    max_upload_bytes: int = 20 * 1024 * 1024
    max_audio_seconds: float = 600.0
    max_image_pixels: int = 40_000_000
    task_max_retries: int = 5
    embed_batch_size: int = 64  # upload jobs one worker task encodes together at most (those waiting; it never waits)
    broker_visibility_timeout: int = 600  # seconds a taken task may run before the broker hands it to another worker
    job_resend_seconds: float = 300.0  # an embedding job running, or waiting while workers idle, this long is re-sent
    job_max_dispatches: int = 5  # an embedding job sent this often without finishing fails with the reason
    environment: str = "development"
    reembed_chunk_size: int = 32  # items per re-embedding task
    reembed_max_failed_share: float = 0.01  # a job whose failed items exceed this share does not switch versions
    reembed_stall_seconds: float = 300.0  # a job with no progress for this long has its pending chunks re-sent
    keep_versions: int = 3  # versions whose collections are kept after a switch (serving, target, previous always)
    log_level: str = "INFO"  # DEBUG, INFO, WARNING, ERROR or CRITICAL
    log_json: bool = False  # one JSON object per log line (for log shippers) instead of plain text
    worker_metrics_port: int | None = None  # a `celery worker` process serves its encode seconds here (Prometheus)

    @field_validator("api_keys", mode="before")
    @classmethod
    def _split_keys(cls, value: object) -> object:
        """A comma-separated string (the environment's form) or a list; every key must be real: an empty or short
        key would let anyone in."""
        keys = value
        if isinstance(value, str):
            text = value.strip()
            keys = json.loads(text) if text.startswith("[") else [k.strip() for k in text.split(",")] if text else []
        if isinstance(keys, list):
            for key in keys:
                if not isinstance(key, str) or len(key) < MIN_KEY_CHARS:
                    shown = f"{len(key)} characters" if isinstance(key, str) else type(key).__name__
                    raise ValueError(
                        f"THAW_API_KEYS must be comma-separated keys of at least {MIN_KEY_CHARS} characters each "
                        f"(no empty entries); one key has {shown}"
                    )
        return keys

    @model_validator(mode="after")
    def _check(self) -> Settings:
        if self.max_upload_bytes <= 0:
            raise ValueError(f"THAW_MAX_UPLOAD_BYTES must be positive, got {self.max_upload_bytes}")
        if self.embed_batch_size < 1:
            raise ValueError(f"THAW_EMBED_BATCH_SIZE must be at least 1, got {self.embed_batch_size}")
        if self.reembed_chunk_size < 1:
            raise ValueError(f"THAW_REEMBED_CHUNK_SIZE must be at least 1, got {self.reembed_chunk_size}")
        if not 0.0 <= self.reembed_max_failed_share <= 1.0:
            raise ValueError(f"THAW_REEMBED_MAX_FAILED_SHARE must be in [0, 1], got {self.reembed_max_failed_share}")
        if self.reembed_stall_seconds <= 0:
            raise ValueError(f"THAW_REEMBED_STALL_SECONDS must be positive, got {self.reembed_stall_seconds}")
        if self.broker_visibility_timeout < 1 or self.job_resend_seconds <= 0 or self.job_max_dispatches < 1:
            raise ValueError(
                "THAW_BROKER_VISIBILITY_TIMEOUT, THAW_JOB_RESEND_SECONDS and THAW_JOB_MAX_DISPATCHES must be positive"
            )
        self.log_level = self.log_level.upper()
        if self.log_level not in LOG_LEVELS:
            raise ValueError(f"THAW_LOG_LEVEL must be one of {', '.join(LOG_LEVELS)}, got {self.log_level!r}")
        if self.keep_versions < 1:
            raise ValueError(f"THAW_KEEP_VERSIONS must be at least 1, got {self.keep_versions}")
        if self.environment != "development" and not self.api_keys:
            raise ValueError("THAW_API_KEYS must be set outside development (THAW_ENVIRONMENT)")
        return self

    @property
    def qdrant_path(self) -> Path:
        return self.data_dir / "qdrant"

    @property
    def media_dir(self) -> Path:
        return self.media_root or self.data_dir / "media"

    @property
    def models_dir(self) -> Path:
        return self.model_dir or self.data_dir / "models"

    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.data_dir / 'services.db').resolve()}"

    @property
    def embedded_broker(self) -> bool:
        return self.broker_url is None

    @property
    def celery_broker(self) -> str:
        return self.broker_url or "filesystem://localhost//"  # the host is ignored; naming one keeps kombu quiet

    @property
    def broker_dir(self) -> Path:
        return self.data_dir / "broker"
