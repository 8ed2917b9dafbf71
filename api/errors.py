"""API: each error kind mapped to its HTTP status, once; the body is always {"detail": message}."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from thaw.errors import (
    ConflictError,
    InvalidInputError,
    NotFoundError,
    ThawError,
    TooLargeError,
    UnavailableError,
    UnsupportedMediaError,
)

STATUS: tuple[tuple[type[ThawError], int], ...] = (  # most specific first
    (UnsupportedMediaError, 415),
    (TooLargeError, 413),
    (InvalidInputError, 422),
    (NotFoundError, 404),
    (ConflictError, 409),
    (UnavailableError, 503),
)


def status_of(exc: ThawError) -> int:
    return next((code for kind, code in STATUS if isinstance(exc, kind)), 400)


def install(app: FastAPI) -> None:
    @app.exception_handler(ThawError)
    async def _thaw_error(_: Request, exc: ThawError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=status_of(exc))
