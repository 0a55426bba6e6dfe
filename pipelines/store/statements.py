"""Every SQL statement of the run store, built once at import (adapter's vocabulary; no I/O here).

One write path: every change to the database is one of the prepared Core statements below (an
``UPDATE``/``INSERT``/``DELETE`` with bind parameters, or a :class:`~pipelines.store.bulk.BulkInsert`
for many rows), executed on the caller's connection by a named function of the store — never an
ORM unit of work (``session.add`` / ``flush``), whose per-object bookkeeping cost ≈ 1 ms a job on
the paths every job takes, and never SQL built at the call site. The reads are here too, so what
the store asks of the database can be read in one file.

Parameters are named ``p_*`` (one value per execution) and ``b_*`` (one per row of an
``executemany``); a statement that shows a run never selects its ``secrets`` unless a worker
needs them (:data:`RUN_FOR_WORKER`), and a transition never reads the ``pipeline`` text (up to
the body cap, ≈ 0.5 MB) it does not need.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import sqlalchemy as sa

from pipelines.store.bulk import BulkInsert
from pipelines.store.models import (
    Artifact,
    CacheEntry,
    Job,
    JobAttempt,
    JobEdge,
    Outbox,
    Repository,
    RepositoryRun,
    Run,
    UTCDateTime,
    WebhookDelivery,
)

RUNS: Any = Run.__table__  # type: ignore[attr-defined]
JOBS: Any = Job.__table__  # type: ignore[attr-defined]
EDGES: Any = JobEdge.__table__  # type: ignore[attr-defined]
ATTEMPTS: Any = JobAttempt.__table__  # type: ignore[attr-defined]
ARTIFACTS: Any = Artifact.__table__  # type: ignore[attr-defined]
CACHE: Any = CacheEntry.__table__  # type: ignore[attr-defined]
OUTBOX: Any = Outbox.__table__  # type: ignore[attr-defined]
REPOSITORIES: Any = Repository.__table__  # type: ignore[attr-defined]
DELIVERIES: Any = WebhookDelivery.__table__  # type: ignore[attr-defined]
REPOSITORY_RUNS: Any = RepositoryRun.__table__  # type: ignore[attr-defined]

COUNT_COLUMNS = ("jobs_total", "jobs_created", "jobs_active", "jobs_blocking", "jobs_failed", "jobs_cancelled")
# the columns a transition may change (every other one is fixed when the job is created)
JOB_MUTABLE = (
    "status", "reason", "exit_code", "signal", "attempt", "lease_owner", "lease_expires_at", "deadline_at",
    "cancel_requested", "queued_at", "started_at", "finished_at", "duration_s", "usage", "log_path", "result",
    "allow_failure",
)
RUN_MUTABLE = ("status", "finished_at", "cancelled", *COUNT_COLUMNS, "stage_pending", "stage_failed")
WAITING = ("created", "queued", "manual")  # what cancelling a run stops before it starts


def _at(name: str) -> Any:
    return sa.bindparam(name, type_=UTCDateTime())


_RUN_WITHOUT_PIPELINE = tuple(c for c in RUNS.c if c.name != "pipeline")


# --- creating a run ------------------------------------------------------------------------

# a new job's columns with the values a Job starts with
NEW_JOB: dict[str, Any] = {c.name: getattr(Job(id="", run_id="", name="", stage=""), c.name) for c in JOBS.columns}
# What the layout and the first advance set on a new job; every other column is the same for
# every new job and is written as a constant of the statement, not a parameter of each row (the
# per-row parameter processing was half of the INSERT's cost).
NEW_JOB_SET = frozenset({
    "id", "run_id", "position", "name", "stage", "spec", "needs", "when", "allow_failure", "stage_index",
    "follows_stages", "waiting_on", "status", "reason", "queued_at", "finished_at",
})


class EncodedJSON(sa.types.TypeDecorator[str]):
    """A JSON column's value that is JSON text already: bound as it is (on PostgreSQL with the
    JSON type's ``::JSON`` cast), not encoded a second time."""

    impl = sa.JSON
    cache_ok = True

    def bind_processor(self, dialect: Any) -> None:
        return None


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


