"""What the rest of sandpit reads from the run store (adapter): runs, jobs, their artifacts.

Every read outside the store is a named function here, run on a caller's session (or, for the
few on every request's path, an engine's read-only connection: :func:`pipelines.store.db.reader`).
What they return are snapshots or plain values, never objects a caller could write back.

A job row keeps its spec in the stored form (:mod:`pipelines.store.spec`); every read that
returns a job gives it back whole (:func:`restored_job`), so no caller sees the difference.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session

from pipelines.language.model import Job as PlannedJob
from pipelines.store.models import Job, Run
from pipelines.store.spec import job_from_spec, leading_jobs, restore_spec

_JOBS: Any = Job.__table__  # type: ignore[attr-defined]
_RUNS: Any = Run.__table__  # type: ignore[attr-defined]
_FIRST_NAMES = (
    sa.select(_JOBS.c.name)
    .where(_JOBS.c.run_id == sa.bindparam("p_run_id"), _JOBS.c.position < sa.bindparam("p_count"))
    .order_by(_JOBS.c.position)
)
_RUN_JOBS = sa.select(_JOBS).where(_JOBS.c.run_id == sa.bindparam("p_run_id")).order_by(_JOBS.c.position)
_JOB_VARIABLES = sa.select(_RUNS.c.job_variables).where(_RUNS.c.id == sa.bindparam("p_run_id"))


def restored_job(connection: sa.Connection, row: Mapping[str, Any], job_variables: Sequence[Sequence[str]] | None,
                 first_names: Sequence[str] | None = None) -> Job:
    """A snapshot of a job row with its whole spec (and ``needs``) put back from what its run
    holds: the run's ``job_variables`` and, for a job that follows stage order, the names of the
    run's first jobs (``first_names`` when the caller has them, else one read by position)."""
    spec = row["spec"]
    count = leading_jobs(spec)
    if count and first_names is None:
        first_names = connection.execute(_FIRST_NAMES, {"p_run_id": row["run_id"], "p_count": count}).scalars().all()
    whole = restore_spec(spec, job_variables or (), first_names or ())
    return Job(**{**row, "spec": whole, "needs": list(whole.get("depends_on") or ())})


def run_jobs(session: Session, run_id: str) -> list[Job]:
    """The run's jobs in plan order, whole (an empty list for an unknown run)."""
    connection = session.connection()
    rows = [dict(row._mapping) for row in connection.execute(_RUN_JOBS, {"p_run_id": run_id})]
    if not rows:
        return []
    shared = connection.execute(_JOB_VARIABLES, {"p_run_id": run_id}).scalar_one_or_none()
    names = [row["name"] for row in rows]
    return [restored_job(connection, row, shared, names) for row in rows]


def planned_jobs(session: Session, run_id: str) -> list[PlannedJob]:
    """The run's jobs as the planner made them (what a worker runs), in plan order."""
    return [job_from_spec(job.spec) for job in run_jobs(session, run_id)]
