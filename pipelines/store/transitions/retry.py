"""Retrying one finished job of a run (GitLab's per-job "Retry"): a new attempt of the same job.

A job that ended — succeeded, failed, errored or was cancelled, as GitLab allows any finished job
— goes back to ``queued`` as attempt N + 1 (the claim counts it; the history keeps attempt N,
now marked ``retried``), in one transaction under the run's lock:

- the job starts fresh: no result, usage, log or lease; the artifacts attempt N kept expire now
  (the sweeper removes them as it removes any expired artifact), so what the job holds, and what
  its dependents fetch, is the new attempt's;
- the jobs it let skip become waiting again (``created``), as GitLab's ``ResetSkippedJobsService``
  does: its skipped dependents by ``needs``, the skipped jobs of later stages that follow stage
  order, and theirs in turn. Each change goes through the frontier like any other
  (:class:`~pipelines.store.transitions.step.Step`), so the waiting jobs' counts stay true and they
  are decided once the retried job has ended. GitLab resets every skipped job of the later stages;
  a job here that does not depend on the retried one is left as it is (nothing it waits for
  changed). Jobs that are ``manual`` or were cancelled stay so (GitLab keeps them too);
- the run reopens: its status, end and counters are recounted by the step as for any transition;
  a run cancelled as a whole is live again (GitLab retries jobs of a cancelled pipeline), though
  its other cancelled jobs stay cancelled until retried themselves; a watched run's forge is told
  again (its commit-status watch is no longer final).

Nothing else of the run changes: its trust, variables and secrets are the ones it was stored
with, whoever asks for the retry. An automatic ``retry:`` counts every attempt, the ones a person
asked for too (GitLab counts them the same way).

Refused (:class:`NotRetryable`, nothing changed) for a job that has not ended (queued, running,
created, manual: cancel it or play it instead), a skipped job (retry what it depends on), and any
job of a run waiting for approval.

::

    StoreError (pipelines.store.errors)
    └── NotRetryable    the job cannot be retried now; ``reason`` says why in a sentence
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from types import SimpleNamespace
from typing import cast

from sqlmodel import Session

from pipelines.language.model import AllowFailure
from pipelines.store.approvals import WAITING_FOR_APPROVAL
from pipelines.store.control_statements import (
    EXPIRE_JOB_ARTIFACTS,
    MARK_ATTEMPT_RETRIED,
    REOPEN_STATUS_WATCH,
    SKIPPED_EDGE_DEPENDENTS,
    SKIPPED_STAGE_FOLLOWERS,
)
from pipelines.store.errors import StoreError
from pipelines.store.models import Job
from pipelines.store.outbox import mark_queued
from pipelines.store.progress import write_outbox
from pipelines.store.spec import spec_field
from pipelines.store.transitions.step import Step, standing

RETRYABLE_STATUSES = frozenset({"succeeded", "failed", "error", "cancelled"})


class NotRetryable(StoreError):
    def __init__(self, job_id: str, status: str, reason: str) -> None:
        super().__init__(f"job {job_id!r} cannot be retried: {reason}")
        self.job_id, self.status, self.reason = job_id, status, reason


@dataclass(frozen=True, slots=True)
class Retried:
    """What :func:`retry_job` did: the job queued again as ``attempt`` (its number once claimed),
    the ids to publish after the commit, the jobs made to wait again."""

    job_id: str
    run_id: str
    attempt: int
    queued: tuple[str, ...]
    reset: tuple[str, ...]


def retry_refusal(job_status: str, run_status: str) -> str | None:
    """Why a job in ``job_status`` of a run in ``run_status`` cannot be retried; None if it can.

    >>> retry_refusal("failed", "failed") is None, retry_refusal("succeeded", "cancelled") is None
    (True, True)
    >>> retry_refusal("running", "running")
    'it is still running (cancel it, or wait for it to end)'
    """
    if run_status == WAITING_FOR_APPROVAL:
        return "its run is waiting for approval (approve the run first)"
    if job_status in ("queued", "running"):
        return f"it is still {job_status} (cancel it, or wait for it to end)"
    if job_status == "created":
        return "it has not run yet: it waits for the jobs before it"
    if job_status == "manual":
        return "it is a manual job that has not run (play it instead)"
    if job_status == "skipped":
        return "it was skipped (retry the job it depends on: what it let skip runs again once that passes)"
    if job_status not in RETRYABLE_STATUSES:
        return f"its status {job_status!r} is not one a job ends in"
    return None


def retry_job(session: Session, job_id: str, now: dt.datetime, *, mark_sent: bool = False) -> Retried:
    """Queue finished job ``job_id`` again as a new attempt (see the module docstring); publish
    ``queued`` after the commit. ``mark_sent``: its outbox row is written as published (the caller
    sends right after the commit, and calls ``outbox.mark_unpublished`` if that fails).
    :class:`NotRetryable` when it cannot be, ``JobNotFound`` for an unknown id."""
    step = Step.begin(session, job_id)
    job = step.load_job(job_id)
    refusal = retry_refusal(job.status, step.run.status)
    if refusal is not None:
        raise NotRetryable(job_id, job.status, refusal)
    connection = step.connection
    before = standing(job)
    retried_attempt = job.attempt
    _start_afresh(job, now)
    step.changed(job, before)
    reset = _reset_what_it_skipped(step, job)
    step.run.cancelled = False
    connection.execute(MARK_ATTEMPT_RETRIED, {"p_job_id": job.id, "p_attempt": retried_attempt})
    connection.execute(EXPIRE_JOB_ARTIFACTS, {"p_job_id": job.id, "p_now": now})
    connection.execute(REOPEN_STATUS_WATCH, {"p_run_id": step.run.id})
    newly = step.finish(now)
    write_outbox(connection, [job.id], now, sent=mark_sent)
    return Retried(job.id, step.run.id, retried_attempt + 1, (job.id, *newly), tuple(j.id for j in reset))


def _start_afresh(job: Job, now: dt.datetime) -> None:
    """``job`` (a snapshot) as a queued job that has not run: no result, lease or log of the
    attempt before; whether a failure is allowed is the plan's again (a result decides it)."""
    mark_queued(job, now)
    job.reason = None
    job.exit_code = job.signal = None
    job.cancel_requested = False
    job.started_at = job.finished_at = None
    job.duration_s = None
    job.usage, job.result = {}, {}
    job.log_path = None
    job.allow_failure = cast(AllowFailure, spec_field(job.spec, "allow_failure")).allowed