INSERT_RUN = sa.insert(RUNS)
# a new run's jobs: each row's parameters the attributes of its layout row (spec and needs as
# the JSON text the layout wrote, under ``spec_json`` / ``needs_json``)
INSERT_NEW_JOBS = BulkInsert(sa.insert(JOBS).values(
    {c.name: sa.bindparam(c.name + "_json", type_=EncodedJSON()) if c.name in ("spec", "needs")
     else sa.bindparam(c.name, type_=c.type) if c.name in NEW_JOB_SET else _constant(NEW_JOB[c.name])
     for c in JOBS.columns}
))
INSERT_EDGES = BulkInsert(sa.insert(EDGES).values(job_id=sa.bindparam("job_id"),
                                                  dependent_id=sa.bindparam("dependent_id")))
INSERT_OUTBOX = BulkInsert(sa.insert(OUTBOX).values(
    job_id=sa.bindparam("job_id"), created_at=_at("created_at"), published_at=_at("published_at"),
))
SET_SUBMITTER = sa.update(RUNS).where(RUNS.c.id == sa.bindparam("p_run_id")).values(
    submitter=sa.bindparam("p_submitter"))


# --- claims and leases ---------------------------------------------------------------------

RUN_JOB_VARIABLES = "run_job_variables"  # the claim's extra column: what restores the job's spec
CLAIM = (
    sa.update(JOBS)
    .where(
        JOBS.c.id == sa.bindparam("p_job_id"),
        JOBS.c.status == "queued",
        # correlated, so it is one primary-key look-up (an IN over live runs scanned every run)
        sa.exists().where(RUNS.c.id == JOBS.c.run_id, RUNS.c.cancelled.is_(sa.false())),
    )
    .values(
        status="running",
        attempt=JOBS.c.attempt + 1,
        lease_owner=sa.bindparam("p_owner"),
        lease_expires_at=_at("p_lease"),
        started_at=_at("p_now"),
        finished_at=None,
        reason=None,
        exit_code=None,
        signal=None,
        cancel_requested=False,
    )
    .returning(
        *JOBS.c,
        sa.select(RUNS.c.job_variables).where(RUNS.c.id == JOBS.c.run_id).scalar_subquery().label(RUN_JOB_VARIABLES),
    )
)
SET_DEADLINE = sa.update(JOBS).where(JOBS.c.id == sa.bindparam("p_job_id")).values(deadline_at=_at("p_deadline"))
RENEW_LEASE = (
    sa.update(JOBS)
    .where(
        JOBS.c.id == sa.bindparam("p_job_id"),
        JOBS.c.status == "running",
        JOBS.c.lease_owner == sa.bindparam("p_owner"),
        JOBS.c.attempt == sa.bindparam("p_attempt"),
    )
    .values(lease_expires_at=_at("p_lease"))
)
# whether a running job was asked to stop: its own request or its run's
CANCEL_REQUESTED = (
    sa.select(JOBS.c.cancel_requested, RUNS.c.cancelled)
    .join(RUNS, RUNS.c.id == JOBS.c.run_id)
    .where(JOBS.c.id == sa.bindparam("p_job_id"))
)
OVERDUE = (
    sa.select(JOBS.c.id)
    .where(JOBS.c.status == "running",
           sa.or_(JOBS.c.lease_expires_at < _at("p_now"), JOBS.c.deadline_at < _at("p_now")))
    .order_by(JOBS.c.lease_expires_at)
    .limit(sa.bindparam("p_limit"))
)


# --- one transition of a locked run (pipelines.store.transitions.step) ----------------------

