"""Job and run state transitions: the database owns job state (adapter; "now" is passed in).

Job states::

    created ──► queued ──► running ──► succeeded | failed | error | cancelled
       │          ▲           │
       │          └─ retry ───┘  (also when its lease expires and retry allows)
       ├──► manual ──(play)──► queued
       └──► skipped (dependency_failed, or its `when` did not apply) | cancelled

Every function works in the caller's session and transaction (see ``db.session_scope``); the
caller commits and only then publishes the returned job ids. A transition that changes what a
run does next first locks the run's row (``SELECT … FOR UPDATE``; SQLite's ``BEGIN
IMMEDIATE`` does the same), so two jobs finishing at once cannot both miss a dependent that
needed them both. Claims and lease renewals are single compare-and-set ``UPDATE``\\ s.

The decisions themselves are pure and live in :mod:`pipelines.store.advance`.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import sqlalchemy as sa
from sqlmodel import Session, col, select, update

from pipelines.language.model import Plan
from pipelines.store.advance import (
    FINAL_JOB_STATUSES,
    JobState,
    RunStatus,
    decide_advance,
    derive_run_status,
    should_retry,
)
from pipelines.store.errors import JobNotFound, RunNotFound
from pipelines.store.models import Artifact, Job, JobAttempt, Run, UTCDateTime
from pipelines.store.outbox import enqueue
from pipelines.store.spec import job_from_spec, job_to_spec

Trust = Literal["trusted", "untrusted"]
Source = Literal["cli", "api", "webhook"]
TRUST_LEVELS = ("trusted", "untrusted")
SOURCES = ("cli", "api", "webhook")
REPORTED_STATUSES = frozenset({"succeeded", "failed", "cancelled", "error"})
DEADLINE_GRACE_S = 60.0  # past its timeout plus this, a running job is failed even if leased


@dataclass(frozen=True, slots=True)
class LeaseStatus:
    """What a worker learns when it renews its lease: keep going, or stop the job."""

    held: bool
    cancel_requested: bool


def _new_id() -> str:
    return str(uuid.uuid4())


@dataclass(frozen=True, slots=True)
class StoredRun:
    """What :func:`store_run` stored: the run, its jobs in plan order, the ids it queued."""

    run: Run
    jobs: tuple[Job, ...]
    queued: tuple[str, ...]


def create_run(
    session: Session,
    plan: Plan,
    *,
    trust: Trust,
    source: Source,
    variables: Mapping[str, str],
    now: dt.datetime,
    pipeline: str = "",
    ref: str = "",
    sha: str = "",
    message: str = "",
    secrets: Mapping[str, str] | None = None,
    new_id: Callable[[], str] = _new_id,
) -> Run:
    """Store a run and one job per planned job; jobs with nothing to wait for are queued
    (with outbox rows) and manual ones wait as ``manual``. Publish the run's queued jobs
    (``queued_job_ids``) after the commit. ``secrets`` are stored for the worker to inject
    and mask; nothing that shows a run may return them."""
    return store_run(
        session, plan, trust=trust, source=source, variables=variables, now=now, pipeline=pipeline,
        ref=ref, sha=sha, message=message, secrets=secrets, new_id=new_id,
    ).run


def store_run(
    session: Session,
    plan: Plan,
    *,
    trust: Trust,
    source: Source,
    variables: Mapping[str, str],
    now: dt.datetime,
    pipeline: str = "",
    ref: str = "",
    sha: str = "",
    message: str = "",
    secrets: Mapping[str, str] | None = None,
    new_id: Callable[[], str] = _new_id,
    run_id: str | None = None,
) -> StoredRun:
    """:func:`create_run`, also returning the jobs and the queued ids (no second read), with
    the run's id chosen by the caller if it wants (to listen for the run's events before its
    jobs are published)."""
    if trust not in TRUST_LEVELS:
        raise ValueError(f"trust must be one of {TRUST_LEVELS}, not {trust!r}")
    if source not in SOURCES:
        raise ValueError(f"source must be one of {SOURCES}, not {source!r}")
    run = Run(
        id=run_id or new_id(),
        created_at=now,
        trust=trust,
        source=source,
        pipeline=pipeline,
        variables=dict(variables),
        secrets=dict(secrets or {}),
        stages=list(plan.stages),
        ref=ref,
        sha=sha,
        message=message,
    )
    session.add(run)
    session.flush()  # no relationship() between the tables: flush in foreign-key order by hand
    jobs = [
        Job(
            id=new_id(),
            run_id=run.id,
            position=position,
            name=planned.name,
            stage=planned.stage,
            spec=job_to_spec(planned),
            needs=list(planned.depends_on),
            when=planned.when,
            allow_failure=planned.allow_failure.allowed,
        )
        for position, planned in enumerate(plan.jobs)
    ]
    session.add_all(jobs)
    session.flush()
    # the jobs are all new: the run advances from them as they are, without reading them back
    queued = _advance(session, run, now, jobs)
    return StoredRun(run, tuple(jobs), tuple(queued))


def queued_job_ids(session: Session, run_id: str) -> list[str]:
    """The run's jobs that are queued now, in plan order."""
    return list(
        session.exec(
            select(Job.id).where(Job.run_id == run_id, Job.status == "queued").order_by(col(Job.position))
        ).all()
    )


