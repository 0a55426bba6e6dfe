"""``POST /api/v1/runs/{id}/approve`` and ``GET /api/v1/approvals``: runs held for an admin (thin routes).

A fork's pull request under ``fork_policy: approve`` is stored held (``waiting_for_approval``,
nothing queued); a trusted token approves it, and its jobs are queued and published as any run's
(:func:`pipelines.store.approvals.approve_run`, then :func:`api.runs.publish_committed`). The run
stays untrusted: approving says "run it", not "trust it".
"""

from __future__ import annotations

import datetime as dt

from fastapi import APIRouter
from pydantic import BaseModel
from sqlalchemy.engine import Engine

from api import runs
from api.deps import EngineDep, PublisherDep
from api.errors import ApiError
from api.publish import Publisher
from api.routes.repos import AdminDep
from api.schemas import RunPublic
from pipelines.store.approvals import NotWaiting, approve_run, waiting_runs
from pipelines.store.db import read_scope, session_scope

router = APIRouter(tags=["approvals"])


class NotWaitingForApproval(ApiError):
    status_code = 409
    code = "not_waiting"


class WaitingRunPublic(BaseModel):
    run_id: str
    repository: str | None
    ref: str
    sha: str
    title: str
    merge_request_iid: int | None
    requested_at: dt.datetime


def approve_now(engine: Engine, publisher: Publisher, run_id: str, approved_by: str) -> RunPublic:
    """Approve the held run, publish its queued jobs, return its new state."""
    try:
        with session_scope(engine) as session:
            queued = approve_run(session, run_id, approved_by, dt.datetime.now(dt.UTC))
    except NotWaiting as exc:
        raise NotWaitingForApproval(str(exc)) from None
    runs.publish_committed(engine, publisher, queued)
    return runs.read_run(engine, run_id)


@router.post("/runs/{run_id}/approve", response_model=RunPublic, responses={
    403: {"description": "not a trusted token"}, 404: {"description": "no such run"},
    409: {"description": "`not_waiting`: the run is not held for approval; `run_finished`: it was cancelled"}})
def approve(run_id: str, caller: AdminDep, engine: EngineDep, publisher: PublisherDep) -> RunPublic:
    return approve_now(engine, publisher, run_id, f"token:{caller.name}")


@router.get("/approvals", response_model=list[WaitingRunPublic])
def list_waiting(_caller: AdminDep, engine: EngineDep, limit: int = 50) -> list[WaitingRunPublic]:
    with read_scope(engine) as session:
        return [WaitingRunPublic.model_validate(w, from_attributes=True) for w in waiting_runs(session, limit)]
