"""Workers: the Celery app, configured from settings (filesystem transport embedded, Redis/RabbitMQ at scale).

`celery -A workers.app worker` runs a worker process; the embedded default runs one inside `thaw serve`.
"""

from __future__ import annotations

import threading

from celery import Celery
from kombu import Exchange, Queue

from thaw.settings import Settings


def make_celery(settings: Settings) -> Celery:
    """Uploads go to the `celery` queue, re-embedding chunks to `reembed`; every worker consumes both, taking from
    them in turn, so a long re-embedding job does not hold back the uploads that arrive while it runs."""
    app = Celery("thaw", broker=settings.celery_broker, include=["workers.tasks"])
    options: dict[str, object] = {"visibility_timeout": settings.broker_visibility_timeout}
    if settings.embedded_broker:
        queue = settings.broker_dir / "queue"
        queue.mkdir(parents=True, exist_ok=True)
        options = {
            "data_folder_in": str(queue),
            "data_folder_out": str(queue),
            "control_folder": str(settings.broker_dir / "control"),  # exchange bindings: per data dir, not the cwd
            "polling_interval": 0.05,
        }
    app.conf.update(
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
        task_routes={"thaw.reembed_chunk": {"queue": "reembed"}},
        thaw_max_retries=settings.task_max_retries,
    )
    return app


def start_embedded_worker(app: Celery) -> tuple[threading.Thread, object]:
    """Run a real Celery worker (solo pool) on a thread of this process: the embedded default, where Qdrant's
    on-disk storage belongs to one process. Returns the thread and the worker, whose `stop()` ends it."""
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

    thread = threading.Thread(target=run, name="thaw-worker", daemon=True)
    thread.start()
    return thread, worker


app = make_celery(Settings())
