"""API: job status, and re-embedding jobs (start, watch, resume)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException, Request
from sqlalchemy.orm import Session

from api.deps import RuntimeDep
from api.schemas import JobProgress, JobPublic, JobResumed, ReembedAccepted, ReembedCreate
from thaw.db import Job
from thaw.runtime import Runtime
from workers import reembed

router = APIRouter(tags=["jobs"])


def send_chunks(celery: object, job_id: str, chunks: list[list[str]]) -> None:
    for chunk in chunks:
        celery.send_task("thaw.reembed_chunk", args=[job_id, chunk])  # type: ignore[attr-defined]


def start_job(
    request: Request,
    rt: Runtime,
    version: str,
    match: dict[str, Any] | None,
    chunk_size: int | None = None,
    max_failed_share: float | None = None,
) -> reembed.Started:
    """Record a re-embedding job with the service's defaults for what the request leaves out."""
    settings = request.app.state.settings
    return reembed.start(
        rt,
        version,
        match,
        chunk_size=chunk_size or settings.reembed_chunk_size,
        max_failed_share=settings.reembed_max_failed_share if max_failed_share is None else max_failed_share,
        keep_versions=settings.keep_versions,
    )


@router.get("/jobs/{job_id}", response_model=JobPublic)
def read_job(job_id: str, rt: RuntimeDep) -> JobPublic:
    with Session(rt.engine) as session:
        job = session.get(Job, job_id)
        if job is None:
            raise HTTPException(404, f"job {job_id!r} does not exist")
        public = JobPublic.model_validate(job, from_attributes=True)
        figures = reembed.progress(session, job) if job.kind == "reembed" else None
        if figures is not None:
            public.progress = JobProgress.model_validate(figures)
        return public


@router.post("/jobs/reembed", status_code=202, response_model=ReembedAccepted)
def start_reembed(body: ReembedCreate, request: Request, rt: RuntimeDep) -> ReembedAccepted:
    """Re-embed every item (or those whose served payload matches `filter`) with `model_version` into that
    version's collections, fanned out over the workers; the served version switches when the job succeeds.
    Watch with GET /jobs/{job_id}."""
    from encoders.artifacts import list_versions

    known = list_versions(rt.models_dir)
    if body.model_version not in known:
        raise HTTPException(404, f"unknown model version {body.model_version!r}; the models directory has {known}")
    try:
        started = start_job(request, rt, body.model_version, body.filter, body.chunk_size, body.max_failed_share)
    except reembed.JobConflictError as exc:
        raise HTTPException(409, str(exc)) from exc
    try:
        send_chunks(request.app.state.celery, started.job_id, started.chunks)
    except Exception as exc:  # broker down: the job is recorded and re-sent once it is found stalled
        raise HTTPException(
            503, f"job {started.job_id} recorded but the broker is unreachable ({exc}); it resumes when it is back"
        ) from exc
    return ReembedAccepted(
        job_id=started.job_id, model_version=body.model_version, total=started.total, chunks=len(started.chunks)
    )


@router.post("/jobs/{job_id}/resume", status_code=202, response_model=JobResumed)
def resume_job(job_id: str, request: Request, rt: RuntimeDep) -> JobResumed:
    """Send a re-embedding job's pending items again (safe at any time: finished items are not redone)."""
    try:
        chunks = reembed.resume(rt, job_id)
    except KeyError as exc:
        raise HTTPException(404, f"job {job_id!r} does not exist") from exc
    except reembed.JobConflictError as exc:
        raise HTTPException(409, str(exc)) from exc
    try:
        send_chunks(request.app.state.celery, job_id, chunks)
    except Exception as exc:
        raise HTTPException(503, f"the broker is unreachable: {exc}") from exc
    return JobResumed(job_id=job_id, chunks=len(chunks))
