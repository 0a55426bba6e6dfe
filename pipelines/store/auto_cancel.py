"""A run's ``workflow:auto_cancel`` settings, and ``on_job_failure: all`` (adapter; "now" is passed in).

The settings are written with the run (:func:`record_auto_cancel`, called by ``create_run``), as
GitLab keeps them in the pipeline's metadata, and only when they are not the defaults, so a run
without a row is ``conservative`` / ``none``. :mod:`pipelines.store.superseding` reads
``on_new_commit`` of each older run (:func:`auto_cancel_of`).

``on_job_failure: all`` (GitLab's ``Ci::Processable`` after a job's transition to failed: not
for a job allowed to fail, nor for one that will be retried) cancels every other job of the run
that can still be cancelled — the waiting ones (``created``, ``queued``) at once, the running ones
asked to stop (``cancel_requested``, seen at their next lease check) — while manual jobs stay
manual (GitLab's cancelable statuses leave them out). The run is not marked cancelled: its status
comes from its jobs and is ``failed`` (a job failed), as GitLab's is. It runs in the transaction
that recorded the failure (:func:`cancel_rest_on_failure`, called by ``finish_job`` and
``expire_leases``), under the run's lock that transition holds: two set-wise ``UPDATE``s and one
recount, whatever the size of the run.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, cast

import sqlalchemy as sa
from sqlmodel import Session

from pipelines.language.model import AutoCancel, OnJobFailure, OnNewCommit
from pipelines.store.models import Job, Run, RunAutoCancel, UTCDateTime
from pipelines.store.progress import recount, run_values, set_counts
from pipelines.store.statements import LOCK_RUN, RUN_MUTABLE, UPDATE_RUN

_SETTINGS: Any = RunAutoCancel.__table__  # type: ignore[attr-defined]
_JOBS: Any = Job.__table__  # type: ignore[attr-defined]

_INSERT = sa.insert(_SETTINGS).values(run_id=sa.bindparam("p_run"), on_new_commit=sa.bindparam("p_new_commit"),
                                      on_job_failure=sa.bindparam("p_job_failure"))
_READ = sa.select(_SETTINGS.c.on_new_commit, _SETTINGS.c.on_job_failure).where(
    _SETTINGS.c.run_id == sa.bindparam("p_run"))
#: GitLab's cancelable statuses, as sandpit names them: not ``manual``
_CANCEL_WAITING = (
    sa.update(_JOBS)
    .where(_JOBS.c.run_id == sa.bindparam("p_run"), _JOBS.c.status.in_(("created", "queued")))
    .values(status="cancelled", reason="cancelled", finished_at=sa.bindparam("p_now", type_=UTCDateTime()),
            lease_owner=None, lease_expires_at=None, deadline_at=None)
)
_STOP_RUNNING = (
    sa.update(_JOBS)
    .where(_JOBS.c.run_id == sa.bindparam("p_run"), _JOBS.c.status == "running")
    .values(cancel_requested=True)
)
FAILED = frozenset({"failed", "error"})


def record_auto_cancel(session: Session, run_id: str, settings: AutoCancel) -> None:
    """Keep the run's settings (in the run's transaction); nothing is written for the defaults."""
    if settings.is_default():
        return
    session.connection().execute(_INSERT, {"p_run": run_id, "p_new_commit": settings.on_new_commit,
                                           "p_job_failure": settings.on_job_failure})


def auto_cancel_of(session: Session, run_id: str) -> AutoCancel:
    """The run's settings (GitLab's defaults when it kept none)."""
    row = session.connection().execute(_READ, {"p_run": run_id}).first()
    if row is None:
        return AutoCancel()
    return AutoCancel(cast(OnNewCommit, row.on_new_commit), cast(OnJobFailure, row.on_job_failure))


def cancel_rest_on_failure(session: Session, job: Job, now: dt.datetime) -> bool:
    """After ``job``'s result was written: if it failed for good (not allowed to, not retried) and
    its run says ``on_job_failure: all``, cancel the run's other jobs (see the module docstring).
    True when it did; the caller's newly queued jobs are then cancelled too (publishing them
    claims nothing)."""
    if job.status not in FAILED or job.allow_failure:
        return False
    if auto_cancel_of(session, job.run_id).on_job_failure != "all":
        return False
    connection = session.connection()
    # the transition that recorded the failure holds this lock already (this module sits below
    # pipelines.store.transitions, which imports it, so it takes the run row itself)
    row = connection.execute(LOCK_RUN, {"p_run_id": job.run_id}).first()
    if row is None:
        return False
    run = Run(**row._mapping)
    if run.finished_at is not None or run.cancelled:
        return False
    connection.execute(_CANCEL_WAITING, {"p_run": run.id, "p_now": now})
    connection.execute(_STOP_RUNNING, {"p_run": run.id})
    set_counts(run, recount(connection, run.id, len(run.stages)), now)
    values = run_values(run)
    connection.execute(UPDATE_RUN, {"b_id": run.id, **{f"b_{k}": values[k] for k in RUN_MUTABLE}})
    return True
