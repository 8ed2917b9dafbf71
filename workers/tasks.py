"""Workers: thin Celery tasks taking ids; the logic is in workers.pipeline."""

from __future__ import annotations

import logging

from celery import Task, shared_task

from thaw.runtime import Runtime
from thaw.settings import Settings
from workers import pipeline, reembed

log = logging.getLogger(__name__)
_runtime: Runtime | None = None


def set_runtime(rt: Runtime) -> None:
    """Share the API process's runtime with the embedded worker (one owner of embedded Qdrant)."""
    global _runtime
    _runtime = rt


def runtime() -> Runtime:
    global _runtime
    if _runtime is None:
        _runtime = Runtime.from_settings(Settings())
    return _runtime


@shared_task(bind=True, name="thaw.embed_item", acks_late=True, reject_on_worker_lost=True, max_retries=None)
def embed_item(self: Task, item_id: str, job_id: str) -> str:
    """Embed one item; transient errors retry with exponential backoff, permanent ones fail the job."""
    try:
        return pipeline.embed_item(runtime(), item_id, job_id)
    except Exception as exc:
        limit = int(self.app.conf.get("thaw_max_retries", 5))
        if self.request.retries >= limit:
            pipeline.fail_job(runtime(), job_id, f"gave up after {limit} retries: {type(exc).__name__}: {exc}")
            log.exception("job %s failed permanently", job_id)
            return "failed"
        raise self.retry(exc=exc, countdown=min(60, 2**self.request.retries)) from exc


@shared_task(bind=True, name="thaw.reembed_chunk", acks_late=True, reject_on_worker_lost=True, max_retries=None)
def reembed_chunk(self: Task, job_id: str, item_ids: list[str]) -> str:
    """Re-embed a chunk of a job's items (pending ones only; an empty chunk just tries to finalize the job)."""
    try:
        return reembed.run_chunk(runtime(), job_id, item_ids)
    except Exception as exc:
        limit = int(self.app.conf.get("thaw_max_retries", 5))
        if self.request.retries >= limit:
            log.exception("re-embedding chunk of job %s failed permanently", job_id)
            reason = f"gave up after {limit} retries: {type(exc).__name__}: {exc}"
            return reembed.fail_items(runtime(), job_id, item_ids, reason)
        raise self.retry(exc=exc, countdown=min(60, 2**self.request.retries)) from exc