LOCK_RUN = sa.select(*_RUN_WITHOUT_PIPELINE).where(RUNS.c.id == sa.bindparam("p_run_id")).with_for_update()
LOCK_RUN_OF_JOB = (
    sa.select(*_RUN_WITHOUT_PIPELINE)
    .join(JOBS, JOBS.c.run_id == RUNS.c.id)
    .where(JOBS.c.id == sa.bindparam("p_job_id"))
    .with_for_update(of=RUNS)
)
# the state a cancel checks first, under the same lock
LOCK_RUN_STATE = sa.select(RUNS.c.id, RUNS.c.status, RUNS.c.finished_at).where(
    RUNS.c.id == sa.bindparam("p_run_id")).with_for_update()
LOCK_JOB_STATE = (
    sa.select(RUNS.c.id, JOBS.c.status)
    .join(JOBS, JOBS.c.run_id == RUNS.c.id)
    .where(JOBS.c.id == sa.bindparam("p_job_id"))
    .with_for_update(of=RUNS)
)
READ_JOB = sa.select(JOBS).where(JOBS.c.id == sa.bindparam("p_job_id"))
UPDATE_JOB = (
    sa.update(JOBS)
    .where(JOBS.c.id == sa.bindparam("b_id"))
    .values({name: sa.bindparam(f"b_{name}", type_=JOBS.c[name].type) for name in JOB_MUTABLE})
)
UPDATE_RUN = (
    sa.update(RUNS)
    .where(RUNS.c.id == sa.bindparam("b_id"))
    .values({name: sa.bindparam(f"b_{name}", type_=RUNS.c[name].type) for name in RUN_MUTABLE})
)
INSERT_ATTEMPTS = sa.insert(ATTEMPTS)
INSERT_ARTIFACTS = sa.insert(ARTIFACTS)
CANCEL_WAITING = (
    sa.update(JOBS)
    .where(JOBS.c.run_id == sa.bindparam("p_run_id"), JOBS.c.status.in_(WAITING))
    .values(status="cancelled", reason="cancelled", finished_at=_at("p_now"),
            lease_owner=None, lease_expires_at=None, deadline_at=None)
)
REQUEST_CANCEL = (
    sa.update(JOBS)
    .where(JOBS.c.run_id == sa.bindparam("p_run_id"), JOBS.c.status == "running")
    .values(cancel_requested=True)
)


# --- the frontier (pipelines.store.progress) ------------------------------------------------

WAITING_COLUMNS = (
    JOBS.c.id, JOBS.c.position, JOBS.c.stage_index, JOBS.c.when, JOBS.c.allow_failure, JOBS.c.follows_stages,
    JOBS.c.waiting_on, JOBS.c.failed_on,
)
# Every dependent's counts change, whatever its status (they are read only while it is
# created): a ``status = 'created'`` condition made SQLite walk ix_job_status, every waiting
# job of every run, instead of the edges' few primary keys.
PUSH = (
    sa.update(JOBS)
    .where(JOBS.c.id.in_(sa.select(EDGES.c.dependent_id).where(EDGES.c.job_id == sa.bindparam("p_job_id"))))
    .values(waiting_on=JOBS.c.waiting_on + sa.bindparam("p_pending"),
            failed_on=JOBS.c.failed_on + sa.bindparam("p_failed"))
    .returning(*WAITING_COLUMNS, JOBS.c.status)
)
FOLLOWERS = sa.select(*WAITING_COLUMNS).where(
    JOBS.c.run_id == sa.bindparam("p_run_id"),
    JOBS.c.stage_index == sa.bindparam("p_stage"),
    JOBS.c.follows_stages.is_(sa.true()),
    JOBS.c.status == "created",
)
DECIDE = (
    sa.update(JOBS)
    .where(JOBS.c.id == sa.bindparam("b_id"))
    .values(status=sa.bindparam("b_status"), reason=sa.bindparam("b_reason"),
            queued_at=_at("b_queued_at"), finished_at=_at("b_finished_at"))
)
COUNTS = (
    sa.select(JOBS.c.stage_index, JOBS.c.status, JOBS.c.allow_failure, JOBS.c.reason, sa.func.count())
    .where(JOBS.c.run_id == sa.bindparam("p_run_id"))
    .group_by(JOBS.c.stage_index, JOBS.c.status, JOBS.c.allow_failure, JOBS.c.reason)
)


