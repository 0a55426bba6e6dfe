"""``/api/v1/jobs/{id}``: the job result record, and cancel."""

from __future__ import annotations

from fastapi import APIRouter

from api import runs
from api.deps import CallerDep, EngineDep, PublisherDep, SessionDep
from api.routes import answer_head
from api.schemas import JobPublic

router = APIRouter(prefix="/jobs", tags=["jobs"])


@router.get("/{job_id}", response_model=JobPublic)
def get_job(job_id: str, _caller: CallerDep, session: SessionDep) -> JobPublic:
    return runs.read_job(session, job_id)


@router.post("/{job_id}/cancel", response_model=JobPublic,
             responses={409: {"description": "the job has already finished; nothing was changed"}})
def cancel_job(job_id: str, _caller: CallerDep, engine: EngineDep, publisher: PublisherDep) -> JobPublic:
    return runs.cancel_job_now(engine, publisher, job_id)


answer_head(router)
