"""Workers: the embedded broker's filesystem transport, with files that appear whole. Kombu's own creates a message
file and then writes it, so a consumer polling meanwhile can take an empty file, fail to decode it and lose the
message; it also truncates an exchange's binding table before rewriting it, so a producer publishing meanwhile finds
no queue bound and drops the message; and it writes a binding to disk only if this process has not declared it
before (kombu's broker state is per process), so a second connection of the same process (the embedded worker
beside the API) could publish before the first had written the table. Here every file is written under a hidden
temporary name and renamed into place, binders take turns under a lock, and every bind is on disk before it
returns."""

from __future__ import annotations

import fcntl
import os
import tempfile
import uuid
from time import monotonic
from typing import Any

from kombu.exceptions import ChannelError
from kombu.transport import TRANSPORT_ALIASES, filesystem
from kombu.utils.json import dumps, loads

SCHEME = "thawfs"


def _write_whole(folder: str, name: str, data: bytes) -> None:
    """Write `data` to `folder/name` so that a reader sees either no file or the whole of it."""
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".put-")  # hidden: matches no queue
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, os.path.join(folder, name))
    except OSError as exc:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise ChannelError(f"cannot write {name!r} to {folder}") from exc


class Channel(filesystem.Channel):
    def _put(self, queue: Any, message: Any, **kwargs: Any) -> None:  # type: ignore[override]  # kombu names it two ways
        """Put `message` onto `queue`: the file gets its queue name only once it is complete (a rename)."""
        name = f"{int(round(monotonic() * 1000))}_{uuid.uuid4()}.{queue}.msg"
        _write_whole(self.data_folder_out, name, dumps(message).encode())

    def get_table(self, exchange: str) -> list[Any]:
        """The queues bound to `exchange`; the table file is only ever replaced whole, so it is read without a lock."""
        try:
            table = loads(self._exchange_file(exchange).read_bytes())
        except FileNotFoundError:
            return []
        return [filesystem.exchange_queue_t(*binding) for binding in table]

    def queue_bind(
        self, queue: str, exchange: str | None = None, routing_key: str = "", arguments: Any = None, **kwargs: Any
    ) -> None:
        """Bind `queue` to `exchange`: on disk first, whatever this process's broker state says."""
        exchange = exchange or "amq.direct"
        self._queue_bind(exchange, *self.typeof(exchange).prepare_bind(queue, exchange, routing_key, arguments))
        super().queue_bind(queue, exchange, routing_key, arguments, **kwargs)

    def _queue_bind(self, exchange: str, routing_key: str, pattern: str, queue: str) -> None:
        """Add a binding: one binder at a time reads the table and replaces it whole."""
        file = self._exchange_file(exchange)
        self.control_folder.mkdir(exist_ok=True)
        binding = filesystem.exchange_queue_t(routing_key or "", pattern or "", queue or "")
        with open(file.with_name(f".{file.name}.lock"), "a") as guard:
            fcntl.flock(guard.fileno(), fcntl.LOCK_EX)  # released when the file closes
            table = self.get_table(exchange)
            if binding not in table:
                _write_whole(str(self.control_folder), file.name, dumps([binding, *table]).encode())


class Transport(filesystem.Transport):
    Channel = Channel


TRANSPORT_ALIASES[SCHEME] = f"{__name__}:Transport"
