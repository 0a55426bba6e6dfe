"""Runs and jobs as the API sees them: plan and store a run, read, cancel, publish (adapter).

Every change commits first and publishes afterwards (the worker must find the job queued when
the message arrives). If the broker is down the request still succeeds: the outbox row stays
unpublished and the worker's sweeper sends it later, which is why a failed publish is logged,
not returned. A new run's outbox rows are marked sent in the transaction that creates them and
marked pending again if sending fails: no second write races the worker's claim of the job
(if the API dies in between, the sweeper's stale-queue check re-announces the job). The
functions are synchronous (SQLModel); async routes call them in a thread.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections.abc import Callable, Sequence
from typing import cast

from sqlalchemy.engine import Engine
from sqlmodel import Session

from api.errors import Forbidden, NothingToRun, OverPolicy, PipelineInvalid, TooManyRuns
from api.publish import Publisher, PublishFailed
from api.schemas import JobPublic, ProblemPublic, RunCreate, RunCreated, RunPublic, job_public, run_public
from api.settings import ApiToken
from pipelines.language.model import PipelineInputs, Plan
from pipelines.language.planner import plan
from pipelines.language.problems import Problems
from pipelines.policy import LevelPolicy, Policy, TrustLevel, admit
from pipelines.store import reads
from pipelines.store.db import read_scope, session_scope
from pipelines.store.errors import RunNotFound
from pipelines.store.inflight import count_runs_in_flight, record_submitter
from pipelines.store.models import Artifact, Job, Run
from pipelines.store.outbox import mark_published, mark_unpublished
from pipelines.store.transitions import cancel_unfinished_job, cancel_unfinished_run, create_run
from pipelines.store.transitions.creation import StoredRun
from pipelines.trace import mark

PIPELINE_FILE = "pipeline.yml"  # the name problems are reported against
log = logging.getLogger("sandpit.api")

#: how many requests plan and store a run at once; the others wait asleep. With 50 clients the
#: API's 40 request threads all planned and wrote at once: the one holding the database's write
#: turn shared the GIL with 39 others, so every write took many switch intervals (5 ms each) and
#: the POST p99 was past a second (bench/bench_service.py --clients 50). Two keep a core busy
#: while the other waits on SQLite or Redis.
SUBMIT_AT_ONCE = 2
_submitting = threading.BoundedSemaphore(SUBMIT_AT_ONCE)


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def run_trust(caller: ApiToken, asked: str | None) -> TrustLevel:
    """The trust level of a run ``caller`` submits: what it asked for, else the token's own; only a
    trusted token may ask for ``trusted`` (:class:`Forbidden` otherwise).

    >>> run_trust(ApiToken("ci", "s", trusted=True), "untrusted"), run_trust(ApiToken("u", "s"), None)
    ('untrusted', 'untrusted')
    """
    if asked is None:
        return "trusted" if caller.trusted else "untrusted"
    if asked == "trusted" and not caller.trusted:
        raise Forbidden(f"token `{caller.name}` may not create trusted runs (only a token configured with "
                        "`:trusted` in SANDPIT_API_TOKENS may); leave out `trust` or ask for `untrusted`")
    return "trusted" if asked == "trusted" else "untrusted"


def submitter_of(caller: ApiToken) -> str:
    """Whose runs in flight a run counts against (web-hooks will name the repository)."""
    return f"token:{caller.name}"


def plan_request(request: RunCreate, policy: LevelPolicy | None = None) -> Plan:
    """The plan of an API-triggered run as the server will run it (the level's defaults filled),
    or :class:`PipelineInvalid` / :class:`OverPolicy` with every problem."""
    inputs = PipelineInputs(trigger="api", ref=request.ref, sha=request.sha or "0" * 40, variables=request.variables)
    result = plan({PIPELINE_FILE: request.pipeline}, inputs)
    if isinstance(result, Problems):
        raise PipelineInvalid(result.items)
    why = result.nothing_to_run()
    if why is not None:
        raise NothingToRun(why)
    if policy is None:
        return result
    admitted = admit(result, policy)
    if not isinstance(admitted, Plan):
        raise OverPolicy((*admitted, *result.warnings), policy.level)
    return admitted


def _check_in_flight(session: Session, submitter: str, policy: LevelPolicy) -> None:
    cap = policy.max_runs_in_flight
    if cap is None:
        return
    in_flight = count_runs_in_flight(session, submitter)
    if in_flight >= cap:
        raise TooManyRuns(
            f"{submitter} has {in_flight} run(s) in flight; the {policy.level} policy allows at most {cap} "
            f"({policy.setting('RUNS')}); submit again when one has ended"
        )


def submit_run(
    engine: Engine,
    publisher: Publisher,
    request: RunCreate,
    caller: ApiToken,
    policy: Policy,
    *,
    run_id: str | None = None,
    before_publish: Callable[[], object] | None = None,
) -> RunCreated:
    """Decide the trust level, plan and admit under its policy, store (counting the submitter's
    runs in flight in the same transaction), publish the queued jobs; the new run.

    ``run_id`` (default: a fresh one) and ``before_publish`` (called after the commit, before
    the first job is announced) let a caller listen for the run's events before any of its jobs
    can run. The answer is built from what was stored, without reading it back.
    """
    mark("submit_in")
    trust = run_trust(caller, request.trust)
    level = policy.level(trust)
    with _submitting:
        planned, stored = _plan_and_store(engine, request, caller, trust, level, run_id)
    mark("committed")
    # a new run has no artifacts; the objects stay readable after the commit
    created = run_public(stored.run, [job_public(job, []) for job in stored.jobs])
    if before_publish is not None:
        before_publish()
    if stored.queued:
        try:
            publisher.publish(stored.queued)
            mark("published")
        except PublishFailed as exc:
            _log_publish_failure(len(stored.queued), exc)
            with session_scope(engine) as session:
                mark_unpublished(session, list(stored.queued))
    warnings = [ProblemPublic.model_validate(p.as_dict()) for p in planned.warnings]
    return RunCreated(**created.model_dump(), warnings=warnings)


def _plan_and_store(engine: Engine, request: RunCreate, caller: ApiToken, trust: TrustLevel, level: LevelPolicy,
                    run_id: str | None) -> tuple[Plan, StoredRun]:
    planned = plan_request(request, level)
    submitter = submitter_of(caller)
    with session_scope(engine) as session:
        _check_in_flight(session, submitter, level)
        stored = create_run(
            session,
            planned,
            trust=trust,
            source="api",
            variables=request.variables,
            secrets=request.secrets,
            now=utcnow(),
            pipeline=request.pipeline,
            ref=request.ref,
            sha=request.sha,
            message=request.message,
            run_id=run_id,
            mark_sent=True,  # undone below if sending fails (see outbox.py)
        )
        record_submitter(session, stored.run.id, submitter)
    return planned, stored


def publish_committed(engine: Engine, publisher: Publisher, job_ids: Sequence[str]) -> None:
    """Announce committed queued jobs, then mark their outbox rows published."""
    if not job_ids:
        return
    try:
        publisher.publish(job_ids)
    except PublishFailed as exc:
        _log_publish_failure(len(job_ids), exc)
        return
    with session_scope(engine) as session:
        mark_published(session, list(job_ids), utcnow())


def _log_publish_failure(count: int, exc: PublishFailed) -> None:
    """One line per failure, no traceback: during a broker outage every request fails the same
    way, and the count says how long it has lasted (the chain of kombu/redis-py frames says nothing)."""
    log.warning("publishing %d job(s) failed (%s); the outbox sweeper will retry", count, exc)


def read_run(engine: Engine, run_id: str) -> RunPublic:
    """The run and its jobs as they are now (one read-only snapshot: ``reads.read_run_view``;
    the read every ``?wait`` makes when a job ends)."""
    view = reads.read_run_view(engine, run_id)
    # a row has the attributes the *_public functions read from the ORM objects
    jobs = [job_public(cast(Job, job), cast(list[Artifact], view.artifacts.get(job.id, []))) for job in view.jobs]
    return run_public(cast(Run, view.run), jobs)


def read_job(session: Session, job_id: str) -> JobPublic:
    return job_public(reads.job_row(session, job_id), reads.artifacts_of(session, job_id))


def load_job(engine: Engine, job_id: str) -> Job:
    """The job row, detached (its attributes stay readable after the session)."""
    return reads.load_job(engine, job_id)


def run_settled(engine: Engine, run_id: str) -> bool:
    """Whether the run has ended (nothing of it will run any more)."""
    try:
        return reads.run_finished(engine, run_id)
    except RunNotFound:
        return False


def cancel_run_now(engine: Engine, run_id: str) -> RunPublic:
    """Cancel the run (running jobs are asked to stop) and return its new state; a run that has
    ended is left alone (``RunFinished``: 409)."""
    with session_scope(engine) as session:
        cancel_unfinished_run(session, run_id, utcnow())
    return read_run(engine, run_id)


def cancel_job_now(engine: Engine, publisher: Publisher, job_id: str) -> JobPublic:
    """Cancel one job, publish the jobs that start because of it, return its new state; a job
    that has ended is left alone (``JobFinished``: 409)."""
    with session_scope(engine) as session:
        newly = cancel_unfinished_job(session, job_id, utcnow())
    publish_committed(engine, publisher, newly)
    with read_scope(engine) as session:
        return read_job(session, job_id)
