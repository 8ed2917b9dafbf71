"""API: job status, and re-embedding jobs (start, watch, resume)."""

from __future__ import annotations

from fastapi import APIRouter

from api.deps import DispatcherDep, ReembedDefaultsDep, RuntimeDep, SessionDep
from api.schemas import JobProgress, JobPublic, JobResumed, ReembedAccepted, ReembedCreate
from services import jobs

router = APIRouter(tags=["jobs"])


@router.get("/jobs/{job_id}", response_model=JobPublic)
def read_job(job_id: str, session: SessionDep) -> JobPublic:
    job, figures = jobs.read(session, job_id)
    public = JobPublic.model_validate(job, from_attributes=True)
    if figures is not None:
        public.progress = JobProgress.model_validate(figures)
    return public


@router.post("/jobs/reembed", status_code=202, response_model=ReembedAccepted)
def start_reembed(
    body: ReembedCreate, rt: RuntimeDep, dispatcher: DispatcherDep, defaults: ReembedDefaultsDep
) -> ReembedAccepted:
    """Re-embed every item (or those whose served payload matches `filter`) with `model_version` into that
    version's collections, fanned out over the workers; the served version switches when the job succeeds.
    Watch with GET /jobs/{job_id}."""
    started = jobs.start_reembed(
        rt,
        dispatcher,
        defaults,
        body.model_version,
        body.filter,
        chunk_size=body.chunk_size,
        max_failed_share=body.max_failed_share,
    )
    return ReembedAccepted(
        job_id=started.job_id, model_version=body.model_version, total=started.total, chunks=len(started.chunks)
    )


@router.post("/jobs/{job_id}/resume", status_code=202, response_model=JobResumed)
def resume_job(job_id: str, rt: RuntimeDep, dispatcher: DispatcherDep) -> JobResumed:
    """Send a re-embedding job's pending items again (safe at any time: finished items are not redone)."""
    return JobResumed(job_id=job_id, chunks=jobs.resume(rt, dispatcher, job_id))
