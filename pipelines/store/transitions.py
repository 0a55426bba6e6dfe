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
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, Literal, cast

import sqlalchemy as sa
from sqlmodel import Session, col, select, update

from pipelines.language.model import AllowFailure, Artifacts, Plan, Retry
from pipelines.language.model import Job as PlannedJob
from pipelines.store.advance import JobState, RunCounts, RunStatus, Standing, derive_run_status, should_retry
from pipelines.store.bulk import BulkInsert
from pipelines.store.errors import JobNotFound, RunNotFound
from pipelines.store.frontier import Change, MemoryGraph, Waiting, advance
from pipelines.store.ids import new_id
from pipelines.store.models import Artifact, Job, JobAttempt, Run, UTCDateTime
from pipelines.store.outbox import mark_queued
from pipelines.store.progress import (
    COUNT_COLUMNS,
    EDGES,
    JOBS,
    RUNS,
    StoreGraph,
    counts_of,
    recount,
    run_values,
    set_counts,
    write_decisions,
    write_outbox,
)
from pipelines.store.reads import restored_job
from pipelines.store.spec import (
    job_from_spec,
    job_to_spec,
    shared_variables,
    spec_field,
    stored_spec_json,
)

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
    new_id: Callable[[], str] = new_id,
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
    new_id: Callable[[], str] = new_id,
    run_id: str | None = None,
    mark_sent: bool = False,
) -> StoredRun:
    """:func:`create_run`, also returning the jobs and the queued ids (no second read), with
    the run's id chosen by the caller if it wants (to listen for the run's events before its
    jobs are published). ``mark_sent``: the outbox rows are written as published (the caller
    publishes right after the commit, and calls ``outbox.mark_unpublished`` if that fails).
    The objects returned are snapshots, not attached to ``session``.

    Every job is new, so the first advance is decided on these objects (the frontier over a
    :class:`~pipelines.store.frontier.MemoryGraph`), and the rows are written once, one
    multi-row INSERT per table (no ORM unit of work: this is on the path of every API request,
    and a 1,000-job run is created in one short transaction, see bench/bench_store.py)."""
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
    layout = layout_jobs(plan, run.id, new_id)
    run.job_variables = [list(pair) for pair in layout.job_variables]
    counts = RunCounts(stage_pending=[0] * len(layout.stages), stage_failed=[0] * len(layout.stages))
    for job in layout.jobs:
        counts.add(job.stage_index, _CREATED)
    graph = MemoryGraph(layout.waiting, layout.edges)
    by_id = {job.id: job for job in layout.jobs}
    queued = []
    for settled in advance(counts, graph, (), ready=graph.ready(counts), run_cancelled=False):
        job = by_id[settled.job.id]
        if settled.status == "queued":
            mark_queued(job, now)
            queued.append(job.id)
        elif settled.status == "manual":
            job.status = "manual"
        else:
            _settle(job, settled.status, settled.reason, now)
    set_counts(run, counts, now)
    connection = session.connection()
    connection.execute(sa.insert(_RUNS), [_columns(_RUNS, run)])
    if layout.jobs:
        _INSERT_NEW_JOBS.execute(connection, [vars(job) for job in layout.jobs])
    _INSERT_EDGES.execute(
        connection,
        [{"job_id": before, "dependent_id": after} for before, afters in layout.edges.items() for after in afters],
    )
    write_outbox(connection, queued, now, sent=mark_sent)
    return StoredRun(run, tuple(layout.jobs), tuple(queued))


# a new job's columns; its rows are plain attribute bags (the same attributes as a Job):
# building 1,000 SQLModel objects cost more than writing them (≈ 1 ms each)
_NEW_JOB = {c.name: getattr(Job(id="", run_id="", name="", stage=""), c.name) for c in Job.__table__.columns}  # type: ignore[attr-defined]


class _EncodedJSON(sa.types.TypeDecorator[str]):
    """A JSON column's value that is JSON text already: bound as it is (on PostgreSQL with the
    JSON type's ``::JSON`` cast), not encoded a second time."""

    impl = sa.JSON
    cache_ok = True

    def bind_processor(self, dialect: Any) -> None:
        return None