# --- the outbox (pipelines.store.outbox) ----------------------------------------------------

PENDING_OUTBOX = (
    sa.select(OUTBOX.c.job_id).where(OUTBOX.c.published_at.is_(None)).order_by(OUTBOX.c.id)
    .limit(sa.bindparam("p_limit"))
)
MARK_PUBLISHED = (
    sa.update(OUTBOX)
    .where(OUTBOX.c.job_id.in_(sa.bindparam("p_job_ids", expanding=True)), OUTBOX.c.published_at.is_(None))
    .values(published_at=_at("p_now"))
)
MARK_UNPUBLISHED = (
    sa.update(OUTBOX)
    .where(OUTBOX.c.job_id.in_(sa.bindparam("p_job_ids", expanding=True)), OUTBOX.c.published_at.is_not(None))
    .values(published_at=None)
)
# queued too long and not claimed, in a live run; SKIP LOCKED: two sweepers never take the same
STALE_QUEUED = (
    sa.select(JOBS.c.id)
    .where(JOBS.c.status == "queued", JOBS.c.queued_at <= _at("p_cutoff"),
           # correlated: one primary-key look-up per job (an IN over live runs read every run)
           sa.exists().where(RUNS.c.id == JOBS.c.run_id, RUNS.c.cancelled.is_(sa.false())))
    .order_by(JOBS.c.queued_at)
    .limit(sa.bindparam("p_limit"))
    .with_for_update(skip_locked=True)
)
REQUEUE = (
    sa.update(JOBS)
    .where(JOBS.c.id.in_(sa.bindparam("p_job_ids", expanding=True)), JOBS.c.status == "queued")
    .values(queued_at=_at("p_now"))
)
PRUNE_OUTBOX = sa.delete(OUTBOX).where(OUTBOX.c.published_at.is_not(None), OUTBOX.c.published_at < _at("p_before"))
OUTBOX_PENDING_COUNT = sa.select(sa.func.count()).select_from(OUTBOX).where(OUTBOX.c.published_at.is_(None))


# --- artifacts and caches (pipelines.store.retention) ---------------------------------------

EXPIRED_ARTIFACTS = (
    sa.select(ARTIFACTS.c.id, ARTIFACTS.c.job_id, ARTIFACTS.c.path, ARTIFACTS.c.sha256, JOBS.c.run_id)
    .join(JOBS, JOBS.c.id == ARTIFACTS.c.job_id)
    .where(ARTIFACTS.c.expires_at.is_not(None), ARTIFACTS.c.expires_at <= _at("p_now"))
    .order_by(ARTIFACTS.c.expires_at)
    .limit(sa.bindparam("p_limit"))
)
DELETE_ARTIFACTS = sa.delete(ARTIFACTS).where(ARTIFACTS.c.id.in_(sa.bindparam("p_ids", expanding=True)))
CACHE_ENTRY = sa.select(CACHE).where(CACHE.c.key == sa.bindparam("p_key"), CACHE.c.trust == sa.bindparam("p_trust"))
UPDATE_CACHE_ENTRY = (
    sa.update(CACHE)
    .where(CACHE.c.key == sa.bindparam("p_key"), CACHE.c.trust == sa.bindparam("p_trust"))
    .values(sha256=sa.bindparam("p_sha256"), size=sa.bindparam("p_size"), created_at=_at("p_now"))
)
INSERT_CACHE_ENTRY = sa.insert(CACHE).values(
    key=sa.bindparam("p_key"), trust=sa.bindparam("p_trust"), sha256=sa.bindparam("p_sha256"),
    size=sa.bindparam("p_size"), created_at=_at("p_now"))