def claim_job(session: Session, job_id: str, worker_id: str, now: dt.datetime, lease_s: float) -> Job | None:
    """Compare-and-set queued → running for ``worker_id`` (attempt + 1, lease until now +
    ``lease_s``). None when the job is not queued (already claimed, finished, cancelled: a
    duplicate or stale message) or its run is cancelled; the caller then does nothing.

    The job returned is a snapshot of the claimed row, not attached to ``session``: the claim
    is on every job's path, so it is one prepared statement that returns the row, not ORM work.
    """
    connection = session.connection()
    row = connection.execute(
        _CLAIM, {"p_job_id": job_id, "p_owner": worker_id, "p_lease": now + dt.timedelta(seconds=lease_s), "p_now": now}
    ).first()
    if row is None:
        return None
    job = Job(**row._mapping)
    timeout = job_from_spec(job.spec).timeout_seconds
    if timeout is not None:
        job.deadline_at = now + dt.timedelta(seconds=timeout + DEADLINE_GRACE_S)
        connection.execute(_SET_DEADLINE, {"p_job_id": job_id, "p_deadline": job.deadline_at})
    return job


def read_run_row(session: Session, run_id: str) -> Run | None:
    """A snapshot of the run without its pipeline text (what a worker needs to run its job)."""
    row = session.connection().execute(_READ_RUN_FOR_WORKER, {"p_run_id": run_id}).first()
    return None if row is None else Run(**row._mapping)


_JOBS: Any = Job.__table__  # type: ignore[attr-defined]
_RUNS: Any = Run.__table__  # type: ignore[attr-defined]
_CLAIM = (
    sa.update(_JOBS)
    .where(
        _JOBS.c.id == sa.bindparam("p_job_id"),
        _JOBS.c.status == "queued",
        _JOBS.c.run_id.in_(sa.select(_RUNS.c.id).where(_RUNS.c.cancelled.is_(sa.false()))),
    )
    .values(
        status="running",
        attempt=_JOBS.c.attempt + 1,
        lease_owner=sa.bindparam("p_owner"),
        lease_expires_at=sa.bindparam("p_lease", type_=UTCDateTime()),
        started_at=sa.bindparam("p_now", type_=UTCDateTime()),
        finished_at=None,
        reason=None,
        exit_code=None,
        signal=None,
        cancel_requested=False,
    )
    .returning(*_JOBS.c)
)
_SET_DEADLINE = (
    sa.update(_JOBS)
    .where(_JOBS.c.id == sa.bindparam("p_job_id"))
    .values(deadline_at=sa.bindparam("p_deadline", type_=UTCDateTime()))
)
_READ_RUN_FOR_WORKER = sa.select(*(c for c in _RUNS.c if c.name != "pipeline")).where(
    _RUNS.c.id == sa.bindparam("p_run_id")
)


