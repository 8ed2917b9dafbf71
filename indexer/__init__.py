"""Indexer: the vector index — Qdrant Edge in-process by default, a Qdrant server through qdrant-client at scale."""

from indexer.collections import Index, IndexError_, collection_name

__all__ = ["Index", "IndexError_", "collection_name"]
