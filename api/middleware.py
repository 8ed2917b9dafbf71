"""API: pure ASGI middleware — the API-key check and the body limit, both before any byte of the body is read, and
the request metrics with bounded labels."""

from __future__ import annotations

import hmac
import json
import time
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from starlette.exceptions import HTTPException

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

KEY_HELP = "missing or invalid API key: send X-API-Key: <key> or Authorization: Bearer <key>"
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return bytes(value).decode("latin-1")
    return None


def given_key(scope: Scope) -> str | None:
    """The key a request sends, from X-API-Key or Authorization: Bearer; None when it sends none or two that differ
    (a right key must not make a wrong one pass)."""
    sent = _header(scope, b"x-api-key")
    auth = _header(scope, b"authorization")
    bearer = auth[7:].strip() if auth is not None and auth[:7].lower() == "bearer " else None
    if sent is not None and bearer is not None and not hmac.compare_digest(sent.encode(), bearer.encode()):
        return None
    return sent if sent is not None else bearer


def key_matches(given: str | None, keys: Sequence[str]) -> bool:
    """Constant time in the key: every configured key is compared, whichever matches."""
    if given is None:
        return False
    found = False
    for key in keys:
        found |= hmac.compare_digest(given.encode(), key.encode())
    return found


async def _reply(send: Send, status: int, detail: str, headers: Sequence[tuple[bytes, bytes]] = ()) -> None:
    body = json.dumps({"detail": detail}).encode()
    head = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *headers]
    await send({"type": "http.response.start", "status": status, "headers": head})
    await send({"type": "http.response.body", "body": body})


class Guard:
    """Every path but the public ones needs one of `keys` (when any is configured), checked from the headers before
    the body is read; then the body may not exceed `body_limit(scope)` bytes, counted as they arrive (a declared
    Content-Length over it is refused at once; a chunked body fails the read that crosses it)."""

    def __init__(
        self, app: ASGIApp, *, keys: Sequence[str], public: Sequence[str], body_limit: Callable[[Scope], int]
    ) -> None:
        self.app, self.keys, self.public, self.body_limit = app, list(keys), frozenset(public), body_limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.keys and scope["path"] not in self.public and not key_matches(given_key(scope), self.keys):
            await _reply(send, 401, KEY_HELP, [(b"www-authenticate", b'Bearer realm="thaw"')])
            return
        limit = self.body_limit(scope)
        declared = _header(scope, b"content-length")
        if declared is not None and declared.strip().isdigit() and int(declared) > limit:
            await _reply(send, 413, f"request body of {declared.strip()} bytes exceeds the {limit}-byte limit")
            return
        read = 0

        async def counted() -> Message:
            nonlocal read
            message = await receive()
            if message["type"] == "http.request":
                read += len(message.get("body", b""))
                if read > limit:
                    raise HTTPException(413, f"request body exceeds the {limit}-byte limit")
            return message

        await self.app(scope, counted, send)


class Metrics:
    """Requests counted and timed by method (known methods only, others as OTHER) and route template (the matched
    route's path, or "unmatched"): the label sets are bounded whatever clients send."""

    def __init__(self, app: ASGIApp, registry: CollectorRegistry) -> None:
        self.app = app
        self.requests = Counter(
            "thaw_http_requests_total", "HTTP requests", ["method", "route", "status"], registry=registry
        )
        self.latency = Histogram("thaw_http_request_seconds", "HTTP request latency", ["route"], registry=registry)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start, status = time.perf_counter(), 500

        async def observed(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, observed)
        finally:
            route = str(getattr(scope.get("route"), "path", "unmatched"))
            method = scope["method"] if scope["method"] in METHODS else "OTHER"
            self.requests.labels(method, route, str(status)).inc()
            self.latency.labels(route).observe(time.perf_counter() - start)
