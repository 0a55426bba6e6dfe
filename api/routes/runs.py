"""``/api/v1/runs``: create (YAML or JSON body, optionally waiting for the end), read, cancel."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Annotated, Any

from anyio import to_thread
from fastapi import APIRouter, Query, Request
from redis.exceptions import RedisError

from api import runs
from api.deps import CallerDep, EngineDep, PublisherDep, RedisDep, SettingsDep
from api.intake import parse_run_body, read_capped_body
from api.schemas import ProblemList, RunCreate, RunCreated, RunPublic
from api.settings import MAX_WAIT_S
from pipelines.names import run_events_channel

router = APIRouter(prefix="/runs", tags=["runs"])

# ?wait listens for the workers' "job finished" messages; without Redis it polls the database,
# quickly at first (a short job ends within tens of ms), then backing off
WAIT_EVENT_TIMEOUT_S = 0.25
WAIT_POLL_FIRST_S = 0.004
WAIT_POLL_MAX_S = 0.05

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
    responses={422: {"model": ProblemList, "description": "the pipeline has problems"}},
)
async def create_run(
    request: Request,
    caller: CallerDep,
    settings: SettingsDep,
    engine: EngineDep,
    publisher: PublisherDep,
    redis: RedisDep,
    wait: Annotated[float, Query(ge=0, le=MAX_WAIT_S, description="seconds to hold the answer until the run ends")] = 0,
) -> RunCreated:
    body = await read_capped_body(request, settings.max_body_bytes)
    wanted = parse_run_body(request.headers.get("content-type", ""), body)
    created = await to_thread.run_sync(runs.submit_run, engine, publisher, wanted, caller)
    if wait <= 0 or created.finished_at is not None:
        return created
    deadline = time.monotonic() + min(wait, settings.max_wait_s)
    latest = await _wait_until_settled(request, engine, redis, created.id, deadline)
    if latest is None:
        latest = await to_thread.run_sync(runs.read_run, engine, created.id)
    return RunCreated(**latest.model_dump(), warnings=created.warnings)


async def _wait_until_settled(
    request: Request, engine: Any, redis: Any, run_id: str, deadline: float
) -> RunPublic | None:
    """Wake on each "a job of this run finished" message from the workers (Redis pub/sub) and
    read the run then (returned once it has ended); if Redis is away, poll with a backoff instead.
    None when the wait ran out or the client left."""
    pubsub = None
    try:
        pubsub = redis.pubsub()
        await pubsub.subscribe(run_events_channel(run_id))
    except RedisError:
        pubsub = None
    interval = WAIT_POLL_FIRST_S
    try:
        while time.monotonic() < deadline and not await request.is_disconnected():
            # checked after subscribing, so a job that finished in between is not missed
            latest = await to_thread.run_sync(runs.read_run, engine, run_id)
            if latest.finished_at is not None:
                return latest
            if pubsub is not None:
                try:
                    await pubsub.get_message(ignore_subscribe_messages=True,
                                             timeout=min(WAIT_EVENT_TIMEOUT_S, max(0.0, deadline - time.monotonic())))
                    continue
                except RedisError:
                    pubsub = None
            await asyncio.sleep(interval)
            interval = min(WAIT_POLL_MAX_S, interval * 1.5)
    finally:
        if pubsub is not None:
            with contextlib.suppress(RedisError):
                await pubsub.aclose()
    return None


@router.get("/{run_id}", response_model=RunPublic)
def get_run(run_id: str, _caller: CallerDep, engine: EngineDep) -> RunPublic:
    return runs.read_run(engine, run_id)


@router.post("/{run_id}/cancel", response_model=RunPublic)
def cancel_run(run_id: str, _caller: CallerDep, engine: EngineDep) -> RunPublic:
    return runs.cancel_run_now(engine, run_id)
