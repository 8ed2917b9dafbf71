"""Workers: thin Celery tasks taking ids; the logic is in services. One retry policy for every task: transient
errors retry with exponential backoff up to the configured count, then the job fails with the reason."""

from __future__ import annotations

import logging
from collections.abc import Callable

from celery import Task, shared_task

from services import embedding, reembed
from services.runtime import Runtime
from workers.app import EMBED, REEMBED

log = logging.getLogger(__name__)
_runtime: Runtime | None = None
_factory: Callable[[], Runtime] | None = None


def provide_runtime(runtime: Runtime | None = None, factory: Callable[[], Runtime] | None = None) -> None:
    """The entry point says where tasks get their runtime: the API process's own (embedded worker), or a factory
    called once in a worker process."""
    global _runtime, _factory
    _runtime, _factory = runtime, factory


def runtime() -> Runtime:
    global _runtime
    if _runtime is None:
        if _factory is None:
            raise RuntimeError("no runtime for the tasks: the entry point must call workers.tasks.provide_runtime")
        _runtime = _factory()
    return _runtime


def _retry_or_fail(task: Task, exc: Exception, give_up: Callable[[str], object], what: str) -> None:
    """Retry `task` after 2^n seconds (at most 60), or, once the retries are spent, record the failure."""
    limit = int(task.app.conf.get("thaw_max_retries", 5))
    if task.request.retries >= limit:
        log.exception("%s failed permanently", what)
        give_up(f"gave up after {limit} retries: {type(exc).__name__}: {exc}")
        return
    raise task.retry(exc=exc, countdown=min(60, 2**task.request.retries)) from exc


@shared_task(bind=True, name=EMBED, acks_late=True, reject_on_worker_lost=True, max_retries=None)
def embed_item(self: Task, item_id: str, job_id: str) -> str:
    """Embed one item; permanent errors fail the job inside the pipeline, transient ones retry."""
    try:
        return embedding.embed_item(runtime(), item_id, job_id)
    except Exception as exc:
        _retry_or_fail(self, exc, lambda reason: embedding.fail_job(runtime(), job_id, reason), f"job {job_id}")
        return "failed"


@shared_task(bind=True, name=REEMBED, acks_late=True, reject_on_worker_lost=True, max_retries=None)
def reembed_chunk(self: Task, job_id: str, item_ids: list[str]) -> str:
    """Re-embed a chunk of a job's items (pending ones only; an empty chunk just tries to finalize the job)."""
    try:
        return reembed.run_chunk(runtime(), job_id, item_ids)
    except Exception as exc:
        fail = lambda reason: reembed.fail_items(runtime(), job_id, item_ids, reason)  # noqa: E731
        _retry_or_fail(self, exc, fail, f"re-embedding chunk of job {job_id}")
        return "failed"
