"""Indexer: Qdrant collections, idempotent writes and searches (qdrant-client only)."""

from indexer.collections import Index, IndexError_, collection_name

__all__ = ["Index", "IndexError_", "collection_name"]