def renew_lease(
    session: Session, job_id: str, worker_id: str, attempt: int, now: dt.datetime, lease_s: float
) -> LeaseStatus:
    """Extend the lease of a running attempt; ``held=False`` means the attempt is no longer
    this worker's (it expired and was retried or failed): stop the job, do not report it."""
    renewed = session.exec(
        update(Job)
        .where(
            col(Job.id) == job_id,
            col(Job.status) == "running",
            col(Job.lease_owner) == worker_id,
            col(Job.attempt) == attempt,
        )
        .values(lease_expires_at=now + dt.timedelta(seconds=lease_s))
        .execution_options(synchronize_session=False)
    )
    if renewed.rowcount != 1:
        return LeaseStatus(held=False, cancel_requested=True)
    row = session.exec(
        select(Job.cancel_requested, Run.cancelled).join(Run, col(Run.id) == col(Job.run_id)).where(Job.id == job_id)
    ).one()
    return LeaseStatus(held=True, cancel_requested=bool(row[0] or row[1]))


def finish_job(session: Session, job_id: str, attempt: int, record: Mapping[str, Any], now: dt.datetime) -> list[str]:
    """Record the result of attempt ``attempt`` (a job result record), retry it if its
    ``retry`` allows, and advance the run. Returns the ids newly queued (publish them after the
    commit). A stale or duplicate report (the job is not running that attempt) changes nothing."""
    run, jobs = _lock_run_with_jobs(session, job_id)
    job = next(j for j in jobs if j.id == job_id)
    if job.status != "running" or job.attempt != attempt:
        return []
    return _record_result(session, run, job, dict(record), now, jobs)


def expire_leases(session: Session, now: dt.datetime, limit: int = 100) -> list[str]:
    """Settle running jobs whose worker vanished (lease expired: ``error``/``worker_lost``) or
    that ran past their timeout plus grace (``failed``/``timeout``): retried when ``retry``
    allows, else final. Returns the ids newly queued."""
    overdue = sa.or_(col(Job.lease_expires_at) < now, col(Job.deadline_at) < now)
    candidates = session.exec(
        select(Job.id).where(Job.status == "running", overdue).order_by(col(Job.lease_expires_at)).limit(limit)
    ).all()
    newly: list[str] = []
    for job_id in candidates:
        run, jobs = _lock_run_with_jobs(session, job_id)
        job = next(j for j in jobs if j.id == job_id)
        lease_gone = job.lease_expires_at is not None and job.lease_expires_at < now
        past_deadline = job.deadline_at is not None and job.deadline_at < now
        if job.status != "running" or not (lease_gone or past_deadline):
            continue  # renewed or finished while we looked
        status, reason = ("error", "worker_lost") if lease_gone else ("failed", "timeout")
        newly += _record_result(session, run, job, _lost_record(job, status, reason, now), now, jobs)
    return newly


def cancel_run(session: Session, run_id: str, now: dt.datetime) -> Run:
    """Cancel a run: waiting jobs become ``cancelled`` and never start; running ones get
    ``cancel_requested``, which their worker sees when it renews its lease."""
    run = _lock_run(session, run_id)
    run.cancelled = True
    session.add(run)
    for job in _jobs(session, run.id):
        if job.status in ("created", "queued", "manual"):
            _settle(job, "cancelled", "cancelled", now)
            session.add(job)
        elif job.status == "running":
            job.cancel_requested = True
            session.add(job)
    session.flush()
    _refresh_run(session, run, now)
    return run


