"""A worker's hold on a job: the claim (queued → running) and the lease it renews while it runs.

Both are single compare-and-set ``UPDATE``\\ s on the job's row, not transitions of the run:
a claim that loses (a duplicate or stale message, a cancelled run) changes nothing and returns
None, a renewal of an attempt that is no longer this worker's returns ``held=False``. A lease
that is not renewed expires, and :func:`pipelines.store.transitions.results.expire_leases`
settles the job.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from sqlmodel import Session

from pipelines.store.models import Job
from pipelines.store.reads import cancel_requested, restored_job
from pipelines.store.spec import spec_field
from pipelines.store.statements import CLAIM, RENEW_LEASE, RUN_JOB_VARIABLES, SET_DEADLINE

DEADLINE_GRACE_S = 60.0  # past its timeout plus this, a running job is failed even if leased


@dataclass(frozen=True, slots=True)
class LeaseStatus:
    """What a worker learns when it renews its lease: keep going, or stop the job."""

    held: bool
    cancel_requested: bool


def claim_job(session: Session, job_id: str, worker_id: str, now: dt.datetime, lease_s: float) -> Job | None:
    """Compare-and-set queued → running for ``worker_id`` (attempt + 1, lease until now +
    ``lease_s``). None when the job is not queued (already claimed, finished, cancelled: a
    duplicate or stale message) or its run is cancelled; the caller then does nothing.

    The job returned is a snapshot of the claimed row with its whole spec, not attached to
    ``session``: the claim is on every job's path, so it is one prepared statement that returns
    the row (and the run's shared variables), not ORM work.
    """
    connection = session.connection()
    row = connection.execute(
        CLAIM, {"p_job_id": job_id, "p_owner": worker_id, "p_lease": now + dt.timedelta(seconds=lease_s), "p_now": now}
    ).first()
    if row is None:
        return None
    values = dict(row._mapping)
    job = restored_job(connection, values, values.pop(RUN_JOB_VARIABLES))
    timeout = spec_field(job.spec, "timeout_seconds")
    if isinstance(timeout, int):
        job.deadline_at = now + dt.timedelta(seconds=timeout + DEADLINE_GRACE_S)
        connection.execute(SET_DEADLINE, {"p_job_id": job_id, "p_deadline": job.deadline_at})
    return job


def renew_lease(
    session: Session, job_id: str, worker_id: str, attempt: int, now: dt.datetime, lease_s: float
) -> LeaseStatus:
    """Extend the lease of a running attempt; ``held=False`` means the attempt is no longer
    this worker's (it expired and was retried or failed): stop the job, do not report it."""
    renewed = session.connection().execute(RENEW_LEASE, {
        "p_job_id": job_id, "p_owner": worker_id, "p_attempt": attempt,
        "p_lease": now + dt.timedelta(seconds=lease_s),
    })
    if renewed.rowcount != 1:
        return LeaseStatus(held=False, cancel_requested=True)
    return LeaseStatus(held=True, cancel_requested=cancel_requested(session.connection(), job_id))