# What the layout and the first advance set on a new job; every other column is the same for
# every new job and is written as a constant of the statement, not a parameter of each row (the
# per-row parameter processing was half of the INSERT's cost).
_NEW_JOB_SET = frozenset({
    "id", "run_id", "position", "name", "stage", "spec", "needs", "when", "allow_failure", "stage_index",
    "follows_stages", "waiting_on", "status", "reason", "queued_at", "finished_at",
})


def _constant(value: Any) -> Any:
    if value is None:
        return sa.null()
    if isinstance(value, bool):
        return sa.true() if value else sa.false()
    if isinstance(value, int):
        return sa.literal_column(str(value))
    if value == {}:
        return sa.literal_column("'{}'")
    raise TypeError(f"no SQL constant for a new job's default {value!r}")


# a new run's jobs, each row's parameters the attributes of its _NewJob (its spec and needs as
# the JSON text the layout wrote)
_INSERT_NEW_JOBS = BulkInsert(sa.insert(JOBS).values(
    {c.name: sa.bindparam(c.name + "_json", type_=_EncodedJSON()) if c.name in ("spec", "needs")
     else sa.bindparam(c.name, type_=c.type) if c.name in _NEW_JOB_SET else _constant(_NEW_JOB[c.name])
     for c in JOBS.columns}
))
_INSERT_EDGES = BulkInsert(sa.insert(EDGES).values(job_id=sa.bindparam("job_id"),
                                                   dependent_id=sa.bindparam("dependent_id")))
# what layout_jobs does not set itself
_NEW_JOB_DEFAULTS = {name: _NEW_JOB[name] for name in ("status", "reason", "queued_at", "finished_at", "failed_on",
                                                       "exit_code", "signal", "attempt", "lease_owner",
                                                       "lease_expires_at", "deadline_at", "cancel_requested",
                                                       "started_at", "duration_s", "log_path")}
_dumps = json.JSONEncoder(separators=(",", ":")).encode


class _NewJob(SimpleNamespace):
    """A new job's row as an attribute bag (what ``store_run`` returns, like a detached Job);
    its ``spec`` is kept as the stored JSON text, and the whole spec is made only if asked for."""

    spec_json: str
    needs_json: str
    planned: PlannedJob

    @property
    def spec(self) -> dict[str, Any]:
        return job_to_spec(self.planned)


@dataclass(frozen=True, slots=True)
class JobLayout:
    """A plan's jobs as rows (attribute bags, see ``_NEW_JOB``), with the frontier's view of
    them and their edges, and the variables every job starts with (stored once, on the run)."""

    stages: tuple[str, ...]
    jobs: list[Job]
    waiting: list[Waiting]
    edges: dict[str, list[str]]  # job id -> ids of its dependents
    job_variables: tuple[tuple[str, str], ...] = ()


