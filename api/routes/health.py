"""``/healthz`` and ``/metrics`` (no authentication; they reveal counts, never content)."""

from __future__ import annotations

import asyncio

from anyio import to_thread
from fastapi import APIRouter
from fastapi.responses import JSONResponse, PlainTextResponse
from redis.exceptions import RedisError

from api import metrics
from api.deps import EngineDep, RedisDep, resolved
from api.routes import answer_head
from api.schemas import Health
from pipelines.names import QUEUE
from pipelines.store.db import read_scope
from pipelines.store.errors import DatabaseUnavailable
from pipelines.store.reads import ping

router = APIRouter(tags=["health"])

PROBE_TIMEOUT_S = 2.0


@router.get("/healthz", response_model=Health, responses={503: {"model": Health}})
async def healthz(engine: EngineDep, redis: RedisDep) -> JSONResponse:
    database = redis_state = "ok"
    try:
        async with asyncio.timeout(PROBE_TIMEOUT_S * 2):
            await to_thread.run_sync(ping, engine, abandon_on_cancel=True)
    except DatabaseUnavailable as exc:
        database = f"unreachable: {exc.kind}"
    except (OSError, TimeoutError) as exc:
        database = f"unreachable: {type(exc).__name__}"
    try:
        async with asyncio.timeout(PROBE_TIMEOUT_S):
            await resolved(redis.ping())
    except (RedisError, OSError, TimeoutError) as exc:
        redis_state = f"unreachable: {type(exc).__name__}"
    ok = database == "ok" and redis_state == "ok"
    body = Health(ok=ok, database=database, redis=redis_state)
    return JSONResponse(body.model_dump(), status_code=200 if ok else 503)


@router.get("/metrics", response_class=PlainTextResponse)
async def prometheus_metrics(engine: EngineDep, redis: RedisDep) -> PlainTextResponse:
    def count() -> tuple[dict[str, int], dict[str, int], int]:
        with read_scope(engine) as session:
            return metrics.count_rows(session)

    runs, jobs, pending = await to_thread.run_sync(count)
    try:
        async with asyncio.timeout(PROBE_TIMEOUT_S):
            broker_queue: int | None = int(await resolved(redis.llen(QUEUE)))
    except (RedisError, OSError, TimeoutError):
        broker_queue = None
    text = metrics.render(metrics.Counts(runs, jobs, pending, broker_queue))
    return PlainTextResponse(text, media_type=metrics.CONTENT_TYPE)


answer_head(router)
