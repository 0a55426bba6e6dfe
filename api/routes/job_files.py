"""``/api/v1/jobs/{id}/blobs/{sha256}``, ``/api/v1/jobs/{id}/bundle``, ``/api/v1/jobs/{id}/log`` and
``/api/v1/jobs/{id}/services/{n}/log`` (PUT): a running job's files, moved by a worker that shares
no disk with the API, with the job's own token (see :mod:`api.job_files`). API tokens are not
accepted here, nor job tokens anywhere else.

The bundle's ``PUT`` is on every job's path (bench/bench_workers.py), so it is a plain Starlette
route, matched before the others: FastAPI's request handling (its dependency solving, the exit
stack, the response model machinery) cost more than the route's own work on a small bundle,
measured with py-spy in the API process (docs/deployment.md). The FastAPI declaration under it
stays for the OpenAPI description only (and would serve the same answers if it were reached).
"""

from __future__ import annotations

import json
from typing import Annotated

from anyio import to_thread
from fastapi import APIRouter, Depends, Header, Query, Request, Response
from fastapi.responses import FileResponse, JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.background import BackgroundTask

from api import job_files
from api.deps import EngineDep, Services, SettingsDep
from api.intake import read_capped_body
from pipelines.store.job_tokens import Grant

router = APIRouter(prefix="/jobs", tags=["job files (workers)"])

_job_bearer = HTTPBearer(auto_error=False, scheme_name="job token",
                         description="the running job's token (minted by its worker at the claim)")
JobCredentials = Annotated[HTTPAuthorizationCredentials | None, Depends(_job_bearer)]

_ERRORS: dict[int | str, dict[str, str]] = {
    401: {"description": "no job token, or not a valid one"},
    403: {"description": "the token belongs to another job"},
    409: {"description": "`job_not_running`: the token's attempt has ended"},
}


async def _grant(job_id: str, engine: EngineDep, settings: SettingsDep, credentials: JobCredentials) -> Grant:
    return await job_files.grant(engine, credentials.credentials if credentials else None, job_id,
                                 settings.job_token_keys)


GrantDep = Annotated[Grant, Depends(_grant)]


def bearer_token(authorization: str | None) -> str | None:
    """The credentials of an ``Authorization: Bearer`` header, as FastAPI's ``HTTPBearer`` reads
    them (the scheme in any case; anything else is no token).

    >>> bearer_token("bearer spj_x"), bearer_token("Basic dTpw"), bearer_token(None)
    ('spj_x', None, None)
    """
    scheme, _, credentials = (authorization or "").partition(" ")
    return credentials if scheme.lower() == "bearer" and credentials else None


async def put_bundle(request: Request) -> Response:
    """``PUT /api/v1/jobs/{job_id}/bundle``: the body read whole (capped), then one thread hand-off
    for the token's check and the files (:func:`api.job_files.receive_bundle`)."""
    services: Services = request.app.state.services
    body = await read_capped_body(request, job_files.MAX_BUNDLE_BYTES + job_files.MAX_MANIFEST_BYTES)
    settings = services.settings
    kept = await to_thread.run_sync(job_files.receive_bundle, services.engine, services.temporaries,
                                    bearer_token(request.headers.get("authorization")),
                                    request.path_params["job_id"], body, settings.job_token_keys)
    return Response(json.dumps(kept).encode(), media_type="application/json",
                    background=BackgroundTask(services.temporaries.refill))


router.add_route(router.prefix + "/{job_id}/bundle", put_bundle, methods=["PUT"], include_in_schema=False)


@router.put("/{job_id}/bundle", response_class=JSONResponse,
            responses={**_ERRORS, 200: {"description": "every file and log of the bundle is kept"},
                       400: {"description": "a malformed bundle (see the manifest's description)"},
                       413: {"description": "over the bundle cap (send big files alone)"},
                       422: {"description": "`digest_mismatch`: a file's bytes are not the file it names"}},
            description="A job's small files and its logs in one body: " + job_files.BUNDLE_HELP)
async def put_bundle_described(job_id: str, request: Request, credentials: JobCredentials) -> Response:
    return await put_bundle(request)  # the plain route above answers first; this one describes it


@router.put("/{job_id}/blobs/{sha256}", status_code=201,
            responses={**_ERRORS, 200: {"description": "an intact copy was stored already"},
                       413: {"description": "over the upload cap"},
                       422: {"description": "`digest_mismatch`: the body does not hash to `sha256`"}})
async def put_blob(job_id: str, sha256: str, request: Request, found: GrantDep,
                   settings: SettingsDep) -> Response:
    job_files.checked_sha(sha256)
    new = await job_files.receive_blob(settings.artifacts_dir, sha256, request.stream(),
                                       request.headers.get("content-length"))
    return Response(status_code=201 if new else 200, headers={"X-Content-SHA256": sha256})


@router.get("/{job_id}/blobs/{sha256}", response_class=FileResponse,
            responses={**_ERRORS, 200: {"content": {"application/octet-stream": {}}},
                       404: {"description": "not a file this job may fetch, or not stored"}})
async def get_blob(job_id: str, sha256: str, found: GrantDep, engine: EngineDep, settings: SettingsDep,
                   cache: Annotated[str | None, Query(description="the manifest sha256 of a cache of the job's "
                                                      "trust level that lists this file")] = None) -> FileResponse:
    job_files.checked_sha(sha256)
    path = await to_thread.run_sync(job_files.readable_file, engine, settings.artifacts_dir, found, sha256, cache)
    return FileResponse(path, media_type="application/octet-stream", headers={"X-Content-SHA256": sha256})


@router.put("/{job_id}/log", status_code=201,
            responses={**_ERRORS, 400: {"description": "no or a malformed X-Content-SHA256"},
                       413: {"description": "over the upload cap"},
                       422: {"description": "`digest_mismatch`: the body does not hash to X-Content-SHA256"}})
async def put_log(job_id: str, request: Request, found: GrantDep, settings: SettingsDep,
                  x_content_sha256: Annotated[str, Header(description="the log's sha256")] = "") -> dict[str, str]:
    sha256 = job_files.checked_sha(x_content_sha256)
    path = await job_files.receive_log(settings.state_dir / "logs", job_id, sha256, request.stream(),
                                       request.headers.get("content-length"))
    return {"log": path, "sha256": sha256}


@router.put("/{job_id}/services/{index}/log", status_code=201,
            responses={**_ERRORS, 400: {"description": "no or a malformed X-Content-SHA256, or not a service index"},
                       413: {"description": "over the upload cap"},
                       422: {"description": "`digest_mismatch`: the body does not hash to X-Content-SHA256"}})
async def put_service_log(job_id: str, index: int, request: Request, found: GrantDep, settings: SettingsDep,
                          x_content_sha256: Annotated[str, Header(description="the log's sha256")] = ""
                          ) -> dict[str, str]:
    sha256 = job_files.checked_sha(x_content_sha256)
    path = await job_files.receive_log(settings.state_dir / "logs", job_id, sha256, request.stream(),
                                       request.headers.get("content-length"), service=index)
    return {"log": path, "sha256": sha256}
