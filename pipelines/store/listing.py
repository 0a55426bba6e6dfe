"""Reading runs for people: filtered, paged run lists and everything one run or job page shows (adapter).

The API's ``GET /api/v1/runs`` and the web UI's pages read through these functions only, so what
a page shows and what the API answers are the same rows. Everything here only reads.

Pages are keyed, not numbered: a page is the runs older than a cursor ``(created_at, id)``, newest
first, so a page costs the same at any depth (an ``OFFSET`` walks every row it skips) and a run
created while someone pages is not shown twice. The order is on the ``run.created_at`` index; with
10,000 runs a page of 50 reads 51 rows (bench/bench_ui.py).

A run's secrets are never read here, except by :func:`run_inputs`, which hands them to a retry
that stores them again; no summary or detail carries them.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session

from pipelines.store.errors import JobNotFound, RunNotFound
from pipelines.store.models import Artifact, Job, JobAttempt, Repository, RepositoryRun, Run, WebhookDelivery

RUN_STATUSES = ("created", "waiting_for_approval", "running", "manual", "succeeded", "failed", "cancelled")
RUN_SOURCES = ("cli", "api", "webhook")
UNFINISHED_RUN_STATUSES = frozenset({"created", "waiting_for_approval", "running"})
MAX_PAGE = 200

_RUNS: Any = Run.__table__  # type: ignore[attr-defined]
_JOBS: Any = Job.__table__  # type: ignore[attr-defined]
_LINKS: Any = RepositoryRun.__table__  # type: ignore[attr-defined]
_REPOS: Any = Repository.__table__  # type: ignore[attr-defined]
_ATTEMPTS: Any = JobAttempt.__table__  # type: ignore[attr-defined]
_ARTIFACTS: Any = Artifact.__table__  # type: ignore[attr-defined]
_DELIVERIES: Any = WebhookDelivery.__table__  # type: ignore[attr-defined]

# the summary's columns: never the pipeline text, the variables or the secrets
_SUMMARY_COLUMNS = (
    _RUNS.c.id, _RUNS.c.status, _RUNS.c.cancelled, _RUNS.c.trust, _RUNS.c.source, _RUNS.c.ref, _RUNS.c.sha,
    # the title is the message's first line; the whole message can be long, so only its head is read
    sa.func.substr(_RUNS.c.message, 1, 300).label("message_head"),
    _RUNS.c.created_at, _RUNS.c.finished_at, _RUNS.c.submitter, _RUNS.c.jobs_total, _RUNS.c.jobs_failed,
    _LINKS.c.repo_id, _REPOS.c.name.label("repo_name"), _LINKS.c.kind, _LINKS.c.merge_request_iid,
    _LINKS.c.from_fork,
)
_SUMMARY_FROM = _RUNS.outerjoin(_LINKS, _LINKS.c.run_id == _RUNS.c.id).outerjoin(
    _REPOS, _REPOS.c.id == _LINKS.c.repo_id)
# one repository's runs: from its links (the index on repo_id, created_at), each to its run
_REPOSITORY_FROM = _LINKS.join(_RUNS, _RUNS.c.id == _LINKS.c.run_id).join(_REPOS, _REPOS.c.id == _LINKS.c.repo_id)


@dataclass(frozen=True, slots=True)
class RunFilter:
    """Which runs a list shows; every field left empty matches every run.

    ``repository`` is a repository's id or name; ``statuses`` and ``sources`` match any of theirs;
    ``created_since`` keeps runs created at or after it; ``before`` is the cursor of the last run
    of the previous page.
    """

    repository: str | None = None
    ref: str | None = None
    statuses: tuple[str, ...] = ()
    sources: tuple[str, ...] = ()
    created_since: dt.datetime | None = None
    before: tuple[dt.datetime, str] | None = None
    limit: int = 50


@dataclass(frozen=True, slots=True)
class RunSummary:
    """One line of a run list."""

    id: str
    status: str
    cancelled: bool
    trust: str
    source: str
    ref: str
    sha: str
    title: str
    created_at: dt.datetime
    finished_at: dt.datetime | None
    trigger: str
    repository_id: str | None
    repository: str | None
    jobs_total: int
    jobs_failed: int

    @property
    def cursor(self) -> tuple[dt.datetime, str]:
        return self.created_at, self.id

    def duration_s(self, now: dt.datetime) -> float:
        """Seconds from creation to the end (or to ``now`` while it runs)."""
        return max(0.0, ((self.finished_at or now) - self.created_at).total_seconds())


@dataclass(frozen=True, slots=True)
class RunPage:
    runs: tuple[RunSummary, ...]
    #: the cursor of the next page, None on the last
    next_before: tuple[dt.datetime, str] | None


def title_of(message: str) -> str:
    """A commit message's title: its first non-empty line, without surrounding spaces.

    >>> title_of("\\nFix the parser\\n\\nLong story.")
    'Fix the parser'
    """
    for line in message.splitlines():
        if line.strip():
            return line.strip()
    return ""


def trigger_of(source: str, submitter: str | None, kind: str | None, merge_request_iid: int | None,
               from_fork: bool | None) -> str:
    """What started a run, in a few words (a web-hook's event, the token's name, a local run).

    >>> trigger_of("webhook", "repo:x", "merge_request", 7, True)
    'merge request !7 (fork)'
    >>> trigger_of("api", "token:ci", None, None, None)
    'token ci'
    """
    if kind == "merge_request":
        return f"merge request !{merge_request_iid}" + (" (fork)" if from_fork else "")
    if kind:
        return kind
    if submitter and submitter.startswith("token:"):
        return f"token {submitter.removeprefix('token:')}"
    if submitter:
        return submitter
    return "local" if source == "cli" else source


def _summary(row: Any) -> RunSummary:
    return RunSummary(
        id=row.id, status=row.status, cancelled=bool(row.cancelled), trust=row.trust, source=row.source,
        ref=row.ref, sha=row.sha, title=title_of(row.message_head or ""), created_at=row.created_at,
        finished_at=row.finished_at,
        trigger=trigger_of(row.source, row.submitter, row.kind, row.merge_request_iid, row.from_fork),
        repository_id=row.repo_id, repository=row.repo_name, jobs_total=int(row.jobs_total or 0),
        jobs_failed=int(row.jobs_failed or 0))


def list_runs(session: Session, wanted: RunFilter) -> RunPage:
    """One page of runs matching ``wanted``, newest first, and the cursor of the next page."""
    limit = max(1, min(wanted.limit, MAX_PAGE))
    query = sa.select(*_SUMMARY_COLUMNS).select_from(_SUMMARY_FROM)
    newest = (_RUNS.c.created_at, _RUNS.c.id)
    if wanted.repository:
        # the repository first (its id or its name, each unique), then its links newest first from
        # (repo_id, created_at, run_id): one index range, however many runs other repositories have
        repo_id = session.connection().execute(sa.select(_REPOS.c.id).where(
            sa.or_(_REPOS.c.id == wanted.repository, _REPOS.c.name == wanted.repository))).scalar()
        if repo_id is None:
            return RunPage((), None)
        query = sa.select(*_SUMMARY_COLUMNS).select_from(_REPOSITORY_FROM).where(_LINKS.c.repo_id == repo_id)
        newest = (_LINKS.c.created_at, _LINKS.c.run_id)
    if wanted.ref:
        query = query.where(_RUNS.c.ref == wanted.ref)
    if wanted.created_since is not None:
        query = query.where(_RUNS.c.created_at >= wanted.created_since)
    if wanted.before is not None:
        at, run_id = wanted.before
        query = query.where(sa.or_(newest[0] < at, sa.and_(newest[0] == at, newest[1] < run_id)))
    # One page per status (and per source) asked for, each read newest first from its own
    # (status|source, created_at, id) index, then merged: an IN over several values made the
    # database read every run of those statuses and sort them (revision 0012).
    for column, values in ((_RUNS.c.status, wanted.statuses), (_RUNS.c.source, wanted.sources)):
        if len(values) == 1:
            query = query.where(column == values[0])
    parts = [query]
    for column, values in ((_RUNS.c.status, wanted.statuses), (_RUNS.c.source, wanted.sources)):
        if len(values) > 1:
            parts = [part.where(column == value) for part in parts for value in values]
    rows = session.connection().execute(_newest(parts, limit + 1, newest)).all()
    runs = tuple(_summary(row) for row in rows[:limit])
    return RunPage(runs, runs[-1].cursor if len(rows) > limit else None)


def _newest(parts: list[Any], count: int, newest: tuple[Any, Any]) -> Any:
    """The ``count`` newest rows of the union of ``parts`` (each read newest first by the columns
    ``newest``, the run's creation time and id or its link's copy of them, ``count`` at most)."""
    ordered = [part.order_by(newest[0].desc(), newest[1].desc()).limit(count) for part in parts]
    if len(ordered) == 1:
        return ordered[0]
    union = sa.union_all(*(sa.select(part.subquery()) for part in ordered)).subquery()
    return sa.select(union).order_by(union.c.created_at.desc(), union.c.id.desc()).limit(count)


def run_summary(session: Session, run_id: str) -> RunSummary:
    row = session.connection().execute(
        sa.select(*_SUMMARY_COLUMNS).select_from(_SUMMARY_FROM).where(_RUNS.c.id == run_id)).first()
    if row is None:
        raise RunNotFound(run_id)
    return _summary(row)


# --- one run ------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class JobLine:
    """One job as a run page draws it (no spec beyond what the graph needs)."""

    id: str
    name: str
    stage: str
    stage_index: int
    status: str
    reason: str | None
    exit_code: int | None
    signal: int | None
    attempt: int
    when: str
    allow_failure: bool
    #: the jobs it ``needs`` (empty for a job that follows the stage order)
    needs: tuple[str, ...]
    follows_stages: bool
    started_at: dt.datetime | None
    finished_at: dt.datetime | None
    duration_s: float | None
    message: str | None
    retry_max: int


@dataclass(frozen=True, slots=True)
class RunDetail:
    summary: RunSummary
    stages: tuple[str, ...]
    variables: dict[str, str]
    message: str
    jobs: tuple[JobLine, ...]
    attempts: dict[str, int] = field(default_factory=dict)  # job id → attempts recorded


_JOB_LINE_COLUMNS = (
    _JOBS.c.id, _JOBS.c.name, _JOBS.c.stage, _JOBS.c.stage_index, _JOBS.c.status, _JOBS.c.reason,
    _JOBS.c.exit_code, _JOBS.c.signal, _JOBS.c.attempt, _JOBS.c.when, _JOBS.c.allow_failure, _JOBS.c.needs,
    _JOBS.c.follows_stages, _JOBS.c.started_at, _JOBS.c.finished_at, _JOBS.c.duration_s, _JOBS.c.result,
    _JOBS.c.spec,
)


def _retry_max(spec: Any) -> int:
    retry = spec.get("retry") if isinstance(spec, dict) else None
    value = retry.get("max") if isinstance(retry, dict) else None
    return value if isinstance(value, int) else 0


def _job_line(row: Any) -> JobLine:
    result = row.result if isinstance(row.result, dict) else {}
    message = result.get("message")
    needs = tuple(str(n) for n in (row.needs or ())) if not row.follows_stages else ()
    return JobLine(
        id=row.id, name=row.name, stage=row.stage, stage_index=int(row.stage_index or 0), status=row.status,
        reason=row.reason, exit_code=row.exit_code, signal=row.signal, attempt=int(row.attempt or 0),
        when=row.when, allow_failure=bool(row.allow_failure), needs=needs, follows_stages=bool(row.follows_stages),
        started_at=row.started_at, finished_at=row.finished_at, duration_s=row.duration_s,
        message=message if isinstance(message, str) else None, retry_max=_retry_max(row.spec))


def run_detail(session: Session, run_id: str) -> RunDetail:
    """The run (without its secrets or pipeline text) and its jobs in plan order."""
    connection = session.connection()
    summary = run_summary(session, run_id)
    head = connection.execute(sa.select(_RUNS.c.stages, _RUNS.c.variables, _RUNS.c.message)
                              .where(_RUNS.c.id == run_id)).one()
    jobs = connection.execute(sa.select(*_JOB_LINE_COLUMNS).where(_JOBS.c.run_id == run_id)
                              .order_by(_JOBS.c.position)).all()
    counted = connection.execute(
        sa.select(_ATTEMPTS.c.job_id, sa.func.count()).join(_JOBS, _JOBS.c.id == _ATTEMPTS.c.job_id)
        .where(_JOBS.c.run_id == run_id).group_by(_ATTEMPTS.c.job_id)).all()
    return RunDetail(summary=summary, stages=tuple(head.stages or ()), variables=dict(head.variables or {}),
                     message=head.message or "", jobs=tuple(_job_line(row) for row in jobs),
                     attempts={str(row[0]): int(row[1]) for row in counted})


@dataclass(frozen=True, slots=True)
class RunInputs:
    """What a run was made from, for running it again (secrets included: they are stored again)."""

    pipeline: str
    variables: dict[str, str]
    secrets: dict[str, str] = field(repr=False)
    ref: str
    sha: str
    message: str
    trust: str


def run_inputs(session: Session, run_id: str) -> RunInputs:
    row = session.connection().execute(
        sa.select(_RUNS.c.pipeline, _RUNS.c.variables, _RUNS.c.secrets, _RUNS.c.ref, _RUNS.c.sha, _RUNS.c.message,
                  _RUNS.c.trust).where(_RUNS.c.id == run_id)).first()
    if row is None:
        raise RunNotFound(run_id)
    return RunInputs(row.pipeline or "", dict(row.variables or {}), dict(row.secrets or {}), row.ref or "",
                     row.sha or "", row.message or "", row.trust)


# --- one job ------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class AttemptLine:
    attempt: int
    status: str
    reason: str | None
    exit_code: int | None
    started_at: dt.datetime | None
    finished_at: dt.datetime | None
    duration_s: float | None
    retried: bool


@dataclass(frozen=True, slots=True)
class ArtifactLine:
    path: str
    size: int
    sha256: str
    expires_at: dt.datetime | None


@dataclass(frozen=True, slots=True)
class JobDetail:
    line: JobLine
    run: RunSummary
    spec: dict[str, Any]
    result: dict[str, Any]
    usage: dict[str, Any]
    log_path: str | None
    queued_at: dt.datetime | None
    attempts: tuple[AttemptLine, ...]
    artifacts: tuple[ArtifactLine, ...]


def job_detail(session: Session, job_id: str) -> JobDetail:
    """The job with its spec, last record, attempts and kept artifacts (newest row per path)."""
    connection = session.connection()
    row = connection.execute(sa.select(*_JOB_LINE_COLUMNS, _JOBS.c.run_id, _JOBS.c.usage, _JOBS.c.log_path,
                                       _JOBS.c.queued_at).where(_JOBS.c.id == job_id)).first()
    if row is None:
        raise JobNotFound(job_id)
    attempts = connection.execute(
        sa.select(_ATTEMPTS.c.attempt, _ATTEMPTS.c.status, _ATTEMPTS.c.reason, _ATTEMPTS.c.exit_code,
                  _ATTEMPTS.c.started_at, _ATTEMPTS.c.finished_at, _ATTEMPTS.c.duration_s, _ATTEMPTS.c.retried)
        .where(_ATTEMPTS.c.job_id == job_id).order_by(_ATTEMPTS.c.attempt)).all()
    kept = connection.execute(
        sa.select(_ARTIFACTS.c.path, _ARTIFACTS.c.size, _ARTIFACTS.c.sha256, _ARTIFACTS.c.expires_at)
        .where(_ARTIFACTS.c.job_id == job_id).order_by(_ARTIFACTS.c.path, _ARTIFACTS.c.id.desc())).all()
    seen: set[str] = set()
    artifacts = []
    for a in kept:
        if a.path not in seen:
            seen.add(a.path)
            artifacts.append(ArtifactLine(a.path, int(a.size or 0), a.sha256, a.expires_at))
    return JobDetail(
        line=_job_line(row), run=run_summary(session, row.run_id),
        spec=row.spec if isinstance(row.spec, dict) else {},
        result=row.result if isinstance(row.result, dict) else {},
        usage=row.usage if isinstance(row.usage, dict) else {}, log_path=row.log_path, queued_at=row.queued_at,
        attempts=tuple(AttemptLine(int(a.attempt), a.status, a.reason, a.exit_code, a.started_at, a.finished_at,
                                   a.duration_s, bool(a.retried)) for a in attempts),
        artifacts=tuple(artifacts))


def job_ids_of_run(session: Session, run_id: str) -> Sequence[str]:
    return session.connection().execute(
        sa.select(_JOBS.c.id).where(_JOBS.c.run_id == run_id).order_by(_JOBS.c.position)).scalars().all()


# --- repositories -----------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class DeliveryLine:
    repo_id: str
    repository: str
    event: str
    verdict: str
    status_code: int
    message: str
    run_id: str | None
    received_at: dt.datetime


def deliveries_with_verdict(session: Session, verdict: str, limit: int = 50) -> tuple[DeliveryLine, ...]:
    """The latest deliveries (of every repository) that got ``verdict``, newest first (the admin
    page lists ``needs_approval`` ones: what a fork's pull request is waiting for)."""
    rows = session.connection().execute(
        sa.select(_DELIVERIES.c.repo_id, _REPOS.c.name, _DELIVERIES.c.event, _DELIVERIES.c.verdict,
                  _DELIVERIES.c.status_code, _DELIVERIES.c.message, _DELIVERIES.c.run_id,
                  _DELIVERIES.c.received_at)
        .join(_REPOS, _REPOS.c.id == _DELIVERIES.c.repo_id)
        .where(_DELIVERIES.c.verdict == verdict)
        .order_by(_DELIVERIES.c.received_at.desc(), _DELIVERIES.c.id.desc()).limit(max(1, min(limit, 500)))).all()
    return tuple(DeliveryLine(r.repo_id, r.name, r.event, r.verdict, int(r.status_code), r.message, r.run_id,
                              r.received_at) for r in rows)