ARTIFACT_WITH_BLOB = sa.select(ARTIFACTS.c.id).where(ARTIFACTS.c.sha256 == sa.bindparam("p_sha256")).limit(1)
CACHE_WITH_BLOB = sa.select(CACHE.c.key).where(CACHE.c.sha256 == sa.bindparam("p_sha256")).limit(1)


# --- runs in flight (pipelines.store.inflight) ----------------------------------------------

COUNT_IN_FLIGHT = (
    sa.select(sa.func.count())
    .select_from(RUNS)
    .where(RUNS.c.submitter == sa.bindparam("p_submitter"), RUNS.c.finished_at.is_(None))
)
ADVISORY_XACT_LOCK = sa.text("SELECT pg_advisory_xact_lock(:p_key)")


# --- forge repositories and their deliveries (pipelines.store.repos) ------------------------

PROCESSING = "processing"  # the verdict of a claimed delivery still being acted on
REPOSITORY_BY_ID = sa.select(REPOSITORIES).where(REPOSITORIES.c.id == sa.bindparam("p_ref"))
REPOSITORY_BY_NAME = sa.select(REPOSITORIES).where(REPOSITORIES.c.name == sa.bindparam("p_ref"))
REPOSITORIES_BY_NAME = sa.select(REPOSITORIES).order_by(REPOSITORIES.c.name)
INSERT_REPOSITORY = sa.insert(REPOSITORIES)
SET_REPOSITORY_SECRET = (
    sa.update(REPOSITORIES).where(REPOSITORIES.c.id == sa.bindparam("p_id"))
    .values(secret_sealed=sa.bindparam("p_secret"), secret_rotated_at=_at("p_now"))
)
DELETE_REPOSITORY = sa.delete(REPOSITORIES).where(REPOSITORIES.c.id == sa.bindparam("p_id"))
DELETE_DELIVERIES_OF = sa.delete(DELIVERIES).where(DELIVERIES.c.repo_id == sa.bindparam("p_id"))
DELETE_RUN_LINKS_OF = sa.delete(REPOSITORY_RUNS).where(REPOSITORY_RUNS.c.repo_id == sa.bindparam("p_id"))
_SEEN_COLUMNS = (DELIVERIES.c.id, DELIVERIES.c.verdict, DELIVERIES.c.status_code, DELIVERIES.c.message,
                 DELIVERIES.c.run_id, DELIVERIES.c.received_at)
# two statements, each on its unique index (an OR of both would scan): on every delivery's path
SEEN_BY_ID = sa.select(*_SEEN_COLUMNS).where(
    DELIVERIES.c.repo_id == sa.bindparam("p_repo"), DELIVERIES.c.delivery_id == sa.bindparam("p_delivery"))
SEEN_BY_BODY = sa.select(*_SEEN_COLUMNS).where(
    DELIVERIES.c.repo_id == sa.bindparam("p_repo"), DELIVERIES.c.body_sha256 == sa.bindparam("p_body"))
TAKE_OVER = sa.update(DELIVERIES).where(
    DELIVERIES.c.id == sa.bindparam("p_id"), DELIVERIES.c.verdict == PROCESSING,
    DELIVERIES.c.received_at == _at("p_then")).values(received_at=_at("p_now"))
INSERT_DELIVERY = sa.insert(DELIVERIES)
SETTLE_DELIVERY = sa.update(DELIVERIES).where(DELIVERIES.c.id == sa.bindparam("p_id")).values(
    verdict=sa.bindparam("p_verdict"), status_code=sa.bindparam("p_status"), message=sa.bindparam("p_message"),
    run_id=sa.bindparam("p_run_id"))
