"""The run store's tables (SQLModel ``table=True`` lives only here).

- ``run``: one pipeline run: its source text, inputs, trust level and derived status.
- ``job``: one row per concrete planned job; ``spec`` is the planner's job as JSON
  in its stored form (see :mod:`pipelines.store.spec`: what every job of the run shares is
  on the run); the latest attempt's result is on the row.
- ``job_edge``: the ``needs`` edges between jobs (who to tell when a job changes).
- ``job_attempt``: one row per finished attempt (the history ``retry`` builds).
- ``artifact``: files a job kept, with their expiry.
- ``cache_entry``: caches keyed by (key, trust) so untrusted runs never feed trusted ones.
- ``outbox``: job ids to publish to the broker, written in the transaction that queues them.
- forges: ``repository``, ``webhook_delivery``, ``repository_run``; where a run's files come from
  (``run_source``, ``source_archive``), runs held for approval (``run_approval``), and commit
  statuses (``status_watch``, the ``commit_status`` outbox).
- ``worker``: workers as they announce themselves (heartbeat); ``job_token``: the hashed per-job
  tokens workers that share no disk with the API upload and fetch a job's files with.
- ``run_auto_cancel``: a run's ``workflow:auto_cancel`` settings, when they are not GitLab's defaults.
- ``expired_blob``: stored files no row names any more, for every host's copy to be removed.
- ``cache_blob``: the stored files each cache manifest lists, so expiry keeps what a live cache holds.

Times are stored as naive UTC (SQLite has no time zones) and read back as aware UTC.
Schema changes go through an Alembic revision in ``migrations/versions``.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Dialect
from sqlmodel import Field, SQLModel


class UTCDateTime(sa.types.TypeDecorator[dt.datetime]):
    """Aware UTC datetimes in Python, naive UTC in the database, on every backend."""

    impl = sa.DateTime
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("the store takes aware datetimes only (use datetime.now(UTC))")
        return value.astimezone(dt.UTC).replace(tzinfo=None)

    def process_result_value(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        return None if value is None else value.replace(tzinfo=dt.UTC)


def _time(*, nullable: bool = True, index: bool = False) -> Any:
    return Field(default=None, sa_type=UTCDateTime, nullable=nullable, index=index)


def _json(default: Any) -> Any:
    return Field(default_factory=lambda: default() if callable(default) else default, sa_type=sa.JSON)


class Run(SQLModel, table=True):
    __tablename__ = "run"
    __table_args__ = (
        # the runs in flight of one submitter are counted on every API submission (revision 0003)
        sa.Index("ix_run_submitter_finished_at", "submitter", "finished_at"),
        # a run list filtered by status, ref or source reads its page newest first from one of
        # these, whatever the history holds (revision 0012: ix_run_status was their first column)
        sa.Index("ix_run_status_created_at", "status", "created_at", "id"),
        sa.Index("ix_run_ref_created_at", "ref", "created_at", "id"),
        sa.Index("ix_run_source_created_at", "source", "created_at", "id"),
    )

    id: str = Field(primary_key=True, max_length=36)
    created_at: dt.datetime = Field(sa_type=UTCDateTime, nullable=False, index=True)
    finished_at: dt.datetime | None = _time()
    # 32 wide since revision 0007 (`waiting_for_approval`); SQLite enforces no length, and its
    # declared 16 stays (changing it needs a copy of the table, see revision 0004)
    status: str = Field(default="created", sa_type=sa.String(32).with_variant(sa.String(16), "sqlite"))
    cancelled: bool = Field(default=False)
    trust: str = Field(max_length=16)  # trusted | untrusted
    source: str = Field(max_length=16)  # cli | api | webhook
    pipeline: str = Field(default="", sa_type=sa.Text)
    variables: dict[str, str] = _json(dict)
    # Handed to the worker to inject and mask; the API never returns them (revision 0002).
    secrets: dict[str, str] = _json(dict)
    stages: list[str] = _json(list)
    # the variables every job of the run starts with, stored once (revision 0006): its jobs'
    # specs hold only their own (see pipelines.store.spec.stored_spec_json)
    job_variables: list[list[str]] = _json(list)
    ref: str = Field(default="", max_length=255)
    sha: str = Field(default="", max_length=64)
    message: str = Field(default="", sa_type=sa.Text)
    # who asked for the run (``token:<name>``; web-hooks: the repository), for the policy's
    # runs-in-flight cap; None for local runs and runs from before revision 0003
    submitter: str | None = Field(default=None, max_length=255)
    # The run's jobs counted as advance.RunCounts (revision 0004): a transition updates these
    # instead of reading every job of the run.
    jobs_total: int = Field(default=0)
    jobs_created: int = Field(default=0)
    jobs_active: int = Field(default=0)
    jobs_blocking: int = Field(default=0)
    jobs_failed: int = Field(default=0)
    jobs_cancelled: int = Field(default=0)
    stage_pending: list[int] = _json(list)
    stage_failed: list[int] = _json(list)


class Job(SQLModel, table=True):
    __tablename__ = "job"
    __table_args__ = (
        sa.UniqueConstraint("run_id", "name", name="uq_job_run_name"),
        sa.Index("ix_job_run_stage", "run_id", "stage_index"),
    )

    id: str = Field(primary_key=True, max_length=36)
    run_id: str = Field(foreign_key="run.id", index=True, max_length=36, ondelete="CASCADE")
    position: int = Field(default=0)  # order in the plan (stage order)
    name: str = Field(max_length=255)
    stage: str = Field(max_length=255)
    spec: dict[str, Any] = _json(dict)
    # DAG predecessors (the planner's depends_on) when they are not the run's first jobs (a job
    # that follows stage order stores none: its spec counts them, see spec.stored_spec_json)
    needs: list[str] = _json(list)
    # follows_stages: its predecessors are every job of the earlier stages, so it has no edges
    # (job_edge) and waits on the run's per-stage counts (see pipelines.store.frontier)
    stage_index: int = Field(default=0)  # the stage's place in run.stages
    follows_stages: bool = Field(default=False)
    waiting_on: int = Field(default=0)  # predecessors (edges) whose outcome is pending
    failed_on: int = Field(default=0)  # predecessors (edges) that failed
    when: str = Field(default="on_success", max_length=16)
    allow_failure: bool = Field(default=False)  # after a failure: whether *this* failure is allowed
    status: str = Field(default="created", max_length=16, index=True)
    reason: str | None = Field(default=None, max_length=32)
    exit_code: int | None = None
    signal: int | None = None
    attempt: int = Field(default=0)
    lease_owner: str | None = Field(default=None, max_length=255)
    lease_expires_at: dt.datetime | None = _time(index=True)
    deadline_at: dt.datetime | None = _time()  # started_at + timeout + grace: a backstop
    cancel_requested: bool = Field(default=False)
    queued_at: dt.datetime | None = _time()
    started_at: dt.datetime | None = _time()
    finished_at: dt.datetime | None = _time()
    duration_s: float | None = None
    usage: dict[str, Any] = _json(dict)
    log_path: str | None = Field(default=None, sa_type=sa.Text)
    result: dict[str, Any] = _json(dict)  # the last job result record, as the worker sent it


class JobEdge(SQLModel, table=True):
    """``dependent_id`` waits for ``job_id`` (a ``needs`` edge; revision 0004): the direct
    dependents a job's change is pushed to."""

    __tablename__ = "job_edge"

    job_id: str = Field(foreign_key="job.id", primary_key=True, max_length=36, ondelete="CASCADE")
    dependent_id: str = Field(foreign_key="job.id", primary_key=True, max_length=36, index=True, ondelete="CASCADE")


