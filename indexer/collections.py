"""Indexer: opening Qdrant (embedded path, shared path, or server) and creating versioned collections + aliases."""

from __future__ import annotations

import fcntl
import threading
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path

from qdrant_client import QdrantClient
from qdrant_client.http import models as qm

from thaw.errors import UnavailableError
from thaw.registry import version_key
from thaw.schema import CF, CONTENT

ITEMS = "items"  # alias of the active items collection
USERS = "users"  # alias of the active users collection


class IndexError_(UnavailableError):
    """The index is missing something a request needs (no active collection, unknown alias)."""


# Per-context (one API request) snapshot of where the aliases pointed when first read: {id(index): {alias: name}}.
_PINNED: ContextVar[dict[int, dict[str, str | None]] | None] = ContextVar("thaw_pinned_aliases", default=None)


def pin_aliases() -> None:
    """From here to the end of the current context (one API request), every `Index` reads the `items` and `users`
    aliases once, both in the same snapshot, and keeps reading those collections: a request that straddles an alias
    swap never mixes two versions (whose vector sizes may differ)."""
    _PINNED.set({})


def collection_name(kind: str, version: str) -> str:
    return f"{kind}__{version}"


class Index:
    """One handle on Qdrant for every component; `session()` yields a `QdrantClient`.

    - `url`: a Qdrant server; one client, shared by threads.
    - `path`: embedded storage owned by this process; one client, calls serialised by a lock.
    - `path` with `shared=True`: embedded storage used by several processes (API + separate workers on one host
      without a Qdrant server); each session opens the storage under an exclusive file lock and closes it.
    """

    def __init__(
        self, *, url: str | None = None, path: Path | None = None, api_key: str | None = None, shared: bool = False
    ) -> None:
        if (url is None) == (path is None):
            raise ValueError(f"Index needs exactly one of url or path; got url={url!r}, path={path!r}")
        if shared and url is not None:
            raise ValueError("shared=True applies to embedded storage (path), not to a server url")
        self.url, self.path, self.shared = url, path, shared
        self._api_key = api_key
        self._lock = threading.RLock()
        self._client: QdrantClient | None = None

    def _open(self) -> QdrantClient:
        if self.url is not None:
            return QdrantClient(url=self.url, api_key=self._api_key, timeout=30)
        assert self.path is not None
        self.path.mkdir(parents=True, exist_ok=True)
        return QdrantClient(path=str(self.path), force_disable_check_same_thread=True)

    @contextmanager
    def session(self) -> Iterator[QdrantClient]:
        if self.url is not None:
            if self._client is None:
                self._client = self._open()
            yield self._client
            return
        with self._lock:
            if not self.shared:
                if self._client is None:
                    self._client = self._open()
                yield self._client
                return
            assert self.path is not None
            self.path.mkdir(parents=True, exist_ok=True)
            with (self.path.parent / f".{self.path.name}.lock").open("w") as fh:
                fcntl.flock(fh, fcntl.LOCK_EX)
                client = self._open()
                try:
                    yield client
                finally:
                    client.close()
                    fcntl.flock(fh, fcntl.LOCK_UN)

    def resolved(self, client: QdrantClient, alias: str) -> str | None:
        """The collection `alias` names, from the pinned snapshot when the context has one."""
        pinned = _PINNED.get()
        if pinned is None:
            return resolve_alias(client, alias)
        snapshot = pinned.get(id(self))
        if snapshot is None:
            snapshot = pinned[id(self)] = {a: resolve_alias(client, a) for a in (ITEMS, USERS)}
        return snapshot[alias] if alias in snapshot else resolve_alias(client, alias)

    def collection(self, client: QdrantClient, name: str) -> str:
        """What to pass to Qdrant for `name`: a concrete collection as is; an alias as pinned (or itself)."""
        if name in (ITEMS, USERS) and _PINNED.get() is not None:
            return self.resolved(client, name) or name
        return name

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None


# The distance each named vector is searched with, decided here only. `cf` and `content` score items for a user by
# dot product (ALS's own score: an item's norm carries how strongly it is liked). Item-to-item similarity compares
# directions: it searches a cosine twin of each (written with it, stored unit-normalised), so an item with a large
# norm cannot top every similar list. Modality embeddings are compared by cosine.
SIMILARITY_VECTORS = {CF: f"{CF}_cosine", CONTENT: f"{CONTENT}_cosine"}


