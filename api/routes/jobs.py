"""API: jobs (newest first, one job's status), and re-embedding jobs (start, watch, resume)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from api.deps import DispatcherDep, ReembedDefaultsDep, RuntimeDep, SessionDep
from api.schemas import (
    DEFAULT_PAGE,
    MAX_PAGE,
    JobPage,
    JobProgress,
    JobPublic,
    JobResumed,
    ReembedAccepted,
    ReembedCreate,
    encode_cursor,
    moment_cursor,
)
from services import jobs
from thaw.schema import JobKind, JobStatus

router = APIRouter(tags=["jobs"])


@router.get("/jobs", response_model=JobPage)
def list_jobs(
    session: SessionDep,
    cursor: Annotated[str | None, Query(max_length=1024, description="next_cursor of the previous page")] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = DEFAULT_PAGE,
    status: JobStatus | None = None,
    kind: JobKind | None = None,
) -> JobPage:
    """Jobs newest first, of a `status` and `kind` when given, page by page."""
    before = moment_cursor("jobs", cursor, str)
    page, last = jobs.listed(session, before, limit, status=status, kind=kind)
    return JobPage(
        jobs=[JobPublic.model_validate(job, from_attributes=True) for job in page],
        next_cursor=None if last is None else encode_cursor("jobs", last[0].isoformat(), last[1]),
    )


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
