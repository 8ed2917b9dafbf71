"""Indexer: the `Index` handle (the engine chosen once, at construction) and versioned collections with the
`items`/`users` aliases that say which version is served."""

from __future__ import annotations

import threading
from collections.abc import Collection, Sequence
from contextvars import ContextVar
from pathlib import Path

from indexer.engine import CollectionSpec, Distance, Engine, PayloadType, VectorSpec
from thaw.errors import UnavailableError
from thaw.registry import version_key
from thaw.schema import CF, CONTENT, SIMILARITY_VECTORS

ITEMS = "items"  # alias of the active items collection
USERS = "users"  # alias of the active users collection

# The distance of each named vector, in one place: the learned CF space and the content vector predicted into it
# are scored by dot product (the score of matrix factorisation); any other vector (a modality's embedding) by
# cosine. Either may be switched to "cosine" or "dot" here.
DISTANCES: dict[str, Distance] = {CF: "dot", CONTENT: "dot"}
DEFAULT_DISTANCE: Distance = "cosine"
ITEM_PAYLOAD_INDEXES: dict[str, PayloadType] = {
    "item_id": "keyword",
    "modalities": "keyword",
    "interactions": "integer",
    "model_version": "keyword",
}
QUANTIZE_FROM = 128  # named vectors of at least this size are stored int8-quantized (rescored with the originals)


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
    """One handle on the vector index for every component; `engine()` is the engine it talks to.

    - `url`: a Qdrant server (or cluster) through qdrant-client; one client, shared by threads.
    - `path`: embedded storage (Qdrant Edge) under a directory. One process of the host owns it and the others
      (Celery workers, the CLI) send it their calls over a Unix socket (`indexer.shared`).
    """

    def __init__(self, *, url: str | None = None, path: Path | None = None, api_key: str | None = None) -> None:
        if (url is None) == (path is None):
            raise ValueError(f"Index needs exactly one of url or path; got url={url!r}, path={path!r}")
        if api_key is not None and url is None:
            raise ValueError("api_key applies to a Qdrant server (url), not to embedded storage (path)")
        self.url, self.path = url, path
        self._api_key = api_key
        self._lock = threading.Lock()
        self._engine: Engine | None = None

    def engine(self) -> Engine:
        if self._engine is None:
            with self._lock:
                if self._engine is None:
                    self._engine = self._open()
        return self._engine

    def _open(self) -> Engine:
        if self.url is not None:
            from indexer.server import ServerEngine

            return ServerEngine(self.url, self._api_key)
        from indexer.shared import SharedEngine

        assert self.path is not None
        return SharedEngine(self.path)

    def open(self) -> None:
        """Open the storage and the served collections now (at start-up) rather than on the first request."""
        from indexer.shared import SharedEngine

        engine = self.engine()
        if isinstance(engine, SharedEngine):
            engine.open_all()

    def resolved(self, alias: str) -> str | None:
        """The collection `alias` names, from the pinned snapshot when the context has one."""
        pinned = _PINNED.get()
        if pinned is None:
            return self.engine().aliases().get(alias)
        snapshot = pinned.get(id(self))
        if snapshot is None:
            aliases = self.engine().aliases()
            snapshot = pinned[id(self)] = {a: aliases.get(a) for a in (ITEMS, USERS)}
        return snapshot[alias] if alias in snapshot else self.engine().aliases().get(alias)

    def collection(self, name: str) -> str:
        """What to pass to the engine for `name`: a concrete collection as is; an alias as pinned (or itself)."""
        if name in (ITEMS, USERS) and _PINNED.get() is not None:
            return self.resolved(name) or name
        return name

    def close(self) -> None:
        with self._lock:
            if self._engine is not None:
                self._engine.close()
                self._engine = None


def item_spec(dim: int, embedding_dims: dict[str, int]) -> CollectionSpec:
    sizes = {CF: dim, CONTENT: dim, **{twin: dim for twin in SIMILARITY_VECTORS.values()}, **embedding_dims}
    vectors = {name: VectorSpec(size, DISTANCES.get(name, DEFAULT_DISTANCE)) for name, size in sizes.items()}
    quantized = tuple(name for name, size in sizes.items() if size >= QUANTIZE_FROM)
    return CollectionSpec(vectors, dict(ITEM_PAYLOAD_INDEXES), quantized)


def user_spec(dim: int) -> CollectionSpec:
    return CollectionSpec({CF: VectorSpec(dim, DISTANCES.get(CF, DEFAULT_DISTANCE))})


def ensure_collections(index: Index, version: str, dim: int, embedding_dims: dict[str, int]) -> tuple[str, str]:
    """Create the items and users collections of a model version (idempotent); returns their names.

    A version whose vector sizes differ from another's simply gets its own collections with its own schema.
    """
    items, users = collection_name(ITEMS, version), collection_name(USERS, version)
    engine = index.engine()
    existing = set(engine.collections())
    if items not in existing:
        engine.create_collection(items, item_spec(dim, embedding_dims))
    if users not in existing:
        engine.create_collection(users, user_spec(dim))
    return items, users


def activate(index: Index, version: str) -> None:
    """Point the `items` and `users` aliases at a version's collections in one atomic alias update."""
    engine = index.engine()
    existing = set(engine.collections())
    targets = {kind: collection_name(kind, version) for kind in (ITEMS, USERS)}
    for target in targets.values():
        if target not in existing:
            raise IndexError_(f"collection {target} does not exist; index version {version} first")
    engine.set_aliases(targets)
    pinned = _PINNED.get()
    if pinned is not None:  # the request that swapped reads the new state from here on
        pinned.pop(id(index), None)


def active_collection_version(index: Index) -> str | None:
    """The served version: the one the `items` alias points at (pinned within a request)."""
    target = index.resolved(ITEMS)
    return target.split("__", 1)[1] if target else None


def has_version(index: Index, version: str) -> bool:
    """Whether a version's items and users collections both exist."""
    names = set(index.engine().collections())
    return collection_name(ITEMS, version) in names and collection_name(USERS, version) in names


def indexed_versions(index: Index) -> list[str]:
    """Versions whose items and users collections both exist, oldest first."""
    names = set(index.engine().collections())
    prefix = f"{ITEMS}__"
    found = [n[len(prefix) :] for n in names if n.startswith(prefix)]
    return sorted((v for v in found if collection_name(USERS, v) in names), key=version_key)


def version_collections(index: Index, kind: str) -> list[str]:
    """Every version's collection of `kind` (ITEMS or USERS), whatever its state: served, kept, being filled."""
    prefix = f"{kind}__"
    return [n for n in index.engine().collections() if n.startswith(prefix)]


def optimize(index: Index, version: str) -> None:
    """Build the search indexes of a version's collections after a bulk load (before it is served)."""
    for kind in (ITEMS, USERS):
        index.engine().optimize(collection_name(kind, version))


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
    engine = index.engine()
    existing = set(engine.collections())
    for version in versions:
        for kind in (ITEMS, USERS):
            if collection_name(kind, version) in existing:
                engine.delete_collection(collection_name(kind, version))
