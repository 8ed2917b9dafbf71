"""Workers: thin Celery tasks taking ids; the logic is in services. One retry policy for every task: errors are
classified once (services.dispatch.is_transient); transient ones retry with exponential backoff up to the configured
count, permanent ones (and transient ones past the count) fail the job with the reason."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from celery import Task, shared_task

from services import batches, embedding, reembed
from services.dispatch import is_transient
from services.runtime import Runtime
from workers.app import BATCH, EMBED, REEMBED

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


def _retry_or_fail(
    task: Task, exc: Exception, give_up: Callable[[str], object], what: str, requeue: Callable[[datetime], object]
) -> str:
    """Transient errors (services.dispatch.is_transient) retry after 2^n seconds (at most 60) until the retries are
    spent; then, or at once for a permanent error, the failure is recorded with its reason."""
    limit = int(task.app.conf.get("thaw_max_retries", 5))
    if not is_transient(exc):
        log.exception("%s failed", what)
        give_up(f"{type(exc).__name__}: {exc}")
        return "failed"
    if task.request.retries >= limit:
        log.exception("%s failed permanently", what)
        give_up(f"gave up after {limit} retries: {type(exc).__name__}: {exc}")
        return "failed"
    countdown = min(60, 2**task.request.retries)
    requeue(datetime.now(UTC) + timedelta(seconds=countdown))
    log.warning("%s: retry %d in %ds after %s: %s", what, task.request.retries + 1, countdown, type(exc).__name__, exc)
    # Sent through the task's own app (Task.retry may publish through another thread's current app); if the broker
    # does not take it, the job sweep sends the job again.
    task.app.send_task(task.name, args=task.request.args, countdown=countdown, retries=task.request.retries + 1)
    return "retrying"


@shared_task(bind=True, name=EMBED, acks_late=True, reject_on_worker_lost=True, max_retries=None)
def embed_item(self: Task, item_id: str, job_id: str) -> str:
    """Embed one item, in a batch with the embedding jobs waiting beside it (up to `thaw_embed_batch_size`);
    permanent errors fail a job inside the pipeline, transient ones retry the batch."""
    try:
        size = int(self.app.conf.get("thaw_embed_batch_size", 1))
        return embedding.embed_item(runtime(), item_id, job_id, batch_size=size)
    except Exception as exc:
        return _retry_or_fail(
            self,
            exc,
            lambda reason: embedding.fail_job(runtime(), job_id, reason),
            f"job {job_id}",
            lambda due: embedding.requeue(runtime(), job_id, due),
        )


@shared_task(bind=True, name=REEMBED, acks_late=True, reject_on_worker_lost=True, max_retries=None)
def reembed_chunk(self: Task, job_id: str, item_ids: list[str]) -> str:
    """Re-embed a chunk of a job's items (pending ones only; an empty chunk just tries to finalize the job)."""
    try:
        return reembed.run_chunk(runtime(), job_id, item_ids)
    except Exception as exc:
        fail = lambda reason: reembed.fail_items(runtime(), job_id, item_ids, reason)  # noqa: E731
        return _retry_or_fail(self, exc, fail, f"re-embedding chunk of job {job_id}", lambda _due: None)


@shared_task(bind=True, name=BATCH, acks_late=True, reject_on_worker_lost=True, max_retries=None)
def batch_chunk(self: Task, job_id: str, item_ids: list[str]) -> str:
    """Embed a chunk of a batch upload job's items (pending ones only)."""
    try:
        return batches.run_chunk(runtime(), job_id, item_ids)
    except Exception as exc:
        fail = lambda reason: batches.fail_items(runtime(), job_id, item_ids, reason)  # noqa: E731
        return _retry_or_fail(self, exc, fail, f"chunk of batch job {job_id}", lambda _due: None)
