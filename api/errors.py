"""The API's error tree and the one place where errors become HTTP responses.

::

    ApiError                       anything the API itself reports (a JSON body, never a traceback)
    ├── BadRequest             400 ``bad_request``: a body or parameter the API cannot read
    ├── NotAuthenticated       401 ``unauthenticated``: no bearer token, or one that is not configured
    ├── Forbidden              403 ``forbidden``: the token may not do this (e.g. ask for a trusted run)
    ├── NotFound               404 ``not_found``: an artifact path the job did not keep (unknown ids
    │                              are store errors)
    ├── JobControlRefused      409 the job is not in a state the control applies to; with its ``status``
    │   │                          (``api/routes/jobs.py``)
    │   ├── JobNotPlayable     409 ``not_playable``: play of a job that is not manual and waiting, or
    │   │                          of a cancelled run or one waiting for approval
    │   └── JobNotRetryable    409 ``not_retryable``: retry of a job that has not ended, was skipped,
    │                              or is of a run waiting for approval
    ├── NotWaitingForApproval  409 ``not_waiting``: approval of a run that is not held
    │                              (``api/routes/approvals.py``)
    ├── JobNotRunning          409 ``job_not_running``: a job token whose attempt has ended
    │                              (``api/job_files.py``)
    ├── BodyTooLarge           413 ``body_too_large``: a body over ``SANDPIT_API_MAX_BODY``
    ├── UnsupportedMedia       415 ``unsupported_media_type``: a run body that is neither YAML nor JSON
    ├── PipelineInvalid        422 ``invalid_pipeline``: the pipeline has problems; each with file,
    │   │                          line, col, code, hint
    │   └── OverPolicy         422 ``over_policy``: the pipeline plans more than the run's trust allows
    ├── InputInvalid           422 ``invalid_input``: a request field holds what no run may hold
    │                              (control characters)
    ├── NothingToRun           422 ``no_pipeline_created``: the pipeline is valid but its
    │                              workflow:rules create no run
    ├── SourceRefused          422 ``bad_source``: a run's source with no pipeline file, or an archive
    │                              sandpit refuses (``api/sources.py``)
    ├── DigestMismatchError    422 ``digest_mismatch``: an upload that is not the file it names
    │                              (``api/job_files.py``)
    ├── TooManyRuns            429 ``too_many_runs``: the submitter has as many runs in flight as its
    │                              policy allows
    ├── ArtifactCorrupt        500 ``artifact_corrupt``: a stored file that does not hash to its
    │                              recorded sha256 (``api/artifacts.py``)
    ├── SourceUnavailable      502 ``fetch_failed``: a run's commit could not be fetched
    │                              (``api/sources.py``)
    └── Unavailable            503 ``unavailable``: the database or Redis cannot be reached

The subclasses defined beside their routes are listed here so this is the whole tree; the
web-hook receiver answers with a vocabulary of its own (``api/webhooks.py``, docs/forges.md).

Store errors are mapped here too (``RunNotFound``/``JobNotFound`` → 404 ``not_found``,
``RepositoryNotFound`` → 404 ``unknown_repository``, ``RepositoryExists`` → 409
``repository_exists``, ``RunFinished``/``JobFinished`` → 409 ``run_finished``/``job_finished``
(a cancel of something that has ended; with its ``status``), other ``StoreError`` → 500), as are
FastAPI's own parameter errors (→ 400), a route or method it does not have (→ 404 ``not_found``,
405 ``method_not_allowed``) and anything unexpected (→ 500 ``internal`` with no detail; the
traceback goes to the server log only). Every error body is ``{"error": code, "message": ...}``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from pipelines.language.problems import Problem
from pipelines.store.errors import JobFinished, JobNotFound, RunFinished, RunNotFound, StoreError
from pipelines.store.repos import RepositoryExists, RepositoryNotFound

log = logging.getLogger("sandpit.api")


class ApiError(Exception):
    status_code = 500
    code = "internal"

    def __init__(self, message: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers = headers

    def body(self) -> dict[str, Any]:
        return {"error": self.code, "message": self.message}


class BadRequest(ApiError):
    status_code = 400
    code = "bad_request"


class BodyTooLarge(ApiError):
    status_code = 413
    code = "body_too_large"


class NotAuthenticated(ApiError):
    status_code = 401
    code = "unauthenticated"

    def __init__(self, message: str) -> None:
        super().__init__(message, headers={"WWW-Authenticate": "Bearer"})


class Forbidden(ApiError):
    status_code = 403
    code = "forbidden"


class NotFound(ApiError):
    status_code = 404
    code = "not_found"


class UnsupportedMedia(ApiError):
    status_code = 415
    code = "unsupported_media_type"


class NothingToRun(ApiError):
    status_code = 422
    code = "no_pipeline_created"


class PipelineInvalid(ApiError):
    status_code = 422
    code = "invalid_pipeline"

    def __init__(self, problems: Sequence[Problem]) -> None:
        errors = sum(1 for p in problems if p.severity == "error")
        super().__init__(f"the pipeline has {errors} error(s); see `problems`")
        self.problems = tuple(problems)

    def body(self) -> dict[str, Any]:
        return {**super().body(), "problems": [p.as_dict() for p in self.problems]}


class OverPolicy(PipelineInvalid):
    code = "over_policy"

    def __init__(self, problems: Sequence[Problem], level: str) -> None:
        super().__init__(problems)
        errors = sum(1 for p in problems if p.severity == "error")
        self.message = (f"the pipeline asks for more than the {level} policy allows ({errors} problem(s)); "
                        "see `problems`")


class InputInvalid(ApiError):
    """Each problem is ``{"field": "variables.NAME", "message": ...}`` (the field's JSON path)."""

    status_code = 422
    code = "invalid_input"

    def __init__(self, problems: Sequence[dict[str, str]]) -> None:
        super().__init__(f"the request has {len(problems)} unusable field(s); see `problems`")
        self.problems = tuple(problems)

    def body(self) -> dict[str, Any]:
        return {**super().body(), "problems": list(self.problems)}


class TooManyRuns(ApiError):
    """429, not 422: the request itself is fine and the same request succeeds once some of the
    submitter's runs have ended; 429 is what clients and proxies already back off on."""

    status_code = 429
    code = "too_many_runs"
    RETRY_AFTER_S = 10

    def __init__(self, message: str) -> None:
        super().__init__(message, headers={"Retry-After": str(self.RETRY_AFTER_S)})


class Unavailable(ApiError):
    status_code = 503
    code = "unavailable"


def _json(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(body, status_code=status, headers=headers)


async def _api_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return _json(exc.status_code, exc.body(), exc.headers)


async def _store_error(_request: Request, exc: Exception) -> JSONResponse:
    if isinstance(exc, RunNotFound | JobNotFound):
        return _json(404, {"error": "not_found", "message": str(exc)})
    if isinstance(exc, RepositoryNotFound):
        return _json(404, {"error": "unknown_repository", "message": str(exc)})
    if isinstance(exc, RepositoryExists):
        return _json(409, {"error": "repository_exists", "message": str(exc)})
    if isinstance(exc, RunFinished | JobFinished):
        code = "run_finished" if isinstance(exc, RunFinished) else "job_finished"
        return _json(409, {"error": code, "message": str(exc), "status": exc.status})
    log.error("store error", exc_info=exc)
    return _json(500, {"error": "internal", "message": "the run store failed; see the server log"})


async def _http_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    headers = dict(exc.headers) if exc.headers else None
    return _json(exc.status_code, {"error": code, "message": str(exc.detail)}, headers)


async def _validation_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    details = [
        {"loc": [str(part) for part in e.get("loc", ())], "message": str(e.get("msg", ""))} for e in exc.errors()
    ]
    return _json(400, {"error": "bad_request", "message": "invalid request parameters", "details": details})


async def _unexpected(_request: Request, exc: Exception) -> JSONResponse:
    log.error("unhandled error", exc_info=exc)
    return _json(500, {"error": "internal", "message": "internal error; see the server log"})


def install_error_handlers(app: FastAPI) -> None:
    """Register every mapping above on ``app``."""
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(StoreError, _store_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(Exception, _unexpected)
