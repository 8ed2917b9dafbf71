"""API: typed dependencies (runtime, API keys) that tests override."""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import Depends, HTTPException, Request

from indexer.collections import pin_aliases
from thaw.runtime import Runtime


def get_runtime(request: Request) -> Runtime:
    rt: Runtime = request.app.state.runtime
    return rt


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


def require_api_key(request: Request) -> None:
    """When keys are configured, every endpoint but /health needs one (X-API-Key or Authorization: Bearer)."""
    keys: list[str] = request.app.state.api_keys
    if not keys:
        return
    given = request.headers.get("x-api-key") or ""
    auth = request.headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        given = auth[7:].strip()
    if not any(secrets.compare_digest(given.encode(), k.encode()) for k in keys):
        raise HTTPException(401, "missing or invalid API key: send X-API-Key or Authorization: Bearer <key>")


async def read_one_version() -> None:
    """Each request reads the version served when it first touches the index, to its end (async, so the pin is
    set in the request's own context, which FastAPI copies into the worker thread of a sync endpoint)."""
    pin_aliases()
