"""Entry points: the composition root — the runtime, the task queue and the API built from settings, and what runs
beside the API (the embedded worker, the job sweep). `uvicorn entrypoints.runtime:create_app --factory` serves it."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from celery import Celery
from fastapi import FastAPI

from api.main import Background, build_app
from entrypoints.logs import configure_logging
from indexer.collections import Index
from services import jobs
from services.db import make_engine
from services.media_store import MediaStore
from services.runtime import Limits, Runtime
from thaw.registry import Registry
from thaw.settings import Settings
from workers import tasks
from workers.app import CeleryDispatcher, QueueConfig, make_celery, start_embedded_worker

log = logging.getLogger(__name__)


def build_runtime(settings: Settings) -> Runtime:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    if settings.qdrant_url:
        index = Index(url=settings.qdrant_url, api_key=settings.qdrant_api_key)
    else:
        index = Index(path=settings.qdrant_path)
    return Runtime(
        index=index,
        store=MediaStore(settings.media_dir),
        engine=make_engine(settings.db_url),
        registry=Registry(settings.models_dir),
        limits=Limits(settings.max_upload_bytes, settings.max_audio_seconds, settings.max_image_pixels),
    )


def build_celery(settings: Settings) -> Celery:
    return make_celery(
        QueueConfig(
            settings.broker_url,
            settings.broker_dir,
            settings.broker_visibility_timeout,
            settings.task_max_retries,
            settings.embed_batch_size,
        )
    )


def reembed_defaults(settings: Settings) -> jobs.ReembedDefaults:
    return jobs.ReembedDefaults(settings.reembed_chunk_size, settings.reembed_max_failed_share, settings.keep_versions)


def sweep_policy(settings: Settings) -> jobs.SweepPolicy:
    return jobs.SweepPolicy(settings.job_resend_seconds, settings.job_max_dispatches, settings.reembed_stall_seconds)


def create_app(settings: Settings | None = None, runtime: Runtime | None = None) -> FastAPI:
    """The API as configured. With the embedded broker a Celery worker runs in this process, on the same runtime
    (one owner of embedded storage), and unfinished jobs are sent again at start-up. In every mode the job sweep
    (the outbox) runs beside the API and sends again the jobs whose messages were lost."""
    settings = settings or Settings()
    configure_logging(settings.log_level, settings.log_json)
    rt = runtime or build_runtime(settings)
    celery = build_celery(settings)
    dispatcher = CeleryDispatcher(celery)
    policy = sweep_policy(settings)

    @contextmanager
    def embedded_worker() -> Iterator[None]:
        tasks.provide_runtime(rt)
        worker = start_embedded_worker(celery)
        resent = jobs.resend_unfinished(rt, dispatcher, policy)
        if resent:
            log.info("re-sent %d unfinished jobs", resent)
        try:
            yield
        finally:
            worker.stop()  # type: ignore[attr-defined]

    @contextmanager
    def job_sweep() -> Iterator[None]:
        stop = threading.Event()
        thread = threading.Thread(
            target=jobs.supervise, args=(rt, dispatcher, policy, stop), name="thaw-job-sweep", daemon=True
        )
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join(timeout=30)

    @contextmanager
    def open_index() -> Iterator[None]:
        rt.index.open()  # the API owns the embedded index (unless another process already does) and loads it now
        yield

    background: list[Background] = [open_index, job_sweep]
    if settings.embedded_broker:
        background.insert(0, embedded_worker)
    defaults = reembed_defaults(settings)
    return build_app(
        rt,
        dispatcher,
        api_keys=settings.api_keys,
        public_docs=settings.environment == "development",
        reembed_defaults=defaults,
        background=background,
    )