def _item_vectors(dim: int, embedding_dims: dict[str, int]) -> dict[str, qm.VectorParams]:
    vectors = {
        CF: qm.VectorParams(size=dim, distance=qm.Distance.DOT),
        CONTENT: qm.VectorParams(size=dim, distance=qm.Distance.DOT),
    }
    for twin in SIMILARITY_VECTORS.values():
        vectors[twin] = qm.VectorParams(size=dim, distance=qm.Distance.COSINE)
    for modality, size in embedding_dims.items():
        vectors[modality] = qm.VectorParams(size=size, distance=qm.Distance.COSINE)
    return vectors


def resolve_alias(client: QdrantClient, alias: str) -> str | None:
    for a in client.get_aliases().aliases:
        if a.alias_name == alias:
            return a.collection_name
    return None


def ensure_collections(index: Index, version: str, dim: int, embedding_dims: dict[str, int]) -> tuple[str, str]:
    """Create the items and users collections of a model version (idempotent); returns their names.

    A version whose vector sizes differ from another's simply gets its own collections with its own schema.
    """
    items, users = collection_name(ITEMS, version), collection_name(USERS, version)
    with index.session() as client:
        if not client.collection_exists(items):
            client.create_collection(items, vectors_config=_item_vectors(dim, embedding_dims))
            for field, schema in (
                ("item_id", qm.PayloadSchemaType.KEYWORD),
                ("modalities", qm.PayloadSchemaType.KEYWORD),
                ("interactions", qm.PayloadSchemaType.INTEGER),
                ("model_version", qm.PayloadSchemaType.KEYWORD),
            ):
                client.create_payload_index(items, field, field_schema=schema)
        if not client.collection_exists(users):
            client.create_collection(users, vectors_config={CF: qm.VectorParams(size=dim, distance=qm.Distance.DOT)})
    return items, users


def activate(index: Index, version: str) -> None:
    """Point the `items` and `users` aliases at a version's collections in one atomic alias update."""
    ops: list[qm.CreateAliasOperation | qm.DeleteAliasOperation] = []
    with index.session() as client:
        for kind in (ITEMS, USERS):
            target = collection_name(kind, version)
            if not client.collection_exists(target):
                raise IndexError_(f"collection {target} does not exist; index version {version} first")
            if resolve_alias(client, kind) is not None:
                ops.append(qm.DeleteAliasOperation(delete_alias=qm.DeleteAlias(alias_name=kind)))
            ops.append(qm.CreateAliasOperation(create_alias=qm.CreateAlias(collection_name=target, alias_name=kind)))
        client.update_collection_aliases(change_aliases_operations=ops)
    pinned = _PINNED.get()
    if pinned is not None:  # the request that swapped reads the new state from here on
        pinned.pop(id(index), None)


def active_collection_version(index: Index) -> str | None:
    """The served version: the one the `items` alias points at (pinned within a request)."""
    with index.session() as client:
        target = index.resolved(client, ITEMS)
    return target.split("__", 1)[1] if target else None


def indexed_versions(index: Index) -> list[str]:
    """Versions whose items and users collections both exist, oldest first."""
    with index.session() as client:
        names = {c.name for c in client.get_collections().collections}
    prefix = f"{ITEMS}__"
    found = [n[len(prefix) :] for n in names if n.startswith(prefix)]
    return sorted((v for v in found if collection_name(USERS, v) in names), key=version_key)


def versions_to_remove(versions: Sequence[str], keep: int, protected: Collection[str]) -> list[str]:
    """Keep-N retention: every protected version stays, then the newest others until `keep` are kept; the rest go
    (oldest first)."""
    if keep < 1:
        raise ValueError(f"keep must be at least 1, got {keep}")
    kept = {v for v in versions if v in protected}
    for version in sorted(versions, key=version_key, reverse=True):
        if len(kept) >= keep:
            break
        kept.add(version)
    return [v for v in sorted(versions, key=version_key) if v not in kept]


def remove_versions(index: Index, versions: Sequence[str]) -> None:
    """Delete the items and users collections of each version (idempotent)."""
    with index.session() as client:
        for version in versions:
            for kind in (ITEMS, USERS):
                if client.collection_exists(collection_name(kind, version)):
                    client.delete_collection(collection_name(kind, version))
