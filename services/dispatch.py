"""Services: what the services send to the workers, without knowing the task queue (workers.app implements it),
and which task errors are worth a retry."""

from __future__ import annotations

from typing import Protocol

import httpx
from sqlalchemy.exc import DisconnectionError, OperationalError
from sqlalchemy.exc import TimeoutError as SQLTimeoutError

from thaw.errors import UnavailableError


class BrokerUnavailableError(UnavailableError):
    """The task queue did not take the message; the job stays recorded and is sent again later."""


class Dispatcher(Protocol):
    def embed(self, item_id: str, job_id: str) -> None:
        """Embed an uploaded item (the task reads everything else from the database)."""

    def reembed_chunks(self, job_id: str, chunks: list[list[str]]) -> None:
        """Re-embed these chunks of a re-embedding job's items."""

    def batch_chunks(self, job_id: str, chunks: list[list[str]]) -> None:
        """Embed these chunks of a batch upload job's items."""


_TRANSIENT: tuple[type[BaseException], ...] = (
    UnavailableError,  # nothing served yet, the broker or index unreachable
    OSError,  # connections refused or reset, timeouts
    OperationalError,  # the database unreachable or locked
    DisconnectionError,
    SQLTimeoutError,
    httpx.TransportError,  # an index server unreachable (qdrant-client wraps it)
)


def is_transient(exc: BaseException) -> bool:
    """Whether a later try may succeed: the one classification of task errors. Transient: a service unreachable
    (this error or the one it was raised from); everything else (bad content, bugs) is permanent."""
    seen: BaseException | None = exc
    for _ in range(4):
        if seen is None:
            return False
        if isinstance(seen, _TRANSIENT):
            return True
        seen = seen.__cause__ or seen.__context__
    return False
