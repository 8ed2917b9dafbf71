"""API: the FastAPI application over a runtime and a dispatcher (the entry point builds both from settings, and
says what runs beside the app while it serves: the embedded worker, the job sweeps)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractContextManager, ExitStack, asynccontextmanager

from fastapi import Depends, FastAPI
from prometheus_client import CollectorRegistry

from api import errors, metrics
from api.deps import read_one_version
from api.middleware import Guard, Metrics, Scope
from api.routes import experiments, health, items, jobs, models, users
from api.schemas import ERROR_RESPONSES, MAX_BODY_BYTES, MAX_METADATA_BYTES
from services.dispatch import Dispatcher
from services.jobs import ReembedDefaults
from services.runtime import Runtime

Background = Callable[[], AbstractContextManager[object]]


def build_app(
    runtime: Runtime,
    dispatcher: Dispatcher,
    *,
    api_keys: Sequence[str] = (),
    public_docs: bool = True,
    reembed_defaults: ReembedDefaults | None = None,
    background: Sequence[Background] = (),
) -> FastAPI:
    """The API. With `api_keys`, every path but /health (and the docs, when `public_docs`) needs one. Each of
    `background` is entered when the app starts and left when it stops; the runtime is closed last."""

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
    app.state.runtime, app.state.dispatcher = runtime, dispatcher
    app.state.reembed_defaults = reembed_defaults or ReembedDefaults()
    registry = CollectorRegistry()
    app.state.metrics_registry = registry
    metrics.register(registry, runtime)
    upload_limit = 2 * runtime.limits.max_upload_bytes + MAX_METADATA_BYTES + 64 * 1024  # two files, metadata, framing

    def body_limit(scope: Scope) -> int:
        """Uploads may carry two files; a JSON item only its metadata; any other body MAX_BODY_BYTES."""
        if scope["path"] != "/items":
            return MAX_BODY_BYTES
        ctype = next((bytes(v) for k, v in scope["headers"] if k.lower() == b"content-type"), b"")
        return upload_limit if ctype.startswith(b"multipart/") else MAX_METADATA_BYTES + 64 * 1024

    docs = [p for p in (app.docs_url, app.redoc_url, app.openapi_url, app.swagger_ui_oauth2_redirect_url) if p]
    public = ["/health", *(docs if public_docs else [])]
    app.add_middleware(Guard, keys=list(api_keys), public=public, body_limit=body_limit)
    app.add_middleware(Metrics, registry=registry)  # outermost: sees the 401s and 413s
    errors.install(app)
    app.include_router(health.router)
    secured = [Depends(read_one_version)]
    routers = (items.router, jobs.router, models.router, users.router, experiments.router, health.metrics_router)
    for router in routers:
        app.include_router(router, dependencies=secured, responses=ERROR_RESPONSES)
    return app
