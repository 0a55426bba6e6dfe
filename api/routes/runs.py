"""``/api/v1/runs``: create (YAML or JSON body, optionally waiting for the end), read, cancel."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import threading
import time
import uuid
from typing import Annotated, Any, Literal

from anyio import to_thread
from fastapi import APIRouter, Query, Request
from redis.exceptions import RedisError

from api import runs, sources
from api.deps import CallerDep, EngineDep, PublisherDep, RedisDep, SettingsDep
from api.errors import BadRequest, BodyTooLarge
from api.intake import parse_run_body, read_capped_body
from api.routes import answer_head
from api.schemas import ProblemList, RunCreate, RunCreated, RunPublic
from api.settings import MAX_WAIT_S
from pipelines.names import run_events_channel
from pipelines.trace import mark

router = APIRouter(prefix="/runs", tags=["runs"])

# ?wait listens for the workers' "job finished" messages; without Redis it polls the database,
# quickly at first (a short job ends within tens of ms), then backing off
WAIT_EVENT_TIMEOUT_S = 0.25
WAIT_POLL_FIRST_S = 0.004
WAIT_POLL_MAX_S = 0.05
SUBSCRIBE_TIMEOUT_S = 2.0  # how long publishing waits for the ?wait subscription to be confirmed

_BODY_DOC: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/yaml": {"schema": {"type": "string", "description": "the pipeline file"}},
            "application/json": {"schema": RunCreate.model_json_schema()},
        },
    }
}


@router.post(
    "",
    status_code=201,
    response_model=RunCreated,
    openapi_extra=_BODY_DOC,
    responses={
        403: {"description": "the token may not create a run of the trust level asked for"},
        422: {"model": ProblemList, "description": "the pipeline has problems, or asks for more than the run's "
              "policy allows (`over_policy`), or a field holds a control character (`invalid_input`)"},
        429: {"description": "the submitter has as many runs in flight as the policy allows (`too_many_runs`)"},
    },
)
async def create_run(
    request: Request,
    caller: CallerDep,
    settings: SettingsDep,
    engine: EngineDep,
    publisher: PublisherDep,
    redis: RedisDep,
    wait: Annotated[float, Query(ge=0, le=MAX_WAIT_S, description="seconds to hold the answer until the run ends")] = 0,
    trust: Annotated[Literal["trusted", "untrusted"] | None, Query(
        description="the run's trust level, as the JSON body's `trust` (for YAML bodies)")] = None,
) -> RunCreated:
    mark("api_in")
    content_type = request.headers.get("content-type", "")
    # a JSON body may carry an uploaded tree (source.archive, base64): its own cap on top
    room = settings.max_archive_bytes * 4 // 3 + 4 if content_type.split(";")[0].strip() == "application/json" else 0
    body = await read_capped_body(request, settings.max_body_bytes + room)
    wanted = parse_run_body(content_type, body)
    if len(body) > settings.max_body_bytes and (wanted.source is None or wanted.source.archive is None):
        raise BodyTooLarge(f"the body is over the limit of {settings.max_body_bytes} bytes")
    if trust is not None:
        if wanted.trust is not None and wanted.trust != trust:
            raise BadRequest(f"?trust={trust} and the body's \"trust\": \"{wanted.trust}\" disagree")
        wanted = wanted.model_copy(update={"trust": trust})
    if wanted.source is not None:
        submitting = functools.partial(sources.submit_with_source, engine, publisher, wanted, caller, settings)
    else:
        submitting = functools.partial(runs.submit_run, engine, publisher, wanted, caller, settings.policy)
    if wait <= 0:
        return await to_thread.run_sync(submitting)
    deadline = time.monotonic() + min(wait, settings.max_wait_s)
    # listen for the run's "job finished" messages before any of its jobs is published, so none
    # is missed and nothing has to be read until one comes; subscribing overlaps planning
    run_id = str(uuid.uuid4())
    listener = _RunListener(redis, run_id)
    subscribing = asyncio.create_task(listener.subscribe())
    try:
        submit = functools.partial(submitting, run_id=run_id, before_publish=listener.wait_subscribed)
        created = await to_thread.run_sync(submit)
        mark("api_submitted")
        await subscribing
        if created.finished_at is not None:
            return created
        latest = await _wait_until_settled(request, engine, listener, run_id, deadline)
    finally:
        await listener.close(subscribing)
    if latest is None:
        latest = await to_thread.run_sync(runs.read_run, engine, created.id)
    mark("api_out")
    return RunCreated(**latest.model_dump(), warnings=created.warnings)


class _RunListener:
    """A pub/sub subscription to one run's events; ``active`` is False when Redis is away (or
    was too slow to confirm before the first job was published), and the wait then polls."""

    def __init__(self, redis: Any, run_id: str) -> None:
        self.pubsub = redis.pubsub()
        self.channel = run_events_channel(run_id)
        self.active = False
        self._done = threading.Event()
        self._late = False

    async def subscribe(self) -> None:
        try:
            await self.pubsub.subscribe(self.channel)
            self.active = not self._late  # confirmed after the jobs went out: a message may be lost
        except RedisError:
            pass
        finally:
            self._done.set()

    def wait_subscribed(self) -> None:
        """Called on the submitting thread between the commit and the publish."""
        if not self._done.wait(SUBSCRIBE_TIMEOUT_S):
            self._late = True  # publish anyway; the wait then polls, so nothing is missed

    async def next_event(self, timeout: float) -> bool:
        """Whether a job of the run finished within ``timeout`` (subscribe confirmations skipped)."""
        end = time.monotonic() + timeout
        while (left := end - time.monotonic()) > 0:
            if await self.pubsub.get_message(ignore_subscribe_messages=True, timeout=left) is not None:
                return True
        return False

    async def close(self, subscribing: asyncio.Task[None]) -> None:
        if not subscribing.done():
            subscribing.cancel()
        with contextlib.suppress(RedisError, asyncio.CancelledError):
            await subscribing
        with contextlib.suppress(RedisError):
            await self.pubsub.aclose()


async def _wait_until_settled(
    request: Request, engine: Any, listener: _RunListener, run_id: str, deadline: float
) -> RunPublic | None:
    """Read the run each time a job of it finishes (and at least every WAIT_EVENT_TIMEOUT_S, in
    case a message was lost) until it has ended; without Redis, poll with a backoff instead.
    None when the wait ran out or the client left."""
    interval = WAIT_POLL_FIRST_S
    while time.monotonic() < deadline and not await request.is_disconnected():
        if listener.active:
            try:
                await listener.next_event(min(WAIT_EVENT_TIMEOUT_S, max(0.0, deadline - time.monotonic())))
                mark("api_event")
            except RedisError:
                listener.active = False  # read now (a message may be lost), then poll
        else:
            await asyncio.sleep(interval)
            interval = min(WAIT_POLL_MAX_S, interval * 1.5)
        latest = await to_thread.run_sync(runs.read_run, engine, run_id)
        mark("api_read")
        if latest.finished_at is not None:
            return latest
    return None


@router.get("/{run_id}", response_model=RunPublic)
def get_run(run_id: str, _caller: CallerDep, engine: EngineDep) -> RunPublic:
    return runs.read_run(engine, run_id)


@router.post("/{run_id}/cancel", response_model=RunPublic,
             responses={409: {"description": "the run has already finished; nothing was changed"}})
def cancel_run(run_id: str, _caller: CallerDep, engine: EngineDep) -> RunPublic:
    return runs.cancel_run_now(engine, run_id)


answer_head(router)