def cancel_job(session: Session, job_id: str, now: dt.datetime) -> list[str]:
    """Cancel one job: a waiting one at once (its dependents are skipped, ``when: on_failure``
    jobs may start: their ids are returned), a running one by setting ``cancel_requested``."""
    run = _lock_run_of_job(session, job_id)
    job = _load_job(session, job_id)
    if job.status == "running":
        job.cancel_requested = True
        session.add(job)
        return []
    if job.status not in ("created", "queued", "manual"):
        return []
    _settle(job, "cancelled", "cancelled", now)
    session.add(job)
    session.flush()
    return _advance(session, run, now)


def play_job(session: Session, job_id: str, now: dt.datetime) -> list[str]:
    """Start a ``manual`` job (GitLab's "play"); returns ``[job_id]`` if it was queued."""
    run = _lock_run_of_job(session, job_id)
    job = _load_job(session, job_id)
    if job.status != "manual" or run.cancelled:
        return []
    enqueue(session, job, now)
    session.flush()
    _refresh_run(session, run, now)
    return [job.id]


def run_status(session: Session, run_id: str) -> RunStatus:
    """The run's status derived from its jobs right now (the stored ``run.status`` is the same
    value as of the last transition)."""
    run = session.get(Run, run_id)
    if run is None:
        raise RunNotFound(run_id)
    return derive_run_status([_state(j) for j in _jobs(session, run_id)], run_cancelled=run.cancelled)


# --- internals ---------------------------------------------------------------------------


def _lock_run(session: Session, run_id: str) -> Run:
    run = session.exec(
        select(Run).where(Run.id == run_id).with_for_update().execution_options(populate_existing=True)
    ).one_or_none()
    if run is None:
        raise RunNotFound(run_id)
    return run


def _lock_run_of_job(session: Session, job_id: str) -> Run:
    run_id = session.exec(select(Job.run_id).where(Job.id == job_id)).one_or_none()
    if run_id is None:
        raise JobNotFound(job_id)
    return _lock_run(session, run_id)


def _lock_run_with_jobs(session: Session, job_id: str) -> tuple[Run, list[Job]]:
    """Lock the run of ``job_id`` (one statement), then read all its jobs (as they are now)."""
    run = session.exec(
        select(Run)
        .join(Job, col(Job.run_id) == col(Run.id))
        .where(col(Job.id) == job_id)
        .with_for_update(of=Run)
        .execution_options(populate_existing=True)
    ).one_or_none()
    if run is None:
        raise JobNotFound(job_id)
    return run, _jobs(session, run.id)


def _load_job(session: Session, job_id: str) -> Job:
    job = session.exec(select(Job).where(Job.id == job_id).execution_options(populate_existing=True)).one_or_none()
    if job is None:
        raise JobNotFound(job_id)
    return job


def _jobs(session: Session, run_id: str) -> list[Job]:
    return list(
        session.exec(
            select(Job)
            .where(Job.run_id == run_id)
            .order_by(col(Job.position))
            .execution_options(populate_existing=True)
        ).all()
    )


def _state(job: Job) -> JobState:
    return JobState(job.name, job.status, job.when, job.allow_failure, tuple(job.needs), job.reason)


def _settle(job: Job, status: str, reason: str | None, now: dt.datetime) -> None:
    job.status = status
    job.reason = reason
    job.finished_at = now
    job.lease_owner = None
    job.lease_expires_at = None
    job.deadline_at = None


