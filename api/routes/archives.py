"""``/api/v1/jobs/{id}/artifacts.zip`` and ``.tar.gz``: every artifact a job kept, in one archive,
streamed as it is made (api/archives.py)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from fastapi import APIRouter
from fastapi.responses import StreamingResponse

from api import archives
from api.deps import CallerDep, SessionDep, SettingsDep
from api.routes import answer_head

router = APIRouter(prefix="/jobs", tags=["artifacts"])

_ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"description": "no such job, or it kept no artifacts (or their content is no longer stored)"},
    500: {"description": "`artifact_corrupt`: a stored file does not hash to its recorded sha256; nothing is sent"},
}

Stream = Callable[[list[tuple[str, Path, str, int]]], Iterator[bytes]]


def _archive(job_id: str, session: SessionDep, settings: SettingsDep, media: str, suffix: str,
             stream: Stream) -> StreamingResponse:
    members = archives.archive_members(session, settings.artifacts_dir, job_id)
    return StreamingResponse(stream(members), media_type=media, headers={
        "Content-Disposition": f'attachment; filename="job-{job_id[:64]}-artifacts{suffix}"'})


@router.get("/{job_id}/artifacts.zip", response_class=StreamingResponse,
            responses={200: {"content": {"application/zip": {}}}, **_ERRORS})
def artifacts_zip(job_id: str, _caller: CallerDep, session: SessionDep, settings: SettingsDep) -> StreamingResponse:
    return _archive(job_id, session, settings, "application/zip", ".zip", archives.zip_stream)


@router.get("/{job_id}/artifacts.tar.gz", response_class=StreamingResponse,
            responses={200: {"content": {"application/gzip": {}}}, **_ERRORS})
def artifacts_tar_gz(job_id: str, _caller: CallerDep, session: SessionDep,
                     settings: SettingsDep) -> StreamingResponse:
    return _archive(job_id, session, settings, "application/gzip", ".tar.gz", archives.tar_gz_stream)


answer_head(router)
