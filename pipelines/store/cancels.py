"""Cancelling only what has not finished (adapter over :mod:`pipelines.store.transitions`).

A run that has ended (``finished_at`` set) or a job in a final state is left as it is: cancelling
it raises :class:`~pipelines.store.errors.RunFinished` / ``JobFinished`` (the API answers 409)
instead of rewriting a finished run's status to ``cancelled``. The check and the cancel happen in
one transaction under the run's row lock, so a run cannot finish between the two.
"""

from __future__ import annotations

import datetime as dt

import sqlalchemy as sa
from sqlmodel import Session

from pipelines.store.advance import FINAL_JOB_STATUSES
from pipelines.store.errors import JobFinished, JobNotFound, RunFinished, RunNotFound
from pipelines.store.models import Job, Run
from pipelines.store.transitions import cancel_job, cancel_run

_RUNS = Run.__table__  # type: ignore[attr-defined]
_JOBS = Job.__table__  # type: ignore[attr-defined]
_LOCK_RUN = sa.select(_RUNS.c.id, _RUNS.c.status, _RUNS.c.finished_at).where(
    _RUNS.c.id == sa.bindparam("p_run_id")).with_for_update()
_LOCK_RUN_OF_JOB = (
    sa.select(_RUNS.c.id, _JOBS.c.status)
    .join(_JOBS, _JOBS.c.run_id == _RUNS.c.id)
    .where(_JOBS.c.id == sa.bindparam("p_job_id"))
    .with_for_update(of=_RUNS)
)


def cancel_unfinished_run(session: Session, run_id: str, now: dt.datetime) -> Run:
    """Cancel the run unless it has ended (:class:`RunFinished`, nothing changed)."""
    row = session.connection().execute(_LOCK_RUN, {"p_run_id": run_id}).first()
    if row is None:
        raise RunNotFound(run_id)
    if row.finished_at is not None:
        raise RunFinished(run_id, row.status)
    return cancel_run(session, run_id, now)


def cancel_unfinished_job(session: Session, job_id: str, now: dt.datetime) -> list[str]:
    """Cancel the job unless it is final (:class:`JobFinished`); the ids it made ready."""
    row = session.connection().execute(_LOCK_RUN_OF_JOB, {"p_job_id": job_id}).first()
    if row is None:
        raise JobNotFound(job_id)
    if row.status in FINAL_JOB_STATUSES:
        raise JobFinished(job_id, row.status)
    return cancel_job(session, job_id, now)
