"""Workers: the Celery app (built by the entry point, never at import), the embedded worker thread, and the
dispatcher through which services send tasks."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

from celery import Celery
from kombu import Exchange, Queue

from services.dispatch import BrokerUnavailableError
from workers import transport

EMBED = "thaw.embed_item"
REEMBED = "thaw.reembed_chunk"
BATCH = "thaw.batch_chunk"


@dataclass(frozen=True)
class QueueConfig:
    """Where tasks go: `broker_url` (Redis, RabbitMQ), or None for the filesystem transport under `embedded_dir`."""

    broker_url: str | None
    embedded_dir: Path
    visibility_timeout: int = 600
    max_retries: int = 5
    embed_batch_size: int = 64  # embedding jobs one task encodes together, at most


def make_celery(config: QueueConfig) -> Celery:
    """Uploads go to the `celery` queue, re-embedding chunks to `reembed`; every worker consumes both, taking from
    them in turn, so a long re-embedding job does not hold back the uploads that arrive while it runs."""
    app = Celery("thaw", include=["workers.tasks"])
    options: dict[str, object] = {"visibility_timeout": config.visibility_timeout}
    broker = config.broker_url
    if broker is None:
        queue = config.embedded_dir / "queue"
        queue.mkdir(parents=True, exist_ok=True)
        broker = f"{transport.SCHEME}://localhost//"  # the host is ignored; naming one keeps kombu quiet
        options = {
            "data_folder_in": str(queue),
            "data_folder_out": str(queue),
            "control_folder": str(config.embedded_dir / "control"),  # exchange bindings: per data dir, not the cwd
            "polling_interval": 0.05,
        }
    app.conf.update(
        broker_url=broker,
        broker_transport_options=options,
        broker_connection_retry_on_startup=True,
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        worker_hijack_root_logger=False,
        task_default_queue="celery",
        task_queues=tuple(Queue(name, Exchange(name), routing_key=name) for name in ("celery", "reembed")),
        task_routes={REEMBED: {"queue": "reembed"}},
        thaw_max_retries=config.max_retries,
        thaw_embed_batch_size=config.embed_batch_size,
    )
    return app


class CeleryDispatcher:
    """Services' Dispatcher over a Celery app: tasks are sent by name, so the sender need not import the tasks."""

    def __init__(self, app: Celery) -> None:
        self.app = app

    def _send(self, name: str, args: list[object]) -> None:
        try:
            self.app.send_task(name, args=args)
        except Exception as exc:  # kombu raises many types for an unreachable broker
            raise BrokerUnavailableError(f"{type(exc).__name__}: {exc}") from exc

    def embed(self, item_id: str, job_id: str) -> None:
        self._send(EMBED, [item_id, job_id])

    def reembed_chunks(self, job_id: str, chunks: list[list[str]]) -> None:
        for chunk in chunks:
            self._send(REEMBED, [job_id, chunk])

    def batch_chunks(self, job_id: str, chunks: list[list[str]]) -> None:
        for chunk in chunks:
            self._send(BATCH, [job_id, chunk])


def start_embedded_worker(app: Celery) -> object:
    """Run a real Celery worker (solo pool) on a thread of this process: the embedded default, where the index's
    on-disk storage belongs to one process. Returns the worker, whose `stop()` ends it."""
    worker = app.WorkController(
        pool_cls="solo",
        concurrency=1,
        without_heartbeat=True,
        without_mingle=True,
        without_gossip=True,
        hostname="embedded@thaw",
        loglevel="WARNING",
    )

    def run() -> None:
        app.set_current()  # the current app is per thread: retries and signatures sent from tasks use this one
        worker.start()

    threading.Thread(target=run, name="thaw-worker", daemon=True).start()
    return worker
