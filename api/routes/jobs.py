"""``/api/v1/jobs/{id}``: the job result record, cancel, play (a manual job) and retry (a finished one).

Play and retry start code, so the run's trust decides who may ask: any token for an untrusted
run, a trusted token for a trusted one (an untrusted token may not create a trusted run, nor run
a trusted run's deploy job again). The run keeps its trust, variables and secrets either way.

A retry also drops the job's live log stream (after the commit, before the new attempt is
announced): the stream of the attempt before ends with its ``eof`` entry, which a follower of the
new attempt would otherwise read as the end. The log file, which the job's page shows once the
attempt has ended, keeps every attempt's output, as it does for an automatic ``retry:``.
"""

from __future__ import annotations

import logging
from typing import Any

from anyio import to_thread
from fastapi import APIRouter
from redis.exceptions import RedisError
from sqlalchemy.engine import Engine

from api import runs
from api.deps import CallerDep, EngineDep, PublisherDep, RedisDep, SessionDep
from api.errors import ApiError, Forbidden
from api.publish import Publisher, PublishFailed
from api.routes import answer_head
from api.schemas import JobPublic
from api.settings import ApiToken
from pipelines.names import log_stream_key
from pipelines.store import reads
from pipelines.store.db import read_scope, session_scope
from pipelines.store.listing import run_summary
from pipelines.store.outbox import mark_published, mark_unpublished
from pipelines.store.transitions import Retried, play_manual_job, retry_job
from pipelines.store.transitions.controls import NotPlayable
from pipelines.store.transitions.retry import NotRetryable

router = APIRouter(prefix="/jobs", tags=["jobs"])
log = logging.getLogger("sandpit.api")


class JobControlRefused(ApiError):
    """409: the job is not in a state the control applies to; the body names its ``status``."""

    status_code = 409

    def __init__(self, refused: NotPlayable | NotRetryable) -> None:
        super().__init__(str(refused))
        self.status = refused.status

    def body(self) -> dict[str, Any]:
        return {**super().body(), "status": self.status}


class JobNotPlayable(JobControlRefused):
    code = "not_playable"


class JobNotRetryable(JobControlRefused):
    code = "not_retryable"


def require_may_start(engine: Engine, caller: ApiToken | None, job_id: str) -> None:
    """:class:`Forbidden` unless ``caller`` may start a job of this job's run (``JobNotFound``
    for an unknown job). A run's trust never changes, so this read may precede the transition."""
    with read_scope(engine) as session:
        trust = run_summary(session, reads.job_row(session, job_id).run_id).trust
    if caller is None:
        raise Forbidden("log in to start a job")
    if trust == "trusted" and not caller.trusted:
        raise Forbidden(f"`{caller.name}` may not start a job of a trusted run (only a token configured with "
                        "`:trusted` in SANDPIT_API_TOKENS, or an admin user, may)")


def play_now(engine: Engine, publisher: Publisher, caller: ApiToken | None, job_id: str) -> JobPublic:
    """Play the manual job, publish it, return its new state (:class:`JobNotPlayable`: 409)."""
    require_may_start(engine, caller, job_id)
    try:
        with session_scope(engine) as session:
            queued = play_manual_job(session, job_id, runs.utcnow())
    except NotPlayable as refused:
        raise JobNotPlayable(refused) from None
    runs.publish_committed(engine, publisher, queued)
    with read_scope(engine) as session:
        return runs.read_job(session, job_id)


async def retry_now(engine: Engine, publisher: Publisher, redis: Any, caller: ApiToken | None,
                    job_id: str) -> JobPublic:
    """Retry the finished job (a new attempt), publish it, return its new state
    (:class:`JobNotRetryable`: 409). Its outbox row is written as sent and marked pending again
    if sending fails, so no sweeper announces it before its old live log is gone."""
    await to_thread.run_sync(require_may_start, engine, caller, job_id)
    retried = await to_thread.run_sync(_retry_in_store, engine, job_id)
    try:
        await redis.delete(log_stream_key(job_id))
    except (RedisError, OSError) as exc:  # the live view may show the old attempt's end; the file has all
        log.warning("job %s: its old live log was not dropped: %s", job_id, exc)
    await to_thread.run_sync(_announce, engine, publisher, retried)

    def read() -> JobPublic:
        with read_scope(engine) as session:
            return runs.read_job(session, job_id)

    return await to_thread.run_sync(read)


def _retry_in_store(engine: Engine, job_id: str) -> Retried:
    try:
        with session_scope(engine) as session:
            return retry_job(session, job_id, runs.utcnow(), mark_sent=True)
    except NotRetryable as refused:
        raise JobNotRetryable(refused) from None


def _announce(engine: Engine, publisher: Publisher, retried: Retried) -> None:
    ids = list(retried.queued)
    try:
        publisher.publish(ids)
    except PublishFailed as exc:
        log.warning("publishing %d job(s) failed (%s); the outbox sweeper will retry", len(ids), exc)
        with session_scope(engine) as session:
            mark_unpublished(session, ids)
        return
    if len(ids) > 1:  # what the frontier queued besides the job has a pending row of its own
        with session_scope(engine) as session:
            mark_published(session, ids[1:], runs.utcnow())


@router.get("/{job_id}", response_model=JobPublic)
def get_job(job_id: str, _caller: CallerDep, session: SessionDep) -> JobPublic:
    return runs.read_job(session, job_id)


@router.post("/{job_id}/cancel", response_model=JobPublic,
             responses={409: {"description": "the job has already finished; nothing was changed"}})
def cancel_job(job_id: str, _caller: CallerDep, engine: EngineDep, publisher: PublisherDep) -> JobPublic:
    return runs.cancel_job_now(engine, publisher, job_id)


@router.post("/{job_id}/play", response_model=JobPublic, responses={
    403: {"description": "a job of a trusted run, and not a trusted token"},
    404: {"description": "no such job"},
    409: {"description": "`not_playable`: not a manual job waiting to be played (its `status` is given), or "
          "its run was cancelled or waits for approval; nothing was changed"}})
def play_job(job_id: str, caller: CallerDep, engine: EngineDep, publisher: PublisherDep) -> JobPublic:
    """Start a manual job (GitLab's play): it is queued now."""
    return play_now(engine, publisher, caller, job_id)


@router.post("/{job_id}/retry", response_model=JobPublic, responses={
    403: {"description": "a job of a trusted run, and not a trusted token"},
    404: {"description": "no such job"},
    409: {"description": "`not_retryable`: the job has not finished (queued, running, waiting, manual), was "
          "skipped, or its run waits for approval (its `status` is given); nothing was changed"}})
async def retry_job_route(job_id: str, caller: CallerDep, engine: EngineDep, publisher: PublisherDep,
                          redis: RedisDep) -> JobPublic:
    """Run a finished job again as a new attempt (GitLab's per-job retry): the jobs it let skip
    wait again and run once it passes; the run runs again."""
    return await retry_now(engine, publisher, redis, caller, job_id)


answer_head(router)
