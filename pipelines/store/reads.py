"""What the rest of sandpit reads from the run store (adapter): runs, jobs, their artifacts.

Every read outside the store is a named function here, run on a caller's session, or, for the
reads on every request's and every running job's path, on an engine's connection of its own
(read-only: :func:`pipelines.store.db.reader`, which never waits for SQLite's writer). The
statements are :mod:`pipelines.store.statements`'; what the functions return are snapshots and
plain values, never objects a caller could write back.

A job row keeps its spec in the stored form (:mod:`pipelines.store.spec`); every read that
returns a job gives it back whole (:func:`restored_job`), so no caller sees the difference.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlmodel import Session

from pipelines.language.model import Job as PlannedJob
from pipelines.store.advance import JobState, RunCounts, RunStatus, derive_run_status
from pipelines.store.db import reader
from pipelines.store.errors import DatabaseUnavailable, JobNotFound, RunNotFound
from pipelines.store.models import Artifact, Job, Run
from pipelines.store.progress import counts_of, recount
from pipelines.store.spec import job_from_spec, leading_jobs, restore_spec
from pipelines.store.statements import (
    ARTIFACT_AT,
    ARTIFACT_INPUTS,
    ARTIFACTS_GONE,
    ARTIFACTS_OF_JOB,
    CANCEL_REQUESTED,
    FIRST_NAMES,
    JOB_EXISTS,
    JOB_ROW,
    JOB_STATES,
    JOB_VARIABLES,
    JOBS_BY_STATUS,
    LIVE_JOB_STATUSES,
    LIVE_RUN_STATUSES,
    OUTBOX_PENDING_COUNT,
    PING,
    QUEUED_JOB_IDS,
    RUN_CANCELLED,
    RUN_FINISHED_AT,
    RUN_FOR_WORKER,
    RUN_JOBS,
    RUN_VIEW,
    RUN_VIEW_ARTIFACTS,
    RUN_VIEW_JOBS,
    RUNS_BY_STATUS,
)

# --- jobs, whole ---------------------------------------------------------------------------


def restored_job(connection: sa.Connection, row: Mapping[str, Any], job_variables: Sequence[Sequence[str]] | None,
                 first_names: Sequence[str] | None = None) -> Job:
    """A snapshot of a job row with its whole spec (and ``needs``) put back from what its run
    holds: the run's ``job_variables`` and, for a job that follows stage order, the names of the
    run's first jobs (``first_names`` when the caller has them, else one read by position)."""
    spec = row["spec"]
    count = leading_jobs(spec)
    if count and first_names is None:
        first_names = connection.execute(FIRST_NAMES, {"p_run_id": row["run_id"], "p_count": count}).scalars().all()
    whole = restore_spec(spec, job_variables or (), first_names or ())
    return Job(**{**row, "spec": whole, "needs": list(whole.get("depends_on") or ())})


def run_jobs(session: Session, run_id: str) -> list[Job]:
    """The run's jobs in plan order, whole (an empty list for an unknown run)."""
    connection = session.connection()
    rows = [dict(row._mapping) for row in connection.execute(RUN_JOBS, {"p_run_id": run_id})]
    if not rows:
        return []
    shared = connection.execute(JOB_VARIABLES, {"p_run_id": run_id}).scalar_one_or_none()
    names = [row["name"] for row in rows]
    return [restored_job(connection, row, shared, names) for row in rows]


def planned_jobs(session: Session, run_id: str) -> list[PlannedJob]:
    """The run's jobs as the planner made them (what a worker runs), in plan order."""
    return [job_from_spec(job.spec) for job in run_jobs(session, run_id)]


def job_row(session: Session, job_id: str) -> Job:
    """A snapshot of the job's row (its spec as stored: for status and result, not to run it)."""
    row = session.connection().execute(JOB_ROW, {"p_job_id": job_id}).first()
    if row is None:
        raise JobNotFound(job_id)
    return Job(**row._mapping)


