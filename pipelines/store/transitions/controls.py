"""What a person does to a run: cancel it or one of its jobs, play a manual job (retrying one is
:mod:`pipelines.store.transitions.retry`).

Cancelling only touches what has not finished: a run that has ended (``finished_at`` set) or a
job in a final state is left as it is, and :func:`cancel_unfinished_run` /
:func:`cancel_unfinished_job` raise :class:`~pipelines.store.errors.RunFinished` /
``JobFinished`` (the API answers 409) instead of rewriting a finished run's status to
``cancelled``. The check and the cancel happen in one transaction under the run's row lock, so a
run cannot finish between the two. In the same way :func:`play_manual_job` raises
:class:`NotPlayable` (409) for a job that is not a manual job waiting to be played, where
:func:`play_job` (local mode's) quietly does nothing.

::

    StoreError (pipelines.store.errors)
    └── NotPlayable    the job cannot be played now; ``reason`` says why in a sentence
"""

from __future__ import annotations

import datetime as dt

from sqlmodel import Session

from pipelines.store.advance import FINAL_JOB_STATUSES, Standing
from pipelines.store.approvals import WAITING_FOR_APPROVAL
from pipelines.store.errors import JobFinished, JobNotFound, RunFinished, RunNotFound, StoreError
from pipelines.store.models import Run
from pipelines.store.progress import recount, set_counts
from pipelines.store.statements import CANCEL_WAITING, LOCK_JOB_STATE, LOCK_RUN_STATE, REQUEST_CANCEL, WAITING
from pipelines.store.transitions.step import Step, lock_run, settle, standing, write_run


def cancel_run(session: Session, run_id: str, now: dt.datetime) -> Run:
    """Cancel a run: waiting jobs become ``cancelled`` and never start; running ones get
    ``cancel_requested``, which their worker sees when it renews its lease. Every job of the
    run changes, so this is two set-wise UPDATEs and one recount, not a walk of the graph."""
    run = lock_run(session, run_id)
    connection = session.connection()
    connection.execute(CANCEL_WAITING, {"p_run_id": run.id, "p_now": now})
    connection.execute(REQUEST_CANCEL, {"p_run_id": run.id})
    run.cancelled = True
    set_counts(run, recount(connection, run.id, len(run.stages)), now)
    write_run(connection, run)
    return run


def cancel_job(session: Session, job_id: str, now: dt.datetime) -> list[str]:
    """Cancel one job: a waiting one at once (its dependents are skipped, ``when: on_failure``
    jobs may start: their ids are returned), a running one by setting ``cancel_requested``."""
    step = Step.begin(session, job_id)
    job = step.load_job(job_id)
    if job.status == "running":
        job.cancel_requested = True
        step.changed(job, Standing("running", job.allow_failure))
        return step.finish(now)
    if job.status not in WAITING:
        return []
    before = standing(job)
    settle(job, "cancelled", "cancelled", now)
    step.changed(job, before)
    return step.finish(now)


class NotPlayable(StoreError):
    def __init__(self, job_id: str, status: str, reason: str) -> None:
        super().__init__(f"job {job_id!r} cannot be played: {reason}")
        self.job_id, self.status, self.reason = job_id, status, reason


def play_refusal(job_status: str, run_status: str, run_cancelled: bool) -> str | None:
    """Why a job in ``job_status`` cannot be played now; None if it can (a ``manual`` job of a live run).

    >>> play_refusal("manual", "manual", False) is None
    True
    >>> play_refusal("succeeded", "succeeded", False)
    'it is not a manual job waiting to be played (it is succeeded; a finished job is retried instead)'
    """
    if run_status == WAITING_FOR_APPROVAL:
        return "its run is waiting for approval (approve the run first)"
    if run_cancelled:
        return "its run was cancelled"
    if job_status == "manual":
        return None
    if job_status == "created":
        return "it is not a manual job waiting to be played (it still waits for the jobs before it)"
    hint = "; a finished job is retried instead" if job_status in FINAL_JOB_STATUSES - {"skipped"} else ""
    return f"it is not a manual job waiting to be played (it is {job_status}{hint})"


def play_job(session: Session, job_id: str, now: dt.datetime) -> list[str]:
    """Start a ``manual`` job (GitLab's "play"); returns ``[job_id]`` if it was queued, ``[]``
    (nothing changed) if it was not a manual job of a live run."""
    try:
        return play_manual_job(session, job_id, now)
    except NotPlayable:
        return []


def play_manual_job(session: Session, job_id: str, now: dt.datetime) -> list[str]:
    """Start a ``manual`` job; returns ``[job_id]`` (publish it after the commit).
    :class:`NotPlayable` (nothing changed) when it is not one waiting to be played."""
    step = Step.begin(session, job_id)
    job = step.load_job(job_id)
    refusal = play_refusal(job.status, step.run.status, step.run.cancelled)
    if refusal is not None:
        raise NotPlayable(job_id, job.status, refusal)
    before = standing(job)
    step.queue(job, now)
    step.changed(job, before)
    step.finish(now)
    return [job.id]


def cancel_unfinished_run(session: Session, run_id: str, now: dt.datetime) -> Run:
    """Cancel the run unless it has ended (:class:`RunFinished`, nothing changed)."""
    row = session.connection().execute(LOCK_RUN_STATE, {"p_run_id": run_id}).first()
    if row is None:
        raise RunNotFound(run_id)
    if row.finished_at is not None:
        raise RunFinished(run_id, row.status)
    return cancel_run(session, run_id, now)


def cancel_unfinished_job(session: Session, job_id: str, now: dt.datetime) -> list[str]:
    """Cancel the job unless it is final (:class:`JobFinished`); the ids it made ready."""
    row = session.connection().execute(LOCK_JOB_STATE, {"p_job_id": job_id}).first()
    if row is None:
        raise JobNotFound(job_id)
    if row.status in FINAL_JOB_STATUSES:
        raise JobFinished(job_id, row.status)
    return cancel_job(session, job_id, now)
