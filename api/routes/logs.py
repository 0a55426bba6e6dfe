"""``/api/v1/jobs/{id}/log``: plain text, followed live, or Server-Sent Events (resumable);
``/api/v1/jobs/{id}/services/{n}/log``: the log of the job's service ``n`` (:mod:`api.service_logs`)."""

from __future__ import annotations

from typing import Annotated

from anyio import to_thread
from fastapi import APIRouter, Header, Query
from fastapi.responses import StreamingResponse

from api.deps import CallerDep, EngineDep, RedisDep, SettingsDep
from api.logs import Cursor, LogReader, sse_stream, text_stream
from api.runs import load_job
from api.service_logs import open_service_log, service_log_text

router = APIRouter(prefix="/jobs", tags=["logs"])


@router.get(
    "/{job_id}/log",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/plain": {}, "text/event-stream": {}}},
               400: {"description": "Last-Event-ID or ?after= is not an id this log can have"}},
)
async def get_log(
    job_id: str,
    _caller: CallerDep,
    settings: SettingsDep,
    engine: EngineDep,
    redis: RedisDep,
    follow: Annotated[bool | None, Query(description="keep streaming until the job ends (SSE: default on)")] = None,
    accept: Annotated[str, Header()] = "",
    last_event_id: Annotated[str | None, Header(description="resume after this event id (SSE)")] = None,
    after: Annotated[str | None, Query(description="same as Last-Event-ID, for clients that cannot set it")] = None,
) -> StreamingResponse:
    # both cursors are checked (and before the job is looked up: a bad id is a bad request)
    header_cursor = Cursor.parse(last_event_id, "Last-Event-ID")
    query_cursor = Cursor.parse(after, "?after=")
    cursor = header_cursor if last_event_id and last_event_id.strip() else query_cursor
    job = await to_thread.run_sync(load_job, engine, job_id)
    sse = "text/event-stream" in accept
    reader = LogReader(job, engine, redis, settings.state_dir, cursor, sse if follow is None else follow)
    await reader.prepare()
    if sse:
        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        return StreamingResponse(sse_stream(reader.entries()), media_type="text/event-stream", headers=headers)
    return StreamingResponse(text_stream(reader.entries()), media_type="text/plain; charset=utf-8")


@router.get(
    "/{job_id}/services/{index}/log",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/plain": {}}},
               400: {"description": "not a service index a job can have"},
               404: {"description": "no such job, or no log of that service here"}},
)
async def get_service_log(job_id: str, index: int, _caller: CallerDep, settings: SettingsDep,
                          engine: EngineDep) -> StreamingResponse:
    """The output of service ``index`` (its place in the job's ``services:``, from 0), as text.
    Kept beside the job's log; not streamed live."""
    job = await to_thread.run_sync(load_job, engine, job_id)
    handle = await to_thread.run_sync(open_service_log, job, index, settings.state_dir)
    return StreamingResponse(service_log_text(handle), media_type="text/plain; charset=utf-8")
