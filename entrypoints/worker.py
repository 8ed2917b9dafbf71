"""Entry points: the Celery worker module — `celery -A entrypoints.worker worker` runs a worker process whose tasks
build their runtime from settings on first use, logging as the settings say, and serving its own metrics on
THAW_WORKER_METRICS_PORT when set."""

from __future__ import annotations

import logging
from typing import Any

from celery import signals
from prometheus_client import CollectorRegistry, start_http_server

from entrypoints.logs import configure_logging
from entrypoints.runtime import build_celery, build_runtime
from services import embedding
from thaw.settings import Settings
from workers import tasks

log = logging.getLogger(__name__)
_settings = Settings()
configure_logging(_settings.log_level, _settings.log_json)


@signals.setup_logging.connect
def _keep_logging(**_: Any) -> None:
    """Celery leaves logging as THAW_LOG_LEVEL and THAW_LOG_JSON set it (its `-l` option is not used)."""


@signals.worker_ready.connect
def _serve_metrics(**_: Any) -> None:
    """With THAW_WORKER_METRICS_PORT, the worker serves what it observes itself (the encode seconds per modality) for
    Prometheus; the jobs' counts are the API's, from the database. Tasks run in this process (the solo pool)."""
    if _settings.worker_metrics_port is not None:
        registry = CollectorRegistry()
        registry.register(embedding.ENCODE_SECONDS)
        start_http_server(_settings.worker_metrics_port, registry=registry)


@signals.worker_ready.connect
def _warm_up(**_: Any) -> None:
    """The worker loads the served model and its backbones before it takes a message, so that its first batch does
    not wait for them (several seconds); without a served model yet, the first batch loads it."""
    try:
        version = embedding.warm_up(tasks.runtime())
    except Exception as exc:  # no model served yet, the index's owner not up: nothing to warm
        log.warning("encoders not warmed up at start (%s: %s): the first batch loads them", type(exc).__name__, exc)
    else:
        log.info("encoders of model %s warmed up", version)


app = build_celery(_settings)
tasks.provide_runtime(factory=lambda: build_runtime(_settings))