def _reset_what_it_skipped(step: Step, retried: Job) -> list[Job]:
    """Every skipped job downstream of ``retried`` through skipped jobs, made ``created`` again in
    ``step`` (plan order). Walked level by level: one read of the edges' dependents per level, and
    one of the stage-order followers whenever a level reaches an earlier stage than before."""
    connection = step.connection
    found: dict[str, Job] = {}
    level = [retried]
    followers_after: int | None = None  # the stage after which the followers were read already
    while level:
        rows = list(connection.execute(SKIPPED_EDGE_DEPENDENTS, {"p_ids": [job.id for job in level]}))
        earliest = min(job.stage_index for job in level)
        if followers_after is None or earliest < followers_after:
            followers_after = earliest
            rows += connection.execute(SKIPPED_STAGE_FOLLOWERS, {"p_run_id": step.run.id, "p_stage": earliest})
        level = []
        for row in rows:
            if row.id not in found:
                # an attribute bag with a Job's columns, which is all a step reads and writes: a
                # SQLModel object costs 0.4 ms to build, two thirds of resetting 1,000 jobs
                job = cast(Job, SimpleNamespace(**row._mapping))
                found[job.id] = job
                level.append(job)
    reset = sorted(found.values(), key=lambda job: job.position)
    for job in reset:
        before = standing(job)
        job.status, job.reason, job.finished_at, job.queued_at = "created", None, None, None
        step.changed(job, before)
    return reset
