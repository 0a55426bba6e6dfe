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
from dataclasses import dataclass, field
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
from pipelines.store.models import Artifact, Job, JobAttempt, Outbox, Run, UTCDateTime
from pipelines.store.outbox import enqueue, mark_queued
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
    mark_sent: bool = False,
) -> StoredRun:
    """:func:`create_run`, also returning the jobs and the queued ids (no second read), with
    the run's id chosen by the caller if it wants (to listen for the run's events before its
    jobs are published). ``mark_sent``: the outbox rows are written as published (the caller
    publishes right after the commit, and calls ``outbox.mark_unpublished`` if that fails).
    The objects returned are snapshots, not attached to ``session``."""
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
    # every job is new: the first advance is decided on these objects, and the rows are written
    # once, as three INSERTs (no ORM unit of work: this is on the path of every API request)
    queued = _apply_decisions(run, jobs, now, queue=lambda job: mark_queued(job, now))
    _derive_run(run, jobs, now)
    connection = session.connection()
    connection.execute(sa.insert(_RUNS), [_columns(_RUNS, run)])
    if jobs:
        connection.execute(sa.insert(_JOBS), [_columns(_JOBS, job) for job in jobs])
    if queued:
        sent_at = now if mark_sent else None
        connection.execute(
            sa.insert(_OUTBOX), [{"job_id": job_id, "created_at": now, "published_at": sent_at} for job_id in queued]
        )
    return StoredRun(run, tuple(jobs), tuple(queued))


def _columns(table: Any, row: object) -> dict[str, Any]:
    return {c.name: getattr(row, c.name) for c in table.columns}


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


