"""The embedded broker's transport: a consumer polling while messages are written gets each one whole, once."""

from __future__ import annotations

import threading
import time
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
        # polls until every message has come or a generous deadline passes (a loaded machine may write slowly)
        deadline = time.monotonic() + 120
        with Connection(f"{transport.SCHEME}://", transport_options=options) as conn:
            queue = conn.SimpleQueue("probe")
            while len(received) < len(sent) and time.monotonic() < deadline:
                try:
                    message = queue.get(timeout=1)
                except queue.Empty:
                    continue
                except BaseException as exc:  # noqa: BLE001 - a half-written message fails to decode: surfaced below
                    errors.append(exc)
                    return
                received.append(message.payload["i"])
                message.ack()

    reader = threading.Thread(target=consume)
    reader.start()
    with Connection(f"{transport.SCHEME}://", transport_options=options) as conn:
        queue = conn.SimpleQueue("probe")
        for message in sent:
            queue.put(message)
    reader.join(180)
    assert errors == []
    assert sorted(received) == list(range(len(sent))), sorted(set(range(len(sent))) - set(received))
    assert not [p.name for p in folder.iterdir()]  # nothing left behind, no temporary file either


def test_a_bind_reaches_the_disk_even_when_this_process_declared_it_before(tmp_path: Path) -> None:
    """kombu's broker state is per process: a second connection of the same process, on another folder, must still
    write its binding table, or every message it publishes is dropped."""
    for run in ("first", "second"):
        folder = tmp_path / run
        options = {"data_folder_in": str(folder), "data_folder_out": str(folder), "control_folder": str(folder / "c")}
        folder.mkdir()
        with Connection(f"{transport.SCHEME}://", transport_options=options) as conn:
            queue = conn.SimpleQueue("bound-once")
            queue.put({"run": run})
            assert queue.get(timeout=5).payload == {"run": run}
