"""API: model versions — which are indexed and which is served; activation (rollback) by an atomic alias swap."""

from __future__ import annotations

import json
import logging

from fastapi import APIRouter, HTTPException, Request
from sqlalchemy.orm import Session

from api.deps import RuntimeDep
from api.routes import jobs
from api.schemas import Activated, ModelVersionPublic, ModelVersions
from indexer.collections import ITEMS, active_collection_version, collection_name, indexed_versions
from thaw.db import running_reembeds
from workers import reembed

router = APIRouter(tags=["models"])
log = logging.getLogger(__name__)


@router.get("/models", response_model=ModelVersions)
def list_models(rt: RuntimeDep) -> ModelVersions:
    from encoders.artifacts import active_version, list_versions

    served = active_collection_version(rt.index)
    indexed = set(indexed_versions(rt.index))
    counts: dict[str, int] = {}
    with rt.index.session() as client:
        for version in indexed:
            counts[version] = client.count(collection_name(ITEMS, version), exact=True).count
    versions = []
    for version in list_versions(rt.models_dir):
        config = json.loads((rt.models_dir / version / "config.json").read_text())
        versions.append(
            ModelVersionPublic(
                version=version,
                dim=config.get("dim"),
                embedding_dims=config.get("embedding_dims", {}),
                indexed=version in indexed,
                items=counts.get(version),
                served=version == served,
            )
        )
    with Session(rt.engine) as session:
        running = running_reembeds(session)
    return ModelVersions(
        served=served,
        model_pointer=active_version(rt.models_dir),
        running_job=running[0][0] if running else None,
        versions=versions,
    )


@router.post("/models/{version}/activate", response_model=Activated)
def activate_model(version: str, request: Request, rt: RuntimeDep) -> Activated:
    """Serve a kept version at once (rollback): one atomic swap of the `items`/`users` aliases; ACTIVE follows.
    A version receives no writes while it is not served, so a catch-up job then re-embeds into it, in place, the
    items uploaded or changed since (unchanged ones are skipped by their content hash)."""
    from encoders.artifacts import list_versions

    known = list_versions(rt.models_dir)
    if version not in known:
        raise HTTPException(404, f"unknown model version {version!r}; the models directory has {known}")
    if version not in indexed_versions(rt.index):
        raise HTTPException(
            409,
            f"version {version} has no collections (never indexed, or removed by keep-N retention); "
            f're-embed the catalogue with it first: POST /jobs/reembed {{"model_version": "{version}"}}',
        )
    with Session(rt.engine) as session:
        running = running_reembeds(session)
    if any(target == version for _, target in running):
        raise HTTPException(409, f"job {running[0][0]} is still re-embedding into {version}; it switches when done")
    previous = rt.activate(version)
    catch_up = None
    if previous != version and not running:
        try:
            started = jobs.start_job(request, rt, version, None)
            catch_up = started.job_id
            jobs.send_chunks(request.app.state.celery, started.job_id, started.chunks)
        except reembed.JobConflictError as exc:  # a job started in between: it dual-writes into this version
            log.warning("no catch-up job for %s: %s", version, exc)
        except Exception:  # the broker is down: the job is recorded and re-sent once it is found stalled
            log.exception("catch-up job %s recorded but not sent", catch_up)
    return Activated(served=version, previous=previous, catch_up_job=catch_up)
