"""API: each error kind mapped to its HTTP status, once. The body is always {"detail": ...}: a message, or for a
request that fails validation the list of issues (location, message, type), without the input it echoed."""

from __future__ import annotations

import json
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
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


class SafeJSONResponse(JSONResponse):
    """JSON that always encodes: non-ASCII escaped (a lone surrogate too), anything unknown as its text."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=True, allow_nan=False, default=str).encode("ascii")


def issues(errors: Any) -> list[dict[str, Any]]:
    """Pydantic's errors as plain data: location, message and type only (the input may be huge, NaN or binary)."""
    return [
        {
            "loc": [p if isinstance(p, int) else str(p) for p in e.get("loc", ())],
            "msg": str(e["msg"]),
            "type": e["type"],
        }
        for e in errors
    ]


def install(app: FastAPI) -> None:
    @app.exception_handler(ThawError)
    async def _thaw_error(_: Request, exc: ThawError) -> JSONResponse:
        return SafeJSONResponse({"detail": str(exc)}, status_code=status_of(exc))

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        return SafeJSONResponse({"detail": issues(exc.errors())}, status_code=422)