def load_job(engine: Engine, job_id: str) -> Job:
    """:func:`job_row` in a read-only transaction of its own (a log follower's look at its job)."""
    with reader(engine).connect() as connection:
        row = connection.execute(JOB_ROW, {"p_job_id": job_id}).first()
    if row is None:
        raise JobNotFound(job_id)
    return Job(**row._mapping)


def job_exists(session: Session, job_id: str) -> bool:
    return session.connection().execute(JOB_EXISTS, {"p_job_id": job_id}).first() is not None


def queued_job_ids(session: Session, run_id: str) -> list[str]:
    """The run's jobs that are queued now, in plan order."""
    return list(session.connection().execute(QUEUED_JOB_IDS, {"p_run_id": run_id}).scalars().all())


def cancel_requested(connection: sa.Connection, job_id: str) -> bool:
    """Whether the running job was asked to stop (its own cancel, or its run's)."""
    row = connection.execute(CANCEL_REQUESTED, {"p_job_id": job_id}).first()
    return bool(row and (row[0] or row[1]))


def stop_requested(engine: Engine, job_id: str) -> bool:
    """:func:`cancel_requested` on a read-only connection of its own: what a running job's lease
    keeper polls between renewals (cheap, and it never waits for a writer)."""
    with reader(engine).connect() as connection:
        return cancel_requested(connection, job_id)


# --- runs ----------------------------------------------------------------------------------


def read_run_row(session: Session, run_id: str) -> Run | None:
    """A snapshot of the run without its pipeline text (what a worker needs to run its job)."""
    row = session.connection().execute(RUN_FOR_WORKER, {"p_run_id": run_id}).first()
    return None if row is None else Run(**row._mapping)


def run_finished(engine: Engine, run_id: str) -> bool:
    """Whether the run has ended (nothing of it will run any more); :class:`RunNotFound` if there is none."""
    with reader(engine).connect() as connection:
        row = connection.execute(RUN_FINISHED_AT, {"p_run_id": run_id}).first()
    if row is None:
        raise RunNotFound(run_id)
    return row.finished_at is not None


def run_status(session: Session, run_id: str) -> RunStatus:
    """The run's status derived from its jobs right now (the stored ``run.status`` is the same
    value, kept by the counters every transition updates)."""
    connection = session.connection()
    cancelled = connection.execute(RUN_CANCELLED, {"p_run_id": run_id}).first()
    if cancelled is None:
        raise RunNotFound(run_id)
    rows: list[Any] = list(connection.execute(JOB_STATES, {"p_run_id": run_id}))
    states = [JobState("", row.status, "", bool(row.allow_failure), (), row.reason) for row in rows]
    return derive_run_status(states, run_cancelled=bool(cancelled[0]))


def run_counts(session: Session, run_id: str) -> tuple[RunCounts, RunCounts]:
    """The run's stored counters and the same counted afresh from its jobs (they are equal;
    a check for tests and for an operator who doubts them)."""
    run = read_run_row(session, run_id)
    if run is None:
        raise RunNotFound(run_id)
    stored = counts_of(run)
    fresh = recount(session.connection(), run_id, len(run.stages))
    width = max(len(stored.stage_pending), len(fresh.stage_pending))
    for counts in (stored, fresh):
        for column in (counts.stage_pending, counts.stage_failed):
            column.extend([0] * (width - len(column)))
    return stored, fresh


@dataclass(frozen=True, slots=True)
class RunView:
    """A run as the API shows it: the run's row (never its secrets or pipeline text), its jobs'
    rows in plan order, and their artifacts by job id. Rows have the attributes of a Run, a Job
    and an Artifact that an answer shows."""

    run: Any
    jobs: list[Any]
    artifacts: dict[str, list[Any]]