# the columns a transition may change (every other one is fixed when the job is created)
_JOB_MUTABLE = (
    "status", "reason", "exit_code", "signal", "attempt", "lease_owner", "lease_expires_at", "deadline_at",
    "cancel_requested", "queued_at", "started_at", "finished_at", "duration_s", "usage", "log_path", "result",
    "allow_failure",
)
_JOBS: Any = Job.__table__  # type: ignore[attr-defined]
_RUNS: Any = Run.__table__  # type: ignore[attr-defined]
_OUTBOX: Any = Outbox.__table__  # type: ignore[attr-defined]
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
_ATTEMPTS: Any = JobAttempt.__table__  # type: ignore[attr-defined]
_ARTIFACTS: Any = Artifact.__table__  # type: ignore[attr-defined]
_LOCK_RUN_OF_JOB = (
    sa.select(_RUNS)
    .join(_JOBS, _JOBS.c.run_id == _RUNS.c.id)
    .where(_JOBS.c.id == sa.bindparam("p_job_id"))
    .with_for_update(of=_RUNS)
)
_JOBS_OF_RUN = sa.select(_JOBS).where(_JOBS.c.run_id == sa.bindparam("p_run_id")).order_by(_JOBS.c.position)
_UPDATE_JOB = (
    sa.update(_JOBS)
    .where(_JOBS.c.id == sa.bindparam("b_id"))
    .values({name: sa.bindparam(f"b_{name}", type_=_JOBS.c[name].type) for name in _JOB_MUTABLE})
)
_UPDATE_RUN = (
    sa.update(_RUNS)
    .where(_RUNS.c.id == sa.bindparam("b_id"))
    .values(status=sa.bindparam("b_status"), finished_at=sa.bindparam("b_finished_at", type_=UTCDateTime()))
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
    batch = _RunBatch.load(session, job_id)
    job = batch.job(job_id)
    if job.status != "running" or job.attempt != attempt:
        return []
    newly = _record_result(batch, job, dict(record), now)
    batch.write(session)
    return newly


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
        batch = _RunBatch.load(session, job_id)
        job = batch.job(job_id)
        lease_gone = job.lease_expires_at is not None and job.lease_expires_at < now
        past_deadline = job.deadline_at is not None and job.deadline_at < now
        if job.status != "running" or not (lease_gone or past_deadline):
            continue  # renewed or finished while we looked
        status, reason = ("error", "worker_lost") if lease_gone else ("failed", "timeout")
        newly += _record_result(batch, job, _lost_record(job, status, reason, now), now)
        batch.write(session)
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
    run = session.get(Run, run_id, populate_existing=True)
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


@dataclass
class _RunBatch:
    """A locked run and all its jobs as rows (snapshots, not ORM objects), changed in memory by
    the same rules as everywhere else (``_apply_decisions``, ``_derive_run``), then written with
    a few prepared statements: only the jobs that changed, plus the rows the change adds. This
    is how a worker's result is recorded, so it is on the path of every job."""

    run: Run
    jobs: list[Job]
    run_before: tuple[Any, ...]
    jobs_before: dict[str, dict[str, Any]]
    attempts: list[dict[str, Any]] = field(default_factory=list)
    artifacts: list[dict[str, Any]] = field(default_factory=list)
    outbox: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def load(cls, session: Session, job_id: str) -> _RunBatch:
        """Lock the run of ``job_id`` (one statement), then read all its jobs (as they are now)."""
        connection = session.connection()
        row = connection.execute(_LOCK_RUN_OF_JOB, {"p_job_id": job_id}).first()
        if row is None:
            raise JobNotFound(job_id)
        run = Run(**row._mapping)
        jobs = [Job(**r._mapping) for r in connection.execute(_JOBS_OF_RUN, {"p_run_id": run.id})]
        return cls(run, jobs, _run_values(run), {job.id: _job_values(job) for job in jobs})

    def job(self, job_id: str) -> Job:
        return next(j for j in self.jobs if j.id == job_id)

    def queue(self, job: Job, now: dt.datetime) -> None:
        mark_queued(job, now)
        self.outbox.append({"job_id": job.id, "created_at": now, "published_at": None})

    def write(self, session: Session) -> None:
        connection = session.connection()
        changed = []
        for job in self.jobs:
            values = _job_values(job)
            if values != self.jobs_before[job.id]:
                changed.append({"b_id": job.id, **{f"b_{k}": v for k, v in values.items()}})
                self.jobs_before[job.id] = values
        if changed:
            connection.execute(_UPDATE_JOB, changed)
        for table, rows in ((_ATTEMPTS, self.attempts), (_ARTIFACTS, self.artifacts), (_OUTBOX, self.outbox)):
            if rows:
                connection.execute(sa.insert(table), rows)
            rows.clear()
        if _run_values(self.run) != self.run_before:
            connection.execute(_UPDATE_RUN, {"b_id": self.run.id, "b_status": self.run.status,
                                             "b_finished_at": self.run.finished_at})
            self.run_before = _run_values(self.run)


def _job_values(job: Job) -> dict[str, Any]:
    return {name: getattr(job, name) for name in _JOB_MUTABLE}


def _run_values(run: Run) -> tuple[Any, ...]:
    return (run.status, run.finished_at)


def _record_result(batch: _RunBatch, job: Job, record: dict[str, Any], now: dt.datetime) -> list[str]:
    """Record ``job``'s result in ``batch`` (``job`` is one of its jobs); the ids newly queued."""
    run, jobs = batch.run, batch.jobs
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
    batch.attempts.append(
        {
            "job_id": job.id,
            "attempt": job.attempt,
            "worker_id": job.lease_owner,
            "status": status,
            "reason": reason,
            "exit_code": exit_code,
            "signal": signal,
            "started_at": job.started_at,
            "finished_at": now,
            "duration_s": record.get("duration_s"),
            "retried": retry,
            "record": record,
        }
    )
    if retry:
        batch.queue(job, now)
        _derive_run(run, jobs, now)
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
    batch.artifacts += _artifact_rows(job.id, record.get("artifacts") or (), planned.artifacts, now)
    newly = _apply_decisions(run, jobs, now, queue=lambda queued: batch.queue(queued, now))
    _derive_run(run, jobs, now)
    return newly


def _artifact_rows(
    job_id: str, artifacts: Iterable[Mapping[str, Any]], rules: Any, now: dt.datetime
) -> list[dict[str, Any]]:
    expires_at = None
    if rules is not None and not rules.expire_never and rules.expire_in_seconds is not None:
        expires_at = now + dt.timedelta(seconds=rules.expire_in_seconds)
    return [
        {
            "job_id": job_id,
            "path": str(item["path"]),
            "size": int(item.get("size") or 0),
            "sha256": str(item.get("sha256") or ""),
            "created_at": now,
            "expires_at": expires_at,
        }
        for item in artifacts
    ]


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
    # the jobs are the session's own objects: their changes are flushed without session.add
    newly = _apply_decisions(run, jobs, now, queue=lambda job: enqueue(session, job, now))
    _refresh_run(session, run, now, jobs)
    return newly


def _apply_decisions(run: Run, jobs: list[Job], now: dt.datetime, queue: Callable[[Job], None]) -> list[str]:
    """Change ``jobs`` as ``decide_advance`` says (``queue`` makes one queued); the ids queued."""
    by_name = {job.name: job for job in jobs}
    newly: list[str] = []
    for decision in decide_advance([_state(j) for j in jobs], run_cancelled=run.cancelled):
        job = by_name[decision.name]
        if decision.status == "queued":
            queue(job)
            newly.append(job.id)
        elif decision.status == "manual":
            job.status = "manual"
        else:
            _settle(job, decision.status, decision.reason, now)
    return newly


def _refresh_run(session: Session, run: Run, now: dt.datetime, jobs: list[Job] | None = None) -> None:
    jobs = jobs if jobs is not None else _jobs(session, run.id)
    _derive_run(run, jobs, now)
    session.add(run)
    session.flush()


def _derive_run(run: Run, jobs: list[Job], now: dt.datetime) -> None:
    """The run's stored status and end time, from its jobs."""
    status = derive_run_status([_state(j) for j in jobs], run_cancelled=run.cancelled)
    settled = all(j.status in FINAL_JOB_STATUSES or (j.status == "manual" and j.allow_failure) for j in jobs)
    run.status = status
    run.finished_at = (run.finished_at or now) if settled else None