def layout_jobs(plan: Plan, run_id: str, new_id: Callable[[], str] = new_id) -> JobLayout:
    """One job row per planned job. A job whose predecessors are every job of the earlier
    stages (the planner's rule when it has no ``needs``) *follows stage order*: it gets no edges
    and waits on the run's per-stage counts; any other job gets one edge per predecessor.

    Its stored spec (:func:`~pipelines.store.spec.stored_spec_json`) leaves out the variables
    every job starts with and, when its predecessors are the run's first jobs in plan order
    (stage order), their names: both O(N) per job, O(N²) per run."""
    stages = list(plan.stages)
    stage_of = {name: i for i, name in enumerate(stages)}
    for job in plan.jobs:
        if job.stage not in stage_of:  # the planner names only declared stages; be safe anyway
            stage_of[job.stage] = len(stages)
            stages.append(job.stage)
    earlier = [0] * (len(stages) + 1)  # jobs of the stages before index i
    for job in plan.jobs:
        earlier[stage_of[job.stage] + 1] += 1
    for i in range(1, len(earlier)):
        earlier[i] += earlier[i - 1]
    ids = {job.name: new_id() for job in plan.jobs}
    shared = shared_variables(plan.jobs)
    names = tuple(ids)
    jobs: list[Job] = []
    waiting: list[Waiting] = []
    edges: dict[str, list[str]] = {}
    for position, planned in enumerate(plan.jobs):
        stage = stage_of[planned.stage]
        before = [name for name in dict.fromkeys(planned.depends_on) if name in ids]
        follows = planned.needs is None and len(before) == earlier[stage]
        job_id = ids[planned.name]
        edged = () if follows else before
        for name in edged:
            edges.setdefault(ids[name], []).append(job_id)
        count = len(planned.depends_on)
        leading = planned.needs is None and count > 0 and planned.depends_on == names[:count]
        needs = list(planned.depends_on)  # what a snapshot shows; the row stores none for a leading job
        jobs.append(cast(Job, _NewJob(
            **_NEW_JOB_DEFAULTS, id=job_id, run_id=run_id, position=position, name=planned.name, stage=planned.stage,
            spec_json=stored_spec_json(planned, shared_variables=len(shared), leading_jobs=leading),
            planned=planned, needs=needs, needs_json="[]" if leading or not needs else _dumps(needs), when=planned.when,
            allow_failure=planned.allow_failure.allowed, stage_index=stage, follows_stages=follows,
            waiting_on=len(edged), usage={}, result={},
        )))
        waiting.append(Waiting(job_id, position, stage, planned.when, planned.allow_failure.allowed, follows,
                               len(edged)))
    return JobLayout(tuple(stages), jobs, waiting, edges, shared)


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
    values = dict(row._mapping)
    job = restored_job(connection, values, values.pop(_RUN_JOB_VARIABLES))
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
_JOBS: Any = JOBS
_RUNS: Any = RUNS
_RUN_JOB_VARIABLES = "run_job_variables"
_CLAIM = (
    sa.update(_JOBS)
    .where(
        _JOBS.c.id == sa.bindparam("p_job_id"),
        _JOBS.c.status == "queued",
        # correlated, so it is one primary-key look-up (an IN over live runs scanned every run)
        sa.exists().where(_RUNS.c.id == _JOBS.c.run_id, _RUNS.c.cancelled.is_(sa.false())),
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
    .returning(
        *_JOBS.c,
        sa.select(_RUNS.c.job_variables).where(_RUNS.c.id == _JOBS.c.run_id).scalar_subquery()
        .label(_RUN_JOB_VARIABLES),
    )
)
_SET_DEADLINE = (
    sa.update(_JOBS)
    .where(_JOBS.c.id == sa.bindparam("p_job_id"))
    .values(deadline_at=sa.bindparam("p_deadline", type_=UTCDateTime()))
)
_ATTEMPTS: Any = JobAttempt.__table__  # type: ignore[attr-defined]
_ARTIFACTS: Any = Artifact.__table__  # type: ignore[attr-defined]
_RUN_OF_JOB = sa.select(_JOBS.c.run_id).where(_JOBS.c.id == sa.bindparam("p_job_id"))
_LOCK_RUN = sa.select(_RUNS).where(_RUNS.c.id == sa.bindparam("p_run_id")).with_for_update()
_LOCK_RUN_OF_JOB = (
    sa.select(_RUNS)
    .join(_JOBS, _JOBS.c.run_id == _RUNS.c.id)
    .where(_JOBS.c.id == sa.bindparam("p_job_id"))
    .with_for_update(of=_RUNS)
)
_READ_JOB = sa.select(_JOBS).where(_JOBS.c.id == sa.bindparam("p_job_id"))
_UPDATE_JOB = (
    sa.update(_JOBS)
    .where(_JOBS.c.id == sa.bindparam("b_id"))
    .values({name: sa.bindparam(f"b_{name}", type_=_JOBS.c[name].type) for name in _JOB_MUTABLE})
)
_RUN_MUTABLE = ("status", "finished_at", "cancelled", *COUNT_COLUMNS, "stage_pending", "stage_failed")
_UPDATE_RUN = (
    sa.update(_RUNS)
    .where(_RUNS.c.id == sa.bindparam("b_id"))
    .values({name: sa.bindparam(f"b_{name}", type_=_RUNS.c[name].type) for name in _RUN_MUTABLE})
)
_CANCEL_WAITING = (
    sa.update(_JOBS)
    .where(_JOBS.c.run_id == sa.bindparam("p_run_id"), _JOBS.c.status.in_(("created", "queued", "manual")))
    .values(status="cancelled", reason="cancelled", finished_at=sa.bindparam("p_now", type_=UTCDateTime()),
            lease_owner=None, lease_expires_at=None, deadline_at=None)
)
_REQUEST_CANCEL = (
    sa.update(_JOBS)
    .where(_JOBS.c.run_id == sa.bindparam("p_run_id"), _JOBS.c.status == "running")
    .values(cancel_requested=True)
)
_READ_RUN_FOR_WORKER = sa.select(*(c for c in _RUNS.c if c.name != "pipeline")).where(
    _RUNS.c.id == sa.bindparam("p_run_id")
)
_CREATED = Standing("created")


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
    step = _Step.begin(session, job_id)
    job = step.load_job(job_id)
    if job.status != "running" or job.attempt != attempt:
        return []
    retried = _record_result(step, job, dict(record), now)
    return retried + step.finish(now)


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
        step = _Step.begin(session, job_id)
        job = step.load_job(job_id)
        lease_gone = job.lease_expires_at is not None and job.lease_expires_at < now
        past_deadline = job.deadline_at is not None and job.deadline_at < now
        if job.status != "running" or not (lease_gone or past_deadline):
            continue  # renewed or finished while we looked
        status, reason = ("error", "worker_lost") if lease_gone else ("failed", "timeout")
        newly += _record_result(step, job, _lost_record(job, status, reason, now), now)
        newly += step.finish(now)
    return newly


def cancel_run(session: Session, run_id: str, now: dt.datetime) -> Run:
    """Cancel a run: waiting jobs become ``cancelled`` and never start; running ones get
    ``cancel_requested``, which their worker sees when it renews its lease. Every job of the
    run changes, so this is two set-wise UPDATEs and one recount, not a walk of the graph."""
    run = _lock_run(session, run_id)
    connection = session.connection()
    connection.execute(_CANCEL_WAITING, {"p_run_id": run.id, "p_now": now})
    connection.execute(_REQUEST_CANCEL, {"p_run_id": run.id})
    run.cancelled = True
    set_counts(run, recount(connection, run.id, len(run.stages)), now)
    _write_run(connection, run)
    return run


def cancel_job(session: Session, job_id: str, now: dt.datetime) -> list[str]:
    """Cancel one job: a waiting one at once (its dependents are skipped, ``when: on_failure``
    jobs may start: their ids are returned), a running one by setting ``cancel_requested``."""
    step = _Step.begin(session, job_id)
    job = step.load_job(job_id)
    if job.status == "running":
        job.cancel_requested = True
        step.changed(job, Standing("running", job.allow_failure))
        return step.finish(now)
    if job.status not in ("created", "queued", "manual"):
        return []
    before = _standing(job)
    _settle(job, "cancelled", "cancelled", now)
    step.changed(job, before)
    return step.finish(now)


def play_job(session: Session, job_id: str, now: dt.datetime) -> list[str]:
    """Start a ``manual`` job (GitLab's "play"); returns ``[job_id]`` if it was queued."""
    step = _Step.begin(session, job_id)
    job = step.load_job(job_id)
    if job.status != "manual" or step.run.cancelled:
        return []
    before = _standing(job)
    step.queue(job, now)
    step.changed(job, before)
    step.finish(now)
    return [job.id]


def run_status(session: Session, run_id: str) -> RunStatus:
    """The run's status derived from its jobs right now (the stored ``run.status`` is the same
    value, kept by the counters every transition updates)."""
    run = session.get(Run, run_id, populate_existing=True)
    if run is None:
        raise RunNotFound(run_id)
    rows = session.exec(select(Job.status, Job.allow_failure, Job.reason).where(Job.run_id == run_id)).all()
    states = [JobState("", status, "", allowed, (), reason) for status, allowed, reason in rows]
    return derive_run_status(states, run_cancelled=run.cancelled)


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


# --- internals ---------------------------------------------------------------------------


def _lock_run(session: Session, run_id: str) -> Run:
    row = session.connection().execute(_LOCK_RUN, {"p_run_id": run_id}).first()
    if row is None:
        raise RunNotFound(run_id)
    return Run(**row._mapping)


def _write_run(connection: sa.Connection, run: Run) -> None:
    values = run_values(run)
    connection.execute(_UPDATE_RUN, {"b_id": run.id, **{f"b_{k}": values[k] for k in _RUN_MUTABLE}})


def _standing(job: Job) -> Standing:
    return Standing(job.status, job.allow_failure, job.reason)


def _settle(job: Job, status: str, reason: str | None, now: dt.datetime) -> None:
    job.status = status
    job.reason = reason
    job.finished_at = now
    job.lease_owner = None
    job.lease_expires_at = None
    job.deadline_at = None


@dataclass
class _Step:
    """One transition of a locked run: the run row (with its counters) and the jobs it changes
    as snapshots, changed in memory, then written with a few prepared statements, after the
    frontier pushed the changes to the direct dependents (``finish``). What it reads and writes
    depends on the jobs that change and their dependents, not on the size of the run."""

    connection: sa.Connection
    run: Run
    changes: list[Change] = field(default_factory=list)
    jobs: list[Job] = field(default_factory=list)
    queued: list[str] = field(default_factory=list)
    attempts: list[dict[str, Any]] = field(default_factory=list)
    artifacts: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def begin(cls, session: Session, job_id: str) -> _Step:
        """Lock the run of ``job_id`` (one statement; SQLite's BEGIN IMMEDIATE holds the lock already)."""
        connection = session.connection()
        row = connection.execute(_LOCK_RUN_OF_JOB, {"p_job_id": job_id}).first()
        if row is None:
            raise JobNotFound(job_id)
        return cls(connection, Run(**row._mapping))

    def load_job(self, job_id: str) -> Job:
        """The job as it is now (read after the run was locked)."""
        row = self.connection.execute(_READ_JOB, {"p_job_id": job_id}).first()
        if row is None:
            raise JobNotFound(job_id)
        return Job(**row._mapping)

    def queue(self, job: Job, now: dt.datetime) -> None:
        mark_queued(job, now)
        self.queued.append(job.id)

    def changed(self, job: Job, before: Standing) -> None:
        """``job`` (a snapshot) changed from ``before``: write it, count it, push it on."""
        self.jobs.append(job)
        self.changes.append(Change(job.id, job.stage_index, before, _standing(job)))

    def finish(self, now: dt.datetime) -> list[str]:
        """Write the step; the ids the frontier queued (beyond those the step queued itself)."""
        connection = self.connection
        if self.jobs:
            connection.execute(
                _UPDATE_JOB,
                [{"b_id": job.id, **{f"b_{name}": getattr(job, name) for name in _JOB_MUTABLE}} for job in self.jobs],
            )
        for table, rows in ((_ATTEMPTS, self.attempts), (_ARTIFACTS, self.artifacts)):
            if rows:
                connection.execute(sa.insert(table), rows)
        counts = counts_of(self.run)
        decided = advance(counts, StoreGraph(connection, self.run.id), self.changes, run_cancelled=self.run.cancelled)
        newly = write_decisions(connection, decided, now)
        write_outbox(connection, [*self.queued, *newly], now)
        set_counts(self.run, counts, now)
        _write_run(connection, self.run)
        return newly


def _record_result(step: _Step, job: Job, record: dict[str, Any], now: dt.datetime) -> list[str]:
    """Record ``job``'s result in ``step``; ``[job.id]`` when it is retried (queued again)."""
    run = step.run
    retry_rule = cast(Retry, spec_field(job.spec, "retry"))
    allowed_failure = cast(AllowFailure, spec_field(job.spec, "allow_failure"))
    artifact_rules = cast("Artifacts | None", spec_field(job.spec, "artifacts"))
    before = _standing(job)
    status = record.get("status")
    reason = record.get("reason")
    if status not in REPORTED_STATUSES:
        status, reason = "error", "infra_error"
    if (job.cancel_requested or run.cancelled) and status != "succeeded":
        status, reason = "cancelled", "cancelled"
    exit_code, signal = record.get("exit_code"), record.get("signal")
    record = {**record, "name": job.name, "status": status, "reason": reason, "attempt": job.attempt}
    retry = status != "cancelled" and should_retry(
        retry_rule, status=status, reason=reason, exit_code=exit_code, attempt=job.attempt
    )
    step.attempts.append(
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
        step.queue(job, now)
        step.changed(job, before)
        return [job.id]
    _settle(job, status, reason, now)
    job.exit_code, job.signal = exit_code, signal
    job.duration_s = record.get("duration_s")
    job.usage = dict(record.get("usage") or {})
    job.log_path = record.get("log") or record.get("log_path")
    job.result = record
    job.allow_failure = allowed_failure.allowed or (
        status == "failed" and exit_code is not None and exit_code in allowed_failure.exit_codes
    )
    step.artifacts += _artifact_rows(job.id, record.get("artifacts") or (), artifact_rules, now)
    step.changed(job, before)
    return []


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