DELETE_DELIVERY = sa.delete(DELIVERIES).where(DELIVERIES.c.id == sa.bindparam("p_id"))
LATEST_DELIVERIES = (
    sa.select(DELIVERIES).where(DELIVERIES.c.repo_id == sa.bindparam("p_repo"))
    .order_by(DELIVERIES.c.received_at.desc(), DELIVERIES.c.id.desc())
    .limit(sa.bindparam("p_limit"))
)
# the link carries its run's created_at: a repository's run list reads one index range (0013)
INSERT_RUN_LINK = sa.insert(REPOSITORY_RUNS).values(
    created_at=sa.select(RUNS.c.created_at).where(RUNS.c.id == sa.bindparam("p_run")).scalar_subquery())
UNFINISHED_MERGE_REQUEST_RUNS = (
    sa.select(REPOSITORY_RUNS.c.run_id)
    .join(RUNS, RUNS.c.id == REPOSITORY_RUNS.c.run_id)
    .where(REPOSITORY_RUNS.c.repo_id == sa.bindparam("p_repo"),
           REPOSITORY_RUNS.c.merge_request_iid == sa.bindparam("p_iid"), RUNS.c.finished_at.is_(None))
    .order_by(RUNS.c.created_at)
)


# --- reads (pipelines.store.reads) ----------------------------------------------------------

PING = sa.text("SELECT 1")
RUN_FOR_WORKER = sa.select(*_RUN_WITHOUT_PIPELINE).where(RUNS.c.id == sa.bindparam("p_run_id"))
RUN_CANCELLED = sa.select(RUNS.c.cancelled).where(RUNS.c.id == sa.bindparam("p_run_id"))
RUN_FINISHED_AT = sa.select(RUNS.c.id, RUNS.c.finished_at).where(RUNS.c.id == sa.bindparam("p_run_id"))
JOB_VARIABLES = sa.select(RUNS.c.job_variables).where(RUNS.c.id == sa.bindparam("p_run_id"))
RUN_JOBS = sa.select(JOBS).where(JOBS.c.run_id == sa.bindparam("p_run_id")).order_by(JOBS.c.position)
FIRST_NAMES = (
    sa.select(JOBS.c.name)
    .where(JOBS.c.run_id == sa.bindparam("p_run_id"), JOBS.c.position < sa.bindparam("p_count"))
    .order_by(JOBS.c.position)
)
QUEUED_JOB_IDS = (
    sa.select(JOBS.c.id)
    .where(JOBS.c.run_id == sa.bindparam("p_run_id"), JOBS.c.status == "queued")
    .order_by(JOBS.c.position)
)
JOB_STATES = sa.select(JOBS.c.status, JOBS.c.allow_failure, JOBS.c.reason).where(
    JOBS.c.run_id == sa.bindparam("p_run_id"))
JOB_EXISTS = sa.select(JOBS.c.id).where(JOBS.c.id == sa.bindparam("p_job_id"))
# what the API shows of a run (never its secrets, nor its pipeline text) and of its jobs
RUN_VIEW = sa.select(
    RUNS.c.id, RUNS.c.status, RUNS.c.cancelled, RUNS.c.trust, RUNS.c.source, RUNS.c.ref, RUNS.c.sha,
    RUNS.c.message, RUNS.c.variables, RUNS.c.stages, RUNS.c.created_at, RUNS.c.finished_at,
).where(RUNS.c.id == sa.bindparam("p_run_id"))
_JOB_VIEW_COLUMNS = (
    JOBS.c.id, JOBS.c.run_id, JOBS.c.stage, JOBS.c.name, JOBS.c.status, JOBS.c.reason, JOBS.c.exit_code,
    JOBS.c.signal, JOBS.c.attempt, JOBS.c.duration_s, JOBS.c.started_at, JOBS.c.finished_at, JOBS.c.usage,
    JOBS.c.result,
)
RUN_VIEW_JOBS = sa.select(*_JOB_VIEW_COLUMNS).where(JOBS.c.run_id == sa.bindparam("p_run_id")).order_by(
    JOBS.c.position)
