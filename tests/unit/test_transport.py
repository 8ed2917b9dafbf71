"""The embedded broker's transport: a consumer polling while messages are written gets each one whole, once."""

from __future__ import annotations

import threading
from pathlib import Path

from kombu import Connection

from workers import transport


def test_messages_polled_while_being_written_arrive_whole_and_once(tmp_path: Path) -> None:
    folder = tmp_path / "queue"
    folder.mkdir()
    options = {"data_folder_in": str(folder), "data_folder_out": str(folder), "control_folder": str(tmp_path / "c")}
    sent = [{"i": i, "body": "x" * 50_000} for i in range(300)]  # large enough that a write takes a while
    received: list[int] = []
    errors: list[BaseException] = []

    def consume() -> None:
        with Connection(f"{transport.SCHEME}://", transport_options=options) as conn:
            queue = conn.SimpleQueue("probe")
            try:
                while len(received) < len(sent):
                    message = queue.get(timeout=30)
                    received.append(message.payload["i"])
                    message.ack()
            except BaseException as exc:  # noqa: BLE001 - surfaced by the assertion below
                errors.append(exc)

    reader = threading.Thread(target=consume)
    reader.start()
    with Connection(f"{transport.SCHEME}://", transport_options=options) as conn:
        queue = conn.SimpleQueue("probe")
        for message in sent:
            queue.put(message)
    reader.join(60)
    assert errors == [] and sorted(received) == list(range(len(sent)))
    assert not [p.name for p in folder.iterdir()]  # nothing left behind, no temporary file either
