"""Entry points: the Celery worker module — `celery -A entrypoints.worker worker` runs a worker process whose tasks
build their runtime from settings on first use, logging as the settings say."""

from __future__ import annotations

from typing import Any

from celery import signals

from entrypoints.logs import configure_logging
from entrypoints.runtime import build_celery, build_runtime
from thaw.settings import Settings
from workers import tasks

_settings = Settings()
configure_logging(_settings.log_level, _settings.log_json)


@signals.setup_logging.connect
def _keep_logging(**_: Any) -> None:
    """Celery leaves logging as THAW_LOG_LEVEL and THAW_LOG_JSON set it (its `-l` option is not used)."""


app = build_celery(_settings)
tasks.provide_runtime(factory=lambda: build_runtime(_settings))
