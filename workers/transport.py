"""Workers: the embedded broker's filesystem transport, with messages that appear whole. Kombu's own creates a
message file and then writes it, so a consumer polling meanwhile can take an empty file, fail to decode it and lose
the message; here each message is written to a hidden temporary file and renamed into the queue."""

from __future__ import annotations

import os
import tempfile
import uuid
from time import monotonic
from typing import Any

from kombu.exceptions import ChannelError
from kombu.transport import TRANSPORT_ALIASES, filesystem
from kombu.utils.json import dumps

SCHEME = "thawfs"


class Channel(filesystem.Channel):
    def _put(self, queue: Any, message: Any, **kwargs: Any) -> None:  # type: ignore[override]  # kombu names it two ways
        """Put `message` onto `queue`: the file gets its queue name only once it is complete (a rename)."""
        name = f"{int(round(monotonic() * 1000))}_{uuid.uuid4()}.{queue}.msg"
        fd, tmp = tempfile.mkstemp(dir=self.data_folder_out, prefix=".put-")  # hidden: matches no queue
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(dumps(message).encode())
            os.replace(tmp, os.path.join(self.data_folder_out, name))
        except OSError as exc:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise ChannelError(f"cannot add message {name!r} to {self.data_folder_out}") from exc


class Transport(filesystem.Transport):
    Channel = Channel


TRANSPORT_ALIASES[SCHEME] = f"{__name__}:Transport"
