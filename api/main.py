"""API: the FastAPI application factory (lifespan builds the runtime; embedded mode runs a worker in-process)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CollectorRegistry, Counter, Histogram
from sqlalchemy.orm import Session

from api.deps import read_one_version, require_api_key
from api.routes import experiments, health, items, jobs, models, users
from indexer.collections import IndexError_
from indexer.search import NotIndexedError
from thaw.db import Job, running_reembeds
from thaw.runtime import ModelNotReadyError, Runtime
from thaw.settings import Settings
from workers import reembed
from workers.app import make_celery, start_embedded_worker

log = logging.getLogger(__name__)


def _resend_unfinished(rt: Runtime, celery: object) -> int:
    """Jobs recorded but not finished when the last process stopped are sent again (tasks are idempotent)."""
    with Session(rt.engine) as session:
        pending = session.query(Job).filter(Job.kind == "embed", Job.status.in_(("queued", "running"))).all()
        for job in pending:
            celery.send_task("thaw.embed_item", args=[job.item_id, job.job_id])  # type: ignore[attr-defined]
        reembeds = [job_id for job_id, _ in running_reembeds(session)]
    for job_id in reembeds:
        try:
            jobs.send_chunks(celery, job_id, reembed.resume(rt, job_id))
        except reembed.JobConflictError as exc:
            log.warning("%s", exc)
    return len(pending) + len(reembeds)


def _supervise_reembeds(rt: Runtime, celery: object, stall_seconds: float, stop: threading.Event) -> None:
    """Re-send the pending chunks of re-embedding jobs that show no progress for `stall_seconds` (messages lost
    with a broker restart, or held by a dead worker until the visibility timeout). Duplicates are harmless: a
    chunk only embeds items the database still records as pending."""
    while not stop.wait(max(1.0, stall_seconds / 4)):
        try:
            for job_id in reembed.stalled_jobs(rt, stall_seconds):
                try:
                    chunks = reembed.resume(rt, job_id)
                except reembed.JobConflictError as exc:  # finished meanwhile, or failed as unresumable
                    log.warning("%s", exc)
                    continue
                jobs.send_chunks(celery, job_id, chunks)
                log.warning(
                    "re-embedding job %s made no progress for %ss: re-sent %d chunks",
                    job_id,
                    stall_seconds,
                    len(chunks),
                )
        except Exception:  # the broker or database may be down for a while; try again on the next tick
            log.exception("re-embedding supervisor tick failed")


def create_app(settings: Settings | None = None, runtime: Runtime | None = None) -> FastAPI:
    settings = settings or Settings()
    rt = runtime or Runtime.from_settings(settings)
    celery = make_celery(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        worker = None
        if settings.embedded_broker:
            from workers.tasks import set_runtime

            set_runtime(rt)
            _, worker = start_embedded_worker(celery)
            resent = _resend_unfinished(rt, celery)
            if resent:
                log.info("re-sent %d unfinished jobs", resent)
        stop = threading.Event()
        supervisor = threading.Thread(
            target=_supervise_reembeds,
            args=(rt, celery, settings.reembed_stall_seconds, stop),
            name="thaw-reembed-supervisor",
            daemon=True,
        )
        supervisor.start()
        yield
        stop.set()
        supervisor.join(timeout=30)
        if worker is not None:
            worker.stop()  # type: ignore[attr-defined]
        rt.close()

    app = FastAPI(
        title="Thaw", version="0.1.0", lifespan=lifespan, description="Cold-start recommendation from content"
    )
    app.state.runtime, app.state.celery, app.state.api_keys = rt, celery, settings.api_keys
    app.state.settings = settings
    registry = CollectorRegistry()
    app.state.metrics_registry = registry
    requests = Counter("thaw_http_requests_total", "HTTP requests", ["method", "route", "status"], registry=registry)
    latency = Histogram("thaw_http_request_seconds", "HTTP request latency", ["route"], registry=registry)

    @app.middleware("http")
    async def observe(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        start = time.perf_counter()
        response = await call_next(request)
        route = getattr(request.scope.get("route"), "path", "unmatched")
        requests.labels(request.method, route, str(response.status_code)).inc()
        latency.labels(route).observe(time.perf_counter() - start)
        return response

    @app.exception_handler(ModelNotReadyError)
    async def _no_model(_: Request, exc: ModelNotReadyError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=503)

    @app.exception_handler(NotIndexedError)
    async def _not_indexed(_: Request, exc: NotIndexedError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=404)

    @app.exception_handler(IndexError_)
    async def _no_index(_: Request, exc: IndexError_) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=503)

    app.include_router(health.router)
    secured = [Depends(require_api_key), Depends(read_one_version)]
    routers = (items.router, jobs.router, models.router, users.router, experiments.router, health.metrics_router)
    for router in routers:
        app.include_router(router, dependencies=secured)
    return app
