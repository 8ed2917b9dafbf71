"""Entry points: the Celery worker module — `celery -A entrypoints.worker worker` runs a worker process whose tasks
build their runtime from settings on first use."""

from __future__ import annotations

from entrypoints.runtime import build_celery, build_runtime
from thaw.settings import Settings
from workers import tasks

_settings = Settings()
app = build_celery(_settings)
tasks.provide_runtime(factory=lambda: build_runtime(_settings))
