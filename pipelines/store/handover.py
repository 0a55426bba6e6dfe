"""Taking over the lease of a running attempt from a worker process that is gone (adapter).

A worker that shares no disk with the API keeps a finished attempt's delivery in its outbox while
the API is away (``worker.upload_outbox``). If that worker process is restarted before the
delivery went through, the new process (another worker id: host name and pid) takes the lease
over with one compare-and-set — the job still ``running``, the same attempt, the old owner still
named — renews it as its own, delivers, and records the result. If the lease has expired and the
sweeper settled or retried the job meanwhile, the compare-and-set finds nothing and the delivery
is dropped: the attempt is over, as after any lost lease.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session

from pipelines.store.models import Job, UTCDateTime

_JOBS: Any = Job.__table__  # type: ignore[attr-defined]

TAKE_OVER = (
    _JOBS.update()
    .where(_JOBS.c.id == sa.bindparam("p_job_id"), _JOBS.c.status == "running",
           _JOBS.c.attempt == sa.bindparam("p_attempt"), _JOBS.c.lease_owner == sa.bindparam("p_old"))
    .values(lease_owner=sa.bindparam("p_new"), lease_expires_at=sa.bindparam("p_lease", type_=UTCDateTime()))
)


def take_over_lease(session: Session, job_id: str, attempt: int, old_owner: str, new_owner: str,
                    now: dt.datetime, lease_s: float) -> bool:
    """Make ``new_owner`` the holder of attempt ``attempt``'s lease if ``old_owner`` still holds it
    (whether or not it has expired, as long as nobody settled the job); True when it did."""
    result = session.connection().execute(TAKE_OVER, {
        "p_job_id": job_id, "p_attempt": attempt, "p_old": old_owner, "p_new": new_owner,
        "p_lease": now + dt.timedelta(seconds=lease_s)})
    return bool(result.rowcount == 1)
