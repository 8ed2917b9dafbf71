"""API: liveness and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from api.deps import RuntimeDep
from indexer.collections import active_collection_version

router = APIRouter(tags=["ops"])
metrics_router = APIRouter(tags=["ops"])


@router.get("/health")
def health(rt: RuntimeDep) -> dict[str, object]:
    """Liveness, and the served model version (None before the first `thaw train`)."""
    return {"status": "ok", "model_version": active_collection_version(rt.index)}


@metrics_router.get("/metrics")
def metrics(request: Request) -> Response:
    return Response(generate_latest(request.app.state.metrics_registry), media_type=CONTENT_TYPE_LATEST)