class JobAttempt(SQLModel, table=True):
    __tablename__ = "job_attempt"
    __table_args__ = (sa.UniqueConstraint("job_id", "attempt", name="uq_attempt_job_attempt"),)

    id: int | None = Field(default=None, primary_key=True)
    job_id: str = Field(foreign_key="job.id", index=True, max_length=36, ondelete="CASCADE")
    attempt: int
    worker_id: str | None = Field(default=None, max_length=255)
    status: str = Field(max_length=16)
    reason: str | None = Field(default=None, max_length=32)
    exit_code: int | None = None
    signal: int | None = None
    started_at: dt.datetime | None = _time()
    finished_at: dt.datetime | None = _time()
    duration_s: float | None = None
    retried: bool = Field(default=False)
    record: dict[str, Any] = _json(dict)


class Artifact(SQLModel, table=True):
    __tablename__ = "artifact"
    # retention asks which stored files rows still name (revision 0010)
    __table_args__ = (sa.Index("ix_artifact_sha256", "sha256"),)

    id: int | None = Field(default=None, primary_key=True)
    job_id: str = Field(foreign_key="job.id", index=True, max_length=36, ondelete="CASCADE")
    path: str = Field(sa_type=sa.Text)
    size: int = Field(default=0, sa_type=sa.BigInteger)
    sha256: str = Field(default="", max_length=64)
    created_at: dt.datetime = Field(sa_type=UTCDateTime, nullable=False)
    expires_at: dt.datetime | None = _time(index=True)  # None: kept until deleted