def read_run_view(engine: Engine, run_id: str) -> RunView:
    """The run and its jobs as they are now: one read-only snapshot (it never waits for a
    writer), three prepared statements, rows instead of ORM objects (this is the read every
    ``?wait`` makes when a job ends)."""
    with reader(engine).connect() as connection:
        run = connection.execute(RUN_VIEW, {"p_run_id": run_id}).first()
        if run is None:
            raise RunNotFound(run_id)
        jobs = list(connection.execute(RUN_VIEW_JOBS, {"p_run_id": run_id}).all())
        artifacts = connection.execute(RUN_VIEW_ARTIFACTS, {"p_run_id": run_id}).all()
    by_job: dict[str, list[Any]] = {}
    for row in artifacts:
        by_job.setdefault(row.job_id, []).append(row)
    return RunView(run, jobs, by_job)


# --- artifacts -----------------------------------------------------------------------------


def artifacts_of(session: Session, job_id: str) -> list[Artifact]:
    """A job's artifacts that have not expired (rows, by path)."""
    rows = session.connection().execute(ARTIFACTS_OF_JOB, {"p_job_id": job_id}).all()
    return [Artifact(**row._mapping) for row in rows]


def artifact_at(session: Session, job_id: str, path: str) -> Artifact | None:
    """The newest artifact ``job_id`` recorded under exactly ``path``."""
    row = session.connection().execute(ARTIFACT_AT, {"p_job_id": job_id, "p_path": path}).first()
    return None if row is None else Artifact(**row._mapping)


@dataclass(frozen=True, slots=True)
class ArtifactInputs:
    """What a job starts with from the jobs it takes artifacts from: each of their artifacts that
    has not expired as (path, sha256), and ``expired``: the names of those whose artifacts all
    expired or were removed. GitLab fails such a job before it starts
    (``missing_dependency_failure``: "This job depends on other jobs with expired/erased
    artifacts"), whether its dependencies are named (``dependencies``, ``needs``) or are its
    earlier stages; a dependency that kept no artifacts is no reason to fail."""

    files: tuple[tuple[str, str], ...] = ()
    expired: tuple[str, ...] = ()


def artifact_inputs(session: Session, run_id: str, job_names: Sequence[str], now: dt.datetime) -> ArtifactInputs:
    """The artifacts the named jobs of the run kept that are still there at ``now`` (never one
    the sweeper is removing), and which of those jobs had artifacts that are gone."""
    if not job_names:
        return ArtifactInputs()
    params = {"p_run_id": run_id, "p_names": list(job_names), "p_now": now}
    connection = session.connection()
    files = tuple((row.path, row.sha256) for row in connection.execute(ARTIFACT_INPUTS, params))
    return ArtifactInputs(files, tuple(connection.execute(ARTIFACTS_GONE, params).scalars()))


# --- the service as a whole ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StatusCounts:
    """Runs and jobs by status, of those not over (every such status, 0 included), and queued
    jobs not yet handed to the broker (for /metrics). Finished ones are not counted: that count
    grows with the history, and reading it cost /metrics 47 ms with 100,000 finished jobs on
    PostgreSQL (bench/bench_history.py)."""

    runs: dict[str, int]
    jobs: dict[str, int]
    outbox_pending: int


def status_counts(session: Session) -> StatusCounts:
    connection = session.connection()
    by_run: list[Any] = list(connection.execute(RUNS_BY_STATUS))
    by_job: list[Any] = list(connection.execute(JOBS_BY_STATUS))
    runs = {**dict.fromkeys(LIVE_RUN_STATUSES, 0), **{str(row[0]): int(row[1]) for row in by_run}}
    jobs = {**dict.fromkeys(LIVE_JOB_STATUSES, 0), **{str(row[0]): int(row[1]) for row in by_job}}
    return StatusCounts(runs, jobs, int(connection.execute(OUTBOX_PENDING_COUNT).scalar_one()))


def ping(engine: Engine) -> None:
    """One round trip to the database (``/healthz``); :class:`DatabaseUnavailable` if it fails."""
    try:
        with reader(engine).connect() as connection:
            connection.execute(PING)
    except (sa.exc.SQLAlchemyError, OSError) as exc:
        raise DatabaseUnavailable(str(exc).splitlines()[0] if str(exc) else type(exc).__name__,
                                  type(exc).__name__) from exc