_ARTIFACT_VIEW_COLUMNS = (ARTIFACTS.c.job_id, ARTIFACTS.c.path, ARTIFACTS.c.size, ARTIFACTS.c.sha256)
# what the API and the UI show and serve: an artifact past its expires_at is gone for readers at
# once (as on GitLab), not when the sweeper gets to its row; "now" is the time of the read, taken
# when the statement runs, so the readers' signatures need no clock
_SHOWN = sa.or_(ARTIFACTS.c.expires_at.is_(None), ARTIFACTS.c.expires_at > sa.bindparam(
    "p_read_now", type_=UTCDateTime(), callable_=lambda: dt.datetime.now(dt.UTC)))
RUN_VIEW_ARTIFACTS = (
    sa.select(*_ARTIFACT_VIEW_COLUMNS)
    .join(JOBS, JOBS.c.id == ARTIFACTS.c.job_id)
    .where(JOBS.c.run_id == sa.bindparam("p_run_id"), _SHOWN)
    .order_by(ARTIFACTS.c.path)
)
JOB_ROW = sa.select(JOBS).where(JOBS.c.id == sa.bindparam("p_job_id"))
ARTIFACTS_OF_JOB = sa.select(ARTIFACTS).where(ARTIFACTS.c.job_id == sa.bindparam("p_job_id"), _SHOWN).order_by(
    ARTIFACTS.c.path)
ARTIFACT_AT = (
    sa.select(ARTIFACTS)
    .where(ARTIFACTS.c.job_id == sa.bindparam("p_job_id"), ARTIFACTS.c.path == sa.bindparam("p_path"), _SHOWN)
    .order_by(ARTIFACTS.c.id.desc())
    .limit(1)
)
_LIVE_ARTIFACT = sa.or_(ARTIFACTS.c.expires_at.is_(None), ARTIFACTS.c.expires_at > _at("p_now"))
_NAMED_JOBS = (JOBS.c.run_id == sa.bindparam("p_run_id"), JOBS.c.name.in_(sa.bindparam("p_names", expanding=True)))
# the artifacts a job starts with: those of the named jobs of its run, unless expired (the sweeper
# removes them, maybe while this job starts)
ARTIFACT_INPUTS = (
    sa.select(ARTIFACTS.c.path, ARTIFACTS.c.sha256)
    .join(JOBS, JOBS.c.id == ARTIFACTS.c.job_id)
    .where(*_NAMED_JOBS, _LIVE_ARTIFACT)
    .order_by(ARTIFACTS.c.id)
)
# the named jobs whose result lists artifacts of which no row is live (expired, or removed by the
# sweeper): a job taking artifacts from them fails, as GitLab's missing_dependency_failure
ARTIFACTS_GONE = (
    sa.select(JOBS.c.name)
    .where(*_NAMED_JOBS, sa.func.json_array_length(JOBS.c.result["artifacts"]) > 0,
           ~sa.exists().where(ARTIFACTS.c.job_id == JOBS.c.id, _LIVE_ARTIFACT))
    .order_by(JOBS.c.position)
)
# /metrics counts the runs and jobs that are not over, each status one range of its index: a
# count of every status read every row the history holds (revision 0012)
LIVE_RUN_STATUSES = ("created", "waiting_for_approval", "running", "manual")
LIVE_JOB_STATUSES = ("created", "queued", "manual", "running")
RUNS_BY_STATUS = (sa.select(RUNS.c.status, sa.func.count()).where(RUNS.c.status.in_(LIVE_RUN_STATUSES))
                  .group_by(RUNS.c.status))
JOBS_BY_STATUS = (sa.select(JOBS.c.status, sa.func.count()).where(JOBS.c.status.in_(LIVE_JOB_STATUSES))
                  .group_by(JOBS.c.status))


def json_text(value: object) -> str:
    """``value`` as the compact JSON text a JSON column's bind step would write."""
    return _dumps(value)


_dumps = json.JSONEncoder(separators=(",", ":")).encode
