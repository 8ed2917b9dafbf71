"""API: the FastAPI application over a runtime and a dispatcher (the entry point builds both from settings, and
says what runs beside the app while it serves: the embedded worker, the job sweeps)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractContextManager, ExitStack, asynccontextmanager

from fastapi import Depends, FastAPI, Request, Response
from prometheus_client import CollectorRegistry, Counter, Histogram

from api import errors
from api.deps import read_one_version, require_api_key
from api.routes import experiments, health, items, jobs, models, users
from services.dispatch import Dispatcher
from services.jobs import ReembedDefaults
from services.runtime import Runtime

Background = Callable[[], AbstractContextManager[object]]


def build_app(
    runtime: Runtime,
    dispatcher: Dispatcher,
    *,
    api_keys: Sequence[str] = (),
    reembed_defaults: ReembedDefaults | None = None,
    background: Sequence[Background] = (),
) -> FastAPI:
    """The API. Each of `background` is entered when the app starts and left when it stops; the runtime is closed
    last."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        with ExitStack() as stack:
            stack.callback(runtime.close)
            for start in background:
                stack.enter_context(start())
            yield

    app = FastAPI(
        title="Thaw", version="0.1.0", lifespan=lifespan, description="Cold-start recommendation from content"
    )
    app.state.runtime, app.state.dispatcher, app.state.api_keys = runtime, dispatcher, list(api_keys)
    app.state.reembed_defaults = reembed_defaults or ReembedDefaults()
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

    errors.install(app)
    app.include_router(health.router)
    secured = [Depends(require_api_key), Depends(read_one_version)]
    routers = (items.router, jobs.router, models.router, users.router, experiments.router, health.metrics_router)
    for router in routers:
        app.include_router(router, dependencies=secured)
    return app
