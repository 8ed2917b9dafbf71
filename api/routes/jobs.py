"""API: job status."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException
from sqlalchemy.orm import Session

from api.deps import RuntimeDep
from api.schemas import JobPublic
from thaw.db import Job

router = APIRouter(tags=["jobs"])


@router.get("/jobs/{job_id}", response_model=JobPublic)
def read_job(job_id: str, rt: RuntimeDep) -> JobPublic:
    with Session(rt.engine) as session:
        job = session.get(Job, job_id)
        if job is None:
            raise HTTPException(404, f"job {job_id!r} does not exist")
        return JobPublic.model_validate(job, from_attributes=True)