class CacheEntry(SQLModel, table=True):
    __tablename__ = "cache_entry"

    key: str = Field(primary_key=True, max_length=512)
    trust: str = Field(primary_key=True, max_length=16)
    # index: retention asks which entry names a stored file or manifest (revision 0012)
    sha256: str = Field(max_length=64, index=True)
    size: int = Field(default=0, sa_type=sa.BigInteger)
    created_at: dt.datetime = Field(sa_type=UTCDateTime, nullable=False)


class Outbox(SQLModel, table=True):
    __tablename__ = "outbox"
    # the rows still to publish, oldest first: the sweeper's and /metrics' read, which a walk of
    # every published row made as long as the history (revision 0012)
    __table_args__ = (sa.Index("ix_outbox_pending", "id", sqlite_where=sa.text("published_at IS NULL"),
                               postgresql_where=sa.text("published_at IS NULL")),)

    id: int | None = Field(default=None, primary_key=True)
    job_id: str = Field(foreign_key="job.id", index=True, max_length=36, ondelete="CASCADE")
    created_at: dt.datetime = Field(sa_type=UTCDateTime, nullable=False)
    published_at: dt.datetime | None = _time(index=True)


class Repository(SQLModel, table=True):
    """A forge repository whose web-hooks sandpit accepts (revision 0005). ``secret_sealed`` and
    ``token_sealed`` are Fernet tokens (see :mod:`pipelines.forges.sealing`): the signature checks
    need the secret itself, so it is encrypted, never hashed, and never leaves the store in clear
    except to the code that checks a delivery or reports a status."""

    __tablename__ = "repository"

    id: str = Field(primary_key=True, max_length=36)
    name: str = Field(max_length=255, unique=True)
    forge: str = Field(max_length=16)  # github | gitlab | gitea
    clone_url: str = Field(sa_type=sa.Text)
    secret_sealed: str = Field(sa_type=sa.Text)
    token_sealed: str | None = Field(default=None, sa_type=sa.Text)
    pipeline_path: str = Field(default=".gitlab-ci.yml", max_length=255)
    default_branch: str = Field(default="main", max_length=255)
    fork_policy: str = Field(default="approve", max_length=16)  # run | approve | never
    created_at: dt.datetime = Field(sa_type=UTCDateTime, nullable=False)
    secret_rotated_at: dt.datetime | None = _time()
    # the forge's REST API for commit statuses (revision 0007); None: derived from clone_url
    api_url: str | None = Field(default=None, sa_type=sa.Text)


class WebhookDelivery(SQLModel, table=True):
    """Every web-hook delivery to a known repository and the answer it got (revision 0005).
    ``delivery_id`` and ``body_sha256`` are set only for authenticated deliveries (a forged one
    cannot reserve what a real delivery will use), each unique per repository: a redelivery, or
    a captured body replayed under a new delivery id (GitHub and Gitea sign the body, not the id),
    finds the first answer."""

    __tablename__ = "webhook_delivery"
    __table_args__ = (
        sa.UniqueConstraint("repo_id", "delivery_id", name="uq_delivery_repo_delivery"),
        sa.UniqueConstraint("repo_id", "body_sha256", name="uq_delivery_repo_body"),
    )

    id: int | None = Field(default=None, primary_key=True)
    repo_id: str = Field(foreign_key="repository.id", index=True, max_length=36, ondelete="CASCADE")
    delivery_id: str | None = Field(default=None, max_length=255)
    body_sha256: str | None = Field(default=None, max_length=64)
    event: str = Field(default="", max_length=64)
    verdict: str = Field(max_length=32)
    status_code: int
    message: str = Field(default="", sa_type=sa.Text)
    run_id: str | None = Field(default=None, max_length=36)
    received_at: dt.datetime = Field(sa_type=UTCDateTime, nullable=False, index=True)


