"""``/api/v1/jobs/{id}/artifacts``: list a job's kept artifacts and download one by its path."""

from __future__ import annotations

from pathlib import PurePosixPath

from fastapi import APIRouter
from fastapi.responses import FileResponse

from api import artifacts
from api.deps import CallerDep, SessionDep, SettingsDep
from api.routes import answer_head
from api.schemas import ArtifactList, artifact_public

router = APIRouter(prefix="/jobs", tags=["artifacts"])


@router.get("/{job_id}/artifacts", response_model=ArtifactList)
def list_artifacts(job_id: str, _caller: CallerDep, session: SessionDep) -> ArtifactList:
    rows = artifacts.list_artifacts(session, job_id)
    return ArtifactList(job_id=job_id, artifacts=[artifact_public(r) for r in rows])


@router.get(
    "/{job_id}/artifacts/{path:path}",
    response_class=FileResponse,
    responses={
        200: {"content": {"application/octet-stream": {}}},
        500: {"description": "`artifact_corrupt`: the stored bytes do not hash to the recorded sha256; not served"},
    },
)
def download_artifact(
    job_id: str, path: str, _caller: CallerDep, session: SessionDep, settings: SettingsDep
) -> FileResponse:
    row = artifacts.find_artifact(session, job_id, path)
    file = artifacts.artifact_file(settings.artifacts_dir, row)
    return FileResponse(
        file,
        media_type="application/octet-stream",
        filename=PurePosixPath(row.path).name or "artifact",
        headers={"X-Content-SHA256": row.sha256},
    )


answer_head(router)