def _record_result(
    session: Session, run: Run, job: Job, record: dict[str, Any], now: dt.datetime, jobs: list[Job]
) -> list[str]:
    """``jobs``: every job of the run, read after the run was locked (``job`` among them)."""
    planned = job_from_spec(job.spec)
    status = record.get("status")
    reason = record.get("reason")
    if status not in REPORTED_STATUSES:
        status, reason = "error", "infra_error"
    if (job.cancel_requested or run.cancelled) and status != "succeeded":
        status, reason = "cancelled", "cancelled"
    exit_code, signal = record.get("exit_code"), record.get("signal")
    record = {**record, "name": job.name, "status": status, "reason": reason, "attempt": job.attempt}
    retry = status != "cancelled" and should_retry(
        planned.retry, status=status, reason=reason, exit_code=exit_code, attempt=job.attempt
    )
    session.add(
        JobAttempt(
            job_id=job.id,
            attempt=job.attempt,
            worker_id=job.lease_owner,
            status=status,
            reason=reason,
            exit_code=exit_code,
            signal=signal,
            started_at=job.started_at,
            finished_at=now,
            duration_s=record.get("duration_s"),
            retried=retry,
            record=record,
        )
    )
    if retry:
        enqueue(session, job, now)
        _refresh_run(session, run, now, jobs)
        return [job.id]
    _settle(job, status, reason, now)
    job.exit_code, job.signal = exit_code, signal
    job.duration_s = record.get("duration_s")
    job.usage = dict(record.get("usage") or {})
    job.log_path = record.get("log") or record.get("log_path")
    job.result = record
    job.allow_failure = planned.allow_failure.allowed or (
        status == "failed" and exit_code is not None and exit_code in planned.allow_failure.exit_codes
    )
    session.add(job)
    _add_artifacts(session, job.id, record.get("artifacts") or (), planned.artifacts, now)
    return _advance(session, run, now, jobs)


def _add_artifacts(
    session: Session, job_id: str, artifacts: Iterable[Mapping[str, Any]], rules: Any, now: dt.datetime
) -> None:
    expires_at = None
    if rules is not None and not rules.expire_never and rules.expire_in_seconds is not None:
        expires_at = now + dt.timedelta(seconds=rules.expire_in_seconds)
    for item in artifacts:
        session.add(
            Artifact(
                job_id=job_id,
                path=str(item["path"]),
                size=int(item.get("size") or 0),
                sha256=str(item.get("sha256") or ""),
                created_at=now,
                expires_at=expires_at,
            )
        )


def _lost_record(job: Job, status: str, reason: str, now: dt.datetime) -> dict[str, Any]:
    started = job.started_at or now
    return {
        "name": job.name,
        "status": status,
        "reason": reason,
        "exit_code": None,
        "signal": None,
        "attempt": job.attempt,
        "duration_s": round((now - started).total_seconds(), 3),
        "started_at": started.isoformat(),
        "finished_at": now.isoformat(),
        "usage": {},
        "artifacts": [],
        "rejected_artifacts": [],
        "message": "the worker stopped renewing its lease" if reason == "worker_lost" else "ran past its timeout",
    }


def _advance(session: Session, run: Run, now: dt.datetime, jobs: list[Job] | None = None) -> list[str]:
    """Apply every decision the jobs' states allow; returns the ids newly queued. ``jobs``: all
    of the run's jobs as this transaction has them (read after the run was locked), if the
    caller has them already."""
    jobs = jobs if jobs is not None else _jobs(session, run.id)
    by_name = {job.name: job for job in jobs}
    newly: list[str] = []
    for decision in decide_advance([_state(j) for j in jobs], run_cancelled=run.cancelled):
        job = by_name[decision.name]
        if decision.status == "queued":
            enqueue(session, job, now)
            newly.append(job.id)
        elif decision.status == "manual":
            job.status = "manual"
            session.add(job)
        else:
            _settle(job, decision.status, decision.reason, now)
            session.add(job)
    _refresh_run(session, run, now, jobs)
    return newly


def _refresh_run(session: Session, run: Run, now: dt.datetime, jobs: list[Job] | None = None) -> None:
    jobs = jobs if jobs is not None else _jobs(session, run.id)
    status = derive_run_status([_state(j) for j in jobs], run_cancelled=run.cancelled)
    settled = all(j.status in FINAL_JOB_STATUSES or (j.status == "manual" and j.allow_failure) for j in jobs)
    run.status = status
    run.finished_at = (run.finished_at or now) if settled else None
    session.add(run)
    session.flush()