class RepositoryRun(SQLModel, table=True):
    """Which repository, ref and merge request a web-hook run belongs to (revision 0005): a
    closed pull request cancels its runs, a later push will supersede the older run's."""

    __tablename__ = "repository_run"
    __table_args__ = (
        sa.Index("ix_repository_run_repo_mr", "repo_id", "merge_request_iid"),
        # a repository's run list, newest first, one index range (revision 0013)
        sa.Index("ix_repository_run_repo_created_at", "repo_id", "created_at", "run_id"),
    )

    run_id: str = Field(foreign_key="run.id", primary_key=True, max_length=36, ondelete="CASCADE")
    repo_id: str = Field(foreign_key="repository.id", max_length=36, ondelete="CASCADE")
    #: the run's created_at, copied when the link is made (revision 0013; never NULL since)
    created_at: dt.datetime | None = Field(default=None, sa_type=UTCDateTime, nullable=True)
    kind: str = Field(max_length=16)  # push | merge_request
    ref: str = Field(default="", max_length=255)
    merge_request_iid: int | None = None
    from_fork: bool = Field(default=False)


class RunSource(SQLModel, table=True):
    """Where a run's jobs get their ``/workspace`` from (revision 0007): a commit (``kind``
    ``commit``: fetched by the worker from ``clone_url``, a fork's for a fork's pull request, into
    the mirror of ``repo_id``) or an uploaded tree (``archive``: ``archive_sha256`` in
    ``source_archive``). A run without a row starts its jobs in an empty workspace."""

    __tablename__ = "run_source"

    run_id: str = Field(foreign_key="run.id", primary_key=True, max_length=36, ondelete="CASCADE")
    kind: str = Field(max_length=16)  # commit | archive
    repo_id: str | None = Field(default=None, foreign_key="repository.id", index=True, max_length=36,
                                ondelete="SET NULL")
    clone_url: str = Field(default="", sa_type=sa.Text)
    sha: str = Field(default="", max_length=64)
    archive_sha256: str | None = Field(default=None, max_length=64, index=True)  # index: revision 0010


class SourceArchive(SQLModel, table=True):
    """An uploaded tree (revision 0007), kept in the database: API and workers share nothing else
    in a multi-host deployment. Content-addressed; capped by the API (SANDPIT_API_MAX_ARCHIVE)."""

    __tablename__ = "source_archive"

    sha256: str = Field(primary_key=True, max_length=64)
    size: int = Field(default=0, sa_type=sa.BigInteger)
    data: bytes = Field(sa_type=sa.LargeBinary)
    created_at: dt.datetime = Field(sa_type=UTCDateTime, nullable=False)


class RunApproval(SQLModel, table=True):
    """A run held until an admin approves it (revision 0007): a fork's pull request under
    ``fork_policy: approve``. ``held_queued``/``held_manual``: the jobs the run's first advance
    made queued/manual, kept ``created`` until the approval gives them back."""

    __tablename__ = "run_approval"

    run_id: str = Field(foreign_key="run.id", primary_key=True, max_length=36, ondelete="CASCADE")
    state: str = Field(default="waiting", max_length=16, index=True)  # waiting | approved | cancelled
    held_queued: list[str] = _json(list)
    held_manual: list[str] = _json(list)
    requested_at: dt.datetime = Field(sa_type=UTCDateTime, nullable=False)
    decided_at: dt.datetime | None = _time()
    decided_by: str | None = Field(default=None, max_length=255)


class StatusWatch(SQLModel, table=True):
    """A run whose state is reported on its commit (revision 0007): what the forge was last told
    (``state``); ``final`` once it was told the end."""

    __tablename__ = "status_watch"

    run_id: str = Field(foreign_key="run.id", primary_key=True, max_length=36, ondelete="CASCADE")
    repo_id: str = Field(foreign_key="repository.id", index=True, max_length=36, ondelete="CASCADE")
    sha: str = Field(max_length=64)
    project: str = Field(default="", max_length=255)  # the forge's owner/name of the repository
    context: str = Field(default="sandpit", max_length=255)  # the status's name on the forge
    target_url: str = Field(default="", sa_type=sa.Text)
    state: str = Field(default="", max_length=16)
    final: bool = Field(default=False, index=True)


