"""Services: what the services send to the workers, without knowing the task queue (workers.app implements it)."""

from __future__ import annotations

from typing import Protocol

from thaw.errors import UnavailableError


class BrokerUnavailableError(UnavailableError):
    """The task queue did not take the message; the job stays recorded and is sent again later."""


class Dispatcher(Protocol):
    def embed(self, item_id: str, job_id: str) -> None:
        """Embed an uploaded item (the task reads everything else from the database)."""

    def reembed_chunks(self, job_id: str, chunks: list[list[str]]) -> None:
        """Re-embed these chunks of a re-embedding job's items."""
