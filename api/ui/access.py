"""Who the viewer is, what they may read, and the UI's errors as pages (entry-point helpers).

Errors under ``/ui`` are pages, not JSON: :func:`install_page_errors` wraps the API's own error
mapping (:mod:`api.errors`) so a request below ``/ui`` gets the same status and message as an HTML
page, and a missing login becomes a redirect to the login form.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated
from urllib.parse import quote

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from api.errors import ApiError, Forbidden
from api.ui.render import Pages
from api.ui.sessions import SessionKeeper, Viewer
from api.ui.settings import Role, UiSettings
from pipelines.store.errors import StoreError

PREFIX = "/ui"
log = logging.getLogger("sandpit.api")


class LoginRequired(Exception):
    """The page needs a login (answered with a redirect to the login form)."""


@dataclass(slots=True)
class UiState:
    settings: UiSettings
    sessions: SessionKeeper
    pages: Pages


def ui_state(request: Request) -> UiState:
    state: UiState = request.app.state.ui
    return state


async def current_viewer(request: Request) -> Viewer:
    viewer = ui_state(request).sessions.viewer(request)
    if viewer is None:
        raise LoginRequired()
    return viewer


async def signed_in_viewer(viewer: Annotated[Viewer, Depends(current_viewer)]) -> Viewer:
    if not viewer.signed_in:
        raise LoginRequired()
    return viewer


async def admin_viewer(viewer: Annotated[Viewer, Depends(signed_in_viewer)]) -> Viewer:
    if not viewer.may("admin"):
        raise Forbidden("only an admin (a trusted API token, or a local user marked :admin) may see this page")
    return viewer


ViewerDep = Annotated[Viewer, Depends(current_viewer)]
SignedInDep = Annotated[Viewer, Depends(signed_in_viewer)]
AdminDep = Annotated[Viewer, Depends(admin_viewer)]
UiDep = Annotated[UiState, Depends(ui_state)]


def may_read_logs(ui: UiSettings, viewer: Viewer, trust: str) -> bool:
    """Whether ``viewer`` may read a run's logs, artifacts and reports (SANDPIT_UI_UNTRUSTED_LOGS)."""
    needed: Role = "visitor" if trust == "trusted" else ui.untrusted_logs
    return viewer.may(needed)


def may_start(viewer: Viewer, trust: str) -> bool:
    """Whether a page offers play and retry on a run of ``trust``: what
    :func:`api.routes.jobs.require_may_start` allows (a trusted run's jobs are started by a
    trusted login only: a trusted token or an admin user)."""
    return viewer.caller is not None and (trust != "trusted" or viewer.caller.trusted)


def _under_ui(request: Request) -> bool:
    return request.url.path == PREFIX or request.url.path.startswith(PREFIX + "/")


def install_page_errors(app: FastAPI) -> None:
    """Answer errors below /ui as pages (after :func:`api.errors.install_error_handlers`)."""
    Handler = Callable[[Request, Exception], Awaitable[Response]]

    def wrap(original: Handler | None) -> Handler:
        async def handle(request: Request, exc: Exception) -> Response:
            if not _under_ui(request) and original is not None:
                return await original(request, exc)
            return _error_page(request, exc) if _under_ui(request) else JSONResponse({"error": "internal"}, 500)
        return handle

    for kind in (ApiError, StoreError, StarletteHTTPException):
        app.exception_handlers[kind] = wrap(app.exception_handlers.get(kind))  # type: ignore[arg-type]

    async def login_required(request: Request, _exc: Exception) -> Response:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(f"{PREFIX}/login?next={quote(target, safe='')}", status_code=303)

    app.exception_handlers[LoginRequired] = login_required


def _error_page(request: Request, exc: Exception) -> Response:
    if isinstance(exc, ApiError):
        status, message = exc.status_code, exc.message
    elif isinstance(exc, StarletteHTTPException):
        status, message = exc.status_code, str(exc.detail)
    elif isinstance(exc, StoreError):
        status = _store_status(exc)
        message = str(exc) if status != 500 else "the run store failed; see the server log"
        if status == 500:
            log.error("store error", exc_info=exc)
    else:
        status, message = 500, "internal error; see the server log"
    state = ui_state(request)
    viewer = state.sessions.viewer(request)
    return state.pages.render(request, "error.html", {"viewer": viewer, "status": status, "message": message},
                              status_code=status)


def _store_status(exc: StoreError) -> int:
    from pipelines.store.errors import JobFinished, JobNotFound, RunFinished, RunNotFound
    from pipelines.store.repos import RepositoryExists, RepositoryNotFound

    if isinstance(exc, RunNotFound | JobNotFound | RepositoryNotFound):
        return 404
    if isinstance(exc, RunFinished | JobFinished | RepositoryExists):
        return 409
    return 500
