"""API: model versions — which are trained and indexed and which is served; activation (rollback)."""

from __future__ import annotations

from fastapi import APIRouter

from api.deps import DispatcherDep, ReembedDefaultsDep, RuntimeDep
from api.schemas import Activated, ModelVersionPublic, ModelVersions
from services import models

router = APIRouter(tags=["models"])


@router.get("/models", response_model=ModelVersions)
def list_models(rt: RuntimeDep) -> ModelVersions:
    served, running, found = models.versions(rt)
    versions = [
        ModelVersionPublic(
            version=v.config.version,
            dim=v.config.dim,
            embedding_dims=v.config.embedding_dims,
            indexed=v.indexed,
            items=v.items,
            served=v.served,
            trained_at=v.config.created_at,
            alpha=v.config.alpha,
            data={"items": len(v.config.train_items), "users": v.config.train_users, "interactions": v.interactions},
            validation=v.validation,
        )
        for v in found
    ]
    return ModelVersions(served=served, running_job=running, versions=versions)


@router.post("/models/{version}/activate", response_model=Activated)
def activate_model(version: str, rt: RuntimeDep, dispatcher: DispatcherDep, defaults: ReembedDefaultsDep) -> Activated:
    """Serve a kept version at once (rollback): one atomic swap of the `items`/`users` aliases. A version receives
    no writes while it is not served, so a catch-up job then re-embeds into it, in place, the items uploaded or
    changed since."""
    previous, catch_up = models.activate(rt, dispatcher, defaults, version)
    return Activated(served=version, previous=previous, catch_up_job=catch_up)