class CommitStatus(SQLModel, table=True):
    """The outbox of commit statuses (revision 0007): one row per status to send, written in the
    transaction that decided it, sent by the API's status sender with retries and back-off."""

    __tablename__ = "commit_status"
    __table_args__ = (sa.Index("ix_commit_status_due", "sent_at", "next_attempt_at"),)

    id: int | None = Field(default=None, primary_key=True)
    repo_id: str = Field(foreign_key="repository.id", index=True, max_length=36, ondelete="CASCADE")
    run_id: str | None = Field(default=None, max_length=36)
    sha: str = Field(max_length=64)
    project: str = Field(default="", max_length=255)
    context: str = Field(default="sandpit", max_length=255)
    state: str = Field(max_length=16)  # pending | running | success | failed | canceled | error
    description: str = Field(default="", max_length=255)
    target_url: str = Field(default="", sa_type=sa.Text)
    created_at: dt.datetime = Field(sa_type=UTCDateTime, nullable=False)
    attempts: int = Field(default=0)
    next_attempt_at: dt.datetime | None = _time()
    claimed_until: dt.datetime | None = _time()
    sent_at: dt.datetime | None = _time()
    outcome: str = Field(default="", sa_type=sa.Text)  # the forge's answer, or why it was not sent


class WorkerPresence(SQLModel, table=True):
    """A worker process as it announced itself (revision 0008): what it can run and when it last
    beat. ``id`` is the worker id its leases carry (``job.lease_owner``), so its running jobs are
    the rows it holds. A row whose ``last_seen_at`` is older than a few ``heartbeat_s`` is a worker
    that is gone; its jobs are settled by the lease expiry, not by this table."""

    __tablename__ = "worker"

    id: str = Field(primary_key=True, max_length=255)
    host: str = Field(max_length=255)
    version: str = Field(default="", max_length=64)
    memory_bytes: int = Field(default=0, sa_type=sa.BigInteger)
    cpus: float = Field(default=0.0)
    concurrency: int = Field(default=0)
    runtimes: list[str] = _json(list)
    images: list[dict[str, str]] = _json(list)  # [{"name", "digest"}] of the images in its store
    transport: str = Field(default="local", max_length=16)  # how its files reach the API: local | http
    heartbeat_s: float = Field(default=10.0)
    started_at: dt.datetime = Field(sa_type=UTCDateTime, nullable=False)
    last_seen_at: dt.datetime = Field(sa_type=UTCDateTime, nullable=False, index=True)
    stopped_at: dt.datetime | None = _time()


class JobToken(SQLModel, table=True):
    """The per-job token of a running attempt (revision 0008), GitLab's job-token model: minted
    when the attempt is claimed, stored as its sha256 only, good for that job's files and only
    while that attempt runs (the API checks the job row, so a token outlives nothing)."""

    __tablename__ = "job_token"

    token_sha256: str = Field(primary_key=True, max_length=64)
    job_id: str = Field(foreign_key="job.id", index=True, max_length=36, ondelete="CASCADE")
    attempt: int
    worker_id: str = Field(default="", max_length=255, index=True)
    created_at: dt.datetime = Field(sa_type=UTCDateTime, nullable=False)


class RunAutoCancel(SQLModel, table=True):
    """A run's ``workflow:auto_cancel`` (revision 0010), written with the run and only when it is
    not GitLab's default (``on_new_commit: conservative``, ``on_job_failure: none``): what a newer
    run of its branch may cancel of it (:mod:`pipelines.store.superseding`), and whether a failed
    job cancels the rest (:mod:`pipelines.store.auto_cancel`)."""

    __tablename__ = "run_auto_cancel"

    run_id: str = Field(foreign_key="run.id", primary_key=True, max_length=36, ondelete="CASCADE")
    on_new_commit: str = Field(default="conservative", max_length=16)  # conservative | interruptible | none
    on_job_failure: str = Field(default="none", max_length=16)  # all | none


class CacheBlob(SQLModel, table=True):
    """A stored file a cache manifest lists (revision 0011): what keeps it from expiring with an
    artifact of the same bytes while a cache entry names the manifest (pipelines/store/cache_blobs.py)."""

    __tablename__ = "cache_blob"

    manifest_sha256: str = Field(primary_key=True, max_length=64)
    blob_sha256: str = Field(primary_key=True, max_length=64, index=True)


class ExpiredBlob(SQLModel, table=True):
    """A stored file the store stopped naming (revision 0010): an expired artifact, a replaced
    cache archive. Every host that keeps copies (the API's store over HTTP, each worker's) reads
    these in ``id`` order from a cursor of its own and removes its copy unless a row names the
    file again (:mod:`pipelines.retention`); they are pruned after a week."""

    __tablename__ = "expired_blob"

    id: int | None = Field(default=None, primary_key=True)
    sha256: str = Field(max_length=64)
    expired_at: dt.datetime = Field(sa_type=UTCDateTime, nullable=False, index=True)
