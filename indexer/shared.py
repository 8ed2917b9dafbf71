"""Indexer: one embedded index shared by the processes of one host (the API, Celery workers, the CLI). The first
process to take `<path>/.owner.lock` opens the storage (Qdrant Edge) and answers the others on the Unix socket
`<path>/index.sock`; the others send every engine call there, so no process ever reopens the store per operation.
When the owner dies (its lock is released by the kernel), the next peer to notice takes the lock and opens the
storage; a call cut off by that is sent again (writes are idempotent: point ids derive from item ids)."""

from __future__ import annotations

import base64
import dataclasses
import fcntl
import json
import logging
import os
import socket
import socketserver
import struct
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any, TypeVar

import numpy as np

from indexer.edge import EdgeEngine, EdgeStorageError
from indexer.engine import CollectionSpec, Engine, Filter, Query, Record, Selection, VectorSpec
from thaw.errors import UnavailableError

log = logging.getLogger(__name__)

SOCKET_NAME, LOCK_NAME = "index.sock", ".owner.lock"
CALL_TIMEOUT_S = 600.0  # an optimize() of a large collection holds the owner for minutes
_TYPES: dict[str, type] = {t.__name__: t for t in (CollectionSpec, VectorSpec, Filter, Query, Record)}
# What a peer may ask of the owner: the Engine methods, nothing else.
_OPS = frozenset(
    {
        "collections",
        "create_collection",
        "delete_collection",
        "aliases",
        "set_aliases",
        "retrieve",
        "query_batch",
        "count",
        "scroll",
        "write",
        "update",
        "delete",
        "upsert",
        "optimize",
    }
)
_ERRORS: dict[str, type[Exception]] = {"EdgeStorageError": EdgeStorageError, "ValueError": ValueError}
T = TypeVar("T")


class OwnerGoneError(UnavailableError):
    """The process owning the embedded index cannot be reached (not started yet, or died)."""


class PeerCallError(UnavailableError):
    """The owning process failed a call sent to it."""


