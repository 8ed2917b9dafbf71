"""API: typed dependencies (runtime, database session, dispatcher) that tests override."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session

from indexer.collections import pin_aliases
from services.dispatch import Dispatcher
from services.jobs import ReembedDefaults
from services.runtime import Runtime


def get_runtime(request: Request) -> Runtime:
    rt: Runtime = request.app.state.runtime
    return rt


def get_session(rt: Annotated[Runtime, Depends(get_runtime)]) -> Iterator[Session]:
    with rt.session() as session:
        yield session


def get_dispatcher(request: Request) -> Dispatcher:
    dispatcher: Dispatcher = request.app.state.dispatcher
    return dispatcher


def get_reembed_defaults(request: Request) -> ReembedDefaults:
    defaults: ReembedDefaults = request.app.state.reembed_defaults
    return defaults


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]
SessionDep = Annotated[Session, Depends(get_session)]
DispatcherDep = Annotated[Dispatcher, Depends(get_dispatcher)]
ReembedDefaultsDep = Annotated[ReembedDefaults, Depends(get_reembed_defaults)]


async def read_one_version() -> None:
    """Each request reads the version served when it first touches the index, to its end (async, so the pin is
    set in the request's own context, which FastAPI copies into the worker thread of a sync endpoint)."""
    pin_aliases()


def require_model(request: Request, rt: Annotated[Runtime, Depends(get_runtime)]) -> None:
    """Routes that read or write the served model's index answer 503 "no model yet" until a version is served. Once
    one is, some version stays served (the alias is only ever swapped, and retention keeps the served version), so
    the index is not read again for this check (in shared embedded storage every read opens the storage)."""
    if getattr(request.app.state, "model_served", False):
        return
    rt.active_version()  # ModelNotReadyError
    request.app.state.model_served = True
