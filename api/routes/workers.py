"""``/api/v1/workers``: the workers that announced themselves, with their last heartbeat.

Admin only (a token configured with ``:trusted``): the list names hosts, their memory and CPUs,
their runtimes and images — a map of the build farm that an untrusted submitter has no use for,
as GitLab shows instance runners to administrators only. ``state`` is ``alive``, ``gone`` (it
missed three of its own heartbeats: its running jobs are settled by their leases expiring) or
``stopped`` (it stopped cleanly).
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated

from anyio import to_thread
from fastapi import APIRouter, Depends
from pydantic import BaseModel

from api.deps import CallerDep, EngineDep
from api.errors import Forbidden
from api.routes import answer_head
from api.settings import ApiToken
from pipelines.store.workers import GONE_AFTER_BEATS, WorkerSeen, list_workers

router = APIRouter(prefix="/workers", tags=["workers"])


async def admin(caller: CallerDep) -> ApiToken:
    if not caller.trusted:
        raise Forbidden(f"token `{caller.name}` may not list workers (only a token configured with `:trusted` "
                        "in SANDPIT_API_TOKENS may)")
    return caller


class ImagePublic(BaseModel):
    name: str
    digest: str


class WorkerPublic(BaseModel):
    id: str
    host: str
    version: str
    state: str
    last_seen_at: dt.datetime
    last_seen_age_s: float
    heartbeat_s: float
    started_at: dt.datetime
    memory_bytes: int
    cpus: float
    concurrency: int
    runtimes: list[str]
    images: list[ImagePublic]
    transport: str
    running_jobs: int


class WorkerList(BaseModel):
    gone_after_heartbeats: int
    workers: list[WorkerPublic]


def worker_public(seen: WorkerSeen) -> WorkerPublic:
    info = seen.info
    return WorkerPublic(id=info.id, host=info.host, version=info.version, state=seen.state,
                        last_seen_at=seen.last_seen_at, last_seen_age_s=seen.last_seen_age_s,
                        heartbeat_s=info.heartbeat_s, started_at=info.started_at, memory_bytes=info.memory_bytes,
                        cpus=info.cpus, concurrency=info.concurrency, runtimes=list(info.runtimes),
                        images=[ImagePublic(name=n, digest=d) for n, d in info.images], transport=info.transport,
                        running_jobs=seen.running_jobs)


@router.get("", response_model=WorkerList, responses={403: {"description": "not a trusted token"}})
async def get_workers(_admin: Annotated[ApiToken, Depends(admin)], engine: EngineDep) -> WorkerList:
    seen = await to_thread.run_sync(list_workers, engine, dt.datetime.now(dt.UTC))
    return WorkerList(gone_after_heartbeats=GONE_AFTER_BEATS, workers=[worker_public(s) for s in seen])


answer_head(router)