def encode(obj: Any) -> Any:
    """JSON-ready form of engine arguments and results: numpy arrays as base64 float32, the engine's dataclasses by
    name."""
    if isinstance(obj, np.ndarray):
        arr = np.ascontiguousarray(obj, np.float32)
        return {"__nd__": base64.b64encode(arr.tobytes()).decode(), "shape": list(arr.shape)}
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        fields = {f.name: encode(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
        return {"__dc__": type(obj).__name__, "fields": fields}
    if isinstance(obj, dict):
        return {str(k): encode(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [encode(v) for v in obj]
    return obj


def decode(obj: Any) -> Any:
    if isinstance(obj, dict):
        if "__nd__" in obj:
            return np.frombuffer(base64.b64decode(obj["__nd__"]), np.float32).reshape(obj["shape"])
        if "__dc__" in obj:
            cls = _TYPES[obj["__dc__"]]
            fields = {k: decode(v) for k, v in obj["fields"].items()}
            if cls is Filter:
                fields["exclude_ids"] = tuple(fields["exclude_ids"])
            return cls(**fields)
        return {k: decode(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [decode(v) for v in obj]
    return obj


def _send(sock: socket.socket, message: Any) -> None:
    data = json.dumps(encode(message)).encode()
    sock.sendall(struct.pack(">I", len(data)) + data)


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    chunks, left = [], n
    while left:
        chunk = sock.recv(min(left, 1 << 20))
        if not chunk:
            raise ConnectionError("connection closed")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _recv(sock: socket.socket) -> Any:
    (size,) = struct.unpack(">I", _recv_exact(sock, 4))
    return decode(json.loads(_recv_exact(sock, size)))


class _Handler(socketserver.BaseRequestHandler):
    server: _Server

    def handle(self) -> None:
        sock: socket.socket = self.request
        while True:
            try:
                call = _recv(sock)
            except (ConnectionError, OSError):
                return
            op = call.get("op")
            try:
                if op not in _OPS:
                    raise ValueError(f"unknown index operation {op!r}; expected one of {sorted(_OPS)}")
                reply: dict[str, Any] = {"ok": getattr(self.server.engine, op)(*call["args"], **call["kwargs"])}
            except Exception as exc:  # sent back to the peer, which raises it there
                reply = {"error": f"{type(exc).__name__}: {exc}", "kind": type(exc).__name__}
            try:
                _send(sock, reply)
            except OSError:
                return


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True

    def __init__(self, path: Path, engine: Engine) -> None:
        self.engine = engine
        path.unlink(missing_ok=True)  # left by an owner that died
        super().__init__(str(path), _Handler)
        os.chmod(path, 0o600)


class RemoteEngine(Engine):
    """The engine of the owning process, reached over its Unix socket (one connection per thread)."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path
        self._local = threading.local()
        self._all: list[socket.socket] = []

    def _sock(self) -> socket.socket:
        sock: socket.socket | None = getattr(self._local, "sock", None)
        if sock is None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(CALL_TIMEOUT_S)
            try:
                sock.connect(str(self.path))
            except OSError as exc:
                sock.close()
                raise OwnerGoneError(f"no process owns the index at {self.path.parent}: {exc}") from exc
            self._local.sock = sock
            self._all.append(sock)
        return sock

    def call(self, op: str, *args: Any, **kwargs: Any) -> Any:
        sock = self._sock()
        try:
            _send(sock, {"op": op, "args": list(args), "kwargs": kwargs})
            reply = _recv(sock)
        except TimeoutError as exc:
            raise UnavailableError(
                f"the process owning the index did not answer {op} in {CALL_TIMEOUT_S:.0f}s"
            ) from exc
        except (ConnectionError, OSError) as exc:
            self._local.sock = None
            sock.close()
            raise OwnerGoneError(f"the process owning the index at {self.path.parent} went away: {exc}") from exc
        if "error" in reply:
            raise _ERRORS.get(reply["kind"], PeerCallError)(reply["error"])
        return reply["ok"]

    def collections(self) -> list[str]:
        return list(self.call("collections"))

    def create_collection(self, name: str, spec: CollectionSpec) -> None:
        self.call("create_collection", name, spec)

    def delete_collection(self, name: str) -> None:
        self.call("delete_collection", name)

    def aliases(self) -> dict[str, str]:
        return dict(self.call("aliases"))

    def set_aliases(self, aliases: dict[str, str]) -> None:
        self.call("set_aliases", aliases)

    def retrieve(
        self, collection: str, ids: Sequence[str], with_vectors: Selection, with_payload: Selection = True
    ) -> list[Record]:
        return list(self.call("retrieve", collection, list(ids), with_vectors, with_payload))

    def query_batch(self, collection: str, queries: Sequence[Query]) -> list[list[Record]]:
        return list(self.call("query_batch", collection, list(queries)))

    def count(self, collection: str, flt: Filter | None = None) -> int:
        return int(self.call("count", collection, flt))

    def scroll(
        self, collection: str, flt: Filter | None, fields: list[str], offset: str | None, limit: int
    ) -> tuple[list[Record], str | None]:
        page, next_offset = self.call("scroll", collection, flt, fields, offset, limit)
        return list(page), next_offset

    def write(self, collection: str, points: Sequence[Record]) -> None:
        self.call("write", collection, list(points))

    def update(self, collection: str, point: str, vectors: dict[str, np.ndarray], payload: dict[str, Any]) -> None:
        self.call("update", collection, point, vectors, payload)

    def delete(self, collection: str, ids: Sequence[str]) -> None:
        self.call("delete", collection, list(ids))

    def upsert(self, collection: str, points: Sequence[Record], *, keep_cf: bool, guarded: bool) -> list[str]:
        return list(self.call("upsert", collection, list(points), keep_cf=keep_cf, guarded=guarded))

    def optimize(self, collection: str) -> None:
        self.call("optimize", collection)

    def close(self) -> None:
        for sock in self._all:
            sock.close()
        self._all.clear()
        self._local = threading.local()


class SharedEngine(Engine):
    """The embedded index at `root` for one process among several: owner (Edge + the socket) or peer (the socket),
    decided by the owner lock when first used, and again whenever the owner goes away. A peer waits up to `wait_s`
    for an owner."""

    def __init__(self, root: Path, *, wait_s: float = 60.0) -> None:
        super().__init__()
        self.root, self.wait_s = root, wait_s
        self._lock = threading.Lock()
        self._engine: Engine | None = None
        self._lock_file: IO[str] | None = None
        self._server: _Server | None = None

    @property
    def owner(self) -> bool:
        return self._lock_file is not None

    def _delegate(self) -> Engine:
        with self._lock:
            if self._engine is not None:
                return self._engine
            self.root.mkdir(parents=True, exist_ok=True)
            deadline = time.monotonic() + self.wait_s
            while True:
                fh = (self.root / LOCK_NAME).open("a")
                try:
                    fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    fh.close()
                else:
                    return self._become_owner(fh)
                remote = RemoteEngine(self.root / SOCKET_NAME)
                try:
                    remote.call("aliases")
                except OwnerGoneError:
                    remote.close()
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
                    continue
                self._engine = remote
                return remote

    def _become_owner(self, fh: IO[str]) -> Engine:
        engine = EdgeEngine(self.root)
        server = _Server(self.root / SOCKET_NAME, engine)
        threading.Thread(target=server.serve_forever, name="thaw-index-owner", daemon=True).start()
        self._engine, self._lock_file, self._server = engine, fh, server
        log.info("this process (pid %d) owns the index at %s", os.getpid(), self.root)
        return engine

    def open_all(self) -> None:
        engine = self._delegate()
        if isinstance(engine, EdgeEngine):
            engine.open_all()

    def _do(self, call: Callable[[Engine], T]) -> T:
        for attempt in range(2):
            engine = self._delegate()
            try:
                return call(engine)
            except OwnerGoneError:
                with self._lock:
                    if self._engine is engine:
                        engine.close()
                        self._engine = None
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def collections(self) -> list[str]:
        return self._do(lambda e: e.collections())

    def create_collection(self, name: str, spec: CollectionSpec) -> None:
        self._do(lambda e: e.create_collection(name, spec))

    def delete_collection(self, name: str) -> None:
        self._do(lambda e: e.delete_collection(name))

    def aliases(self) -> dict[str, str]:
        return self._do(lambda e: e.aliases())

    def set_aliases(self, aliases: dict[str, str]) -> None:
        self._do(lambda e: e.set_aliases(aliases))

    def retrieve(
        self, collection: str, ids: Sequence[str], with_vectors: Selection, with_payload: Selection = True
    ) -> list[Record]:
        return self._do(lambda e: e.retrieve(collection, ids, with_vectors, with_payload))

    def query_batch(self, collection: str, queries: Sequence[Query]) -> list[list[Record]]:
        return self._do(lambda e: e.query_batch(collection, queries))

    def count(self, collection: str, flt: Filter | None = None) -> int:
        return self._do(lambda e: e.count(collection, flt))

    def scroll(
        self, collection: str, flt: Filter | None, fields: list[str], offset: str | None, limit: int
    ) -> tuple[list[Record], str | None]:
        return self._do(lambda e: e.scroll(collection, flt, fields, offset, limit))

    def write(self, collection: str, points: Sequence[Record]) -> None:
        self._do(lambda e: e.write(collection, points))

    def update(self, collection: str, point: str, vectors: dict[str, np.ndarray], payload: dict[str, Any]) -> None:
        self._do(lambda e: e.update(collection, point, vectors, payload))

    def delete(self, collection: str, ids: Sequence[str]) -> None:
        self._do(lambda e: e.delete(collection, ids))

    def upsert(self, collection: str, points: Sequence[Record], *, keep_cf: bool, guarded: bool) -> list[str]:
        return self._do(lambda e: e.upsert(collection, points, keep_cf=keep_cf, guarded=guarded))

    def optimize(self, collection: str) -> None:
        self._do(lambda e: e.optimize(collection))

    def close(self) -> None:
        with self._lock:
            if self._server is not None:
                self._server.shutdown()
                self._server.server_close()
                (self.root / SOCKET_NAME).unlink(missing_ok=True)
                self._server = None
            if self._engine is not None:
                self._engine.close()
                self._engine = None
            if self._lock_file is not None:
                self._lock_file.close()  # releases the owner lock
                self._lock_file = None
