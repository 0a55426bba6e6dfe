"""The UI's pages for runs, repositories, login and the API reference (entry points: thin routes).

Every page reads through :mod:`pipelines.store.listing` (the API's run list reads the same
functions); every state-changing form is a POST checked by :mod:`api.ui.csrf` and answered with
a redirect (post/redirect/get), so the pages work without JavaScript.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any
from urllib.parse import urlencode, urlsplit

from anyio import to_thread
from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from api import runs
from api.deps import EngineDep, PublisherDep, SettingsDep
from api.errors import Forbidden
from api.routes.approvals import approve_now
from api.routes.runs_list import encode_cursor, run_filter
from api.schemas import RunCreate
from api.ui import csrf
from api.ui.access import PREFIX, AdminDep, SignedInDep, UiDep, ViewerDep, may_start, ui_state
from api.ui.graph import graph_layout
from pipelines.store import repos as repo_store
from pipelines.store.approvals import waiting_runs
from pipelines.store.db import read_scope
from pipelines.store.listing import (
    RUN_SOURCES,
    RUN_STATUSES,
    UNFINISHED_RUN_STATUSES,
    list_runs,
    run_detail,
    run_inputs,
)
from pipelines.store.transitions.retry import RETRYABLE_STATUSES

router = APIRouter(include_in_schema=False)
REFRESH_S = 5


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _local_target(target: str | None) -> str:
    """A redirect target after login: a path of this site only (never another host)."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return f"{PREFIX}/runs"
    parts = urlsplit(target)
    if parts.scheme or parts.netloc:
        return f"{PREFIX}/runs"
    return target


@router.get("/")
async def home() -> RedirectResponse:
    return RedirectResponse(f"{PREFIX}/runs", status_code=303)


@router.get(PREFIX)
async def ui_home() -> RedirectResponse:
    return RedirectResponse(f"{PREFIX}/runs", status_code=303)


# --- login ------------------------------------------------------------------------------------------

@router.get(f"{PREFIX}/login", response_class=HTMLResponse)
async def login_form(request: Request, ui: UiDep, next: str | None = None) -> Response:
    response = HTMLResponse("")
    nonce = ui.sessions.login_nonce(request, response)
    page = ui.pages.render(request, "login.html", {
        "viewer": ui.sessions.viewer(request), "login_csrf": nonce, "next": _local_target(next), "error": None,
        "local_users": bool(ui.settings.users)})
    page.raw_headers.extend(h for h in response.raw_headers if h[0] == b"set-cookie")
    return page


@router.post(f"{PREFIX}/login")
async def login(request: Request, ui: UiDep) -> Response:
    form = await csrf.read_form(request)
    csrf.check(request, form, request.cookies.get("sandpit_login", ""))
    target = _local_target(form.get("next"))
    if form.get("method") == "user":
        viewer = await to_thread.run_sync(ui.sessions.user_login, form.get("name", ""), form.get("password", ""))
    else:
        viewer = ui.sessions.token_login(form.get("token", ""))
    if viewer is None:
        nonce = request.cookies.get("sandpit_login", "")  # checked above
        return ui.pages.render(request, "login.html", {
            "viewer": None, "login_csrf": nonce, "next": target, "local_users": bool(ui.settings.users),
            "error": "That token, or that name and password, is not valid."}, status_code=401)
    redirect = RedirectResponse(target, status_code=303)
    ui.sessions.set_session(redirect, request, viewer)
    return redirect


@router.post(f"{PREFIX}/logout")
async def logout(request: Request, ui: UiDep, viewer: SignedInDep) -> Response:
    form = await csrf.read_form(request)
    csrf.check(request, form, viewer.csrf)
    response = RedirectResponse(f"{PREFIX}/login", status_code=303)
    ui.sessions.clear_session(response, request)
    return response


# --- runs -------------------------------------------------------------------------------------------

@router.get(f"{PREFIX}/runs", response_class=HTMLResponse)
def runs_page(
    request: Request, viewer: ViewerDep, engine: EngineDep, repository: str | None = None, ref: str | None = None,
    status: Annotated[list[str] | None, Query()] = None, source: Annotated[list[str] | None, Query()] = None,
    created_since: str | None = None, before: str | None = None, limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> Response:
    wanted = run_filter(repository=repository, ref=ref, status=status, source=source, created_since=created_since,
                        before=before, limit=limit)
    with read_scope(engine) as session:
        page = list_runs(session, wanted)
    kept = {k: v for k, v in (("repository", repository), ("ref", ref), ("created_since", created_since)) if v}
    query: list[tuple[str, Any]] = [*kept.items(), *(("status", s) for s in wanted.statuses),
                                    *(("source", s) for s in wanted.sources)]
    next_url = None
    if page.next_before is not None:
        next_url = f"{PREFIX}/runs?" + urlencode([*query, ("before", encode_cursor(page.next_before))])
    active = any(r.status in UNFINISHED_RUN_STATUSES for r in page.runs)
    return ui_state(request).pages.render(request, "runs.html", {
        "viewer": viewer, "runs": page.runs, "now": _now(), "next_url": next_url,
        "first_url": f"{PREFIX}/runs?" + urlencode(query) if before else None, "filters": kept,
        "statuses": RUN_STATUSES, "sources": RUN_SOURCES, "chosen_statuses": wanted.statuses,
        "chosen_sources": wanted.sources, "refresh": REFRESH_S if active else None})


@router.get(PREFIX + "/runs/{run_id}", response_class=HTMLResponse)
def run_page(run_id: str, request: Request, viewer: ViewerDep, engine: EngineDep) -> Response:
    with read_scope(engine) as session:
        detail = run_detail(session, run_id)
    layout = graph_layout(detail.stages, [(j.name, j.stage, j.needs) for j in detail.jobs])
    by_name = {job.name: job for job in detail.jobs}
    failed_names = {j.name for j in detail.jobs if j.status in ("failed", "error", "cancelled") and not j.allow_failure}
    why_skipped = {j.id: _why_skipped(j, by_name, failed_names) for j in detail.jobs if j.status == "skipped"}
    return ui_state(request).pages.render(request, "run.html", {
        "viewer": viewer, "run": detail.summary, "detail": detail, "layout": layout, "jobs": by_name,
        "now": _now(), "why_skipped": why_skipped, "may_start": may_start(viewer, detail.summary.trust),
        "retryable": RETRYABLE_STATUSES, "refresh": REFRESH_S if detail.summary.finished_at is None else None})


def _why_skipped(job: Any, by_name: dict[str, Any], failed: set[str]) -> str:
    if job.reason == "dependency_failed":
        culprits = [n for n in job.needs if n in failed] if job.needs else sorted(
            n for n, j in by_name.items() if n in failed and j.stage_index < job.stage_index)
        return "a job it depends on failed" + (f": {', '.join(culprits[:5])}" if culprits else "")
    if job.when == "on_failure":
        return "when: on_failure, and nothing before it failed"
    if job.reason == "cancelled":
        return "the run was cancelled before it started"
    return job.message or "its when: or rules: did not let it run"


@router.post(PREFIX + "/runs/{run_id}/cancel")
async def cancel_run(run_id: str, request: Request, viewer: SignedInDep, engine: EngineDep) -> Response:
    form = await csrf.read_form(request)
    csrf.check(request, form, viewer.csrf)
    await to_thread.run_sync(runs.cancel_run_now, engine, run_id)
    return RedirectResponse(f"{PREFIX}/runs/{run_id}", status_code=303)


@router.post(PREFIX + "/runs/{run_id}/retry")
async def retry_run(run_id: str, request: Request, viewer: SignedInDep, engine: EngineDep,
                    publisher: PublisherDep, settings: SettingsDep) -> Response:
    """Run the same pipeline again with the same inputs (a new run; the old one stays)."""
    form = await csrf.read_form(request)
    csrf.check(request, form, viewer.csrf)
    if viewer.caller is None:
        raise Forbidden("log in to run a pipeline again")

    def again() -> str:
        with read_scope(engine) as session:
            inputs = run_inputs(session, run_id)
        wanted = RunCreate(pipeline=inputs.pipeline, variables=inputs.variables, secrets=inputs.secrets,
                           ref=inputs.ref or "main", sha=inputs.sha, message=inputs.message,
                           trust="trusted" if inputs.trust == "trusted" else "untrusted")
        assert viewer.caller is not None
        return runs.submit_run(engine, publisher, wanted, viewer.caller, settings.policy).id

    new_id = await to_thread.run_sync(again)
    return RedirectResponse(f"{PREFIX}/runs/{new_id}", status_code=303)


@router.post(PREFIX + "/runs/{run_id}/approve")
async def approve_run(run_id: str, request: Request, viewer: AdminDep, engine: EngineDep,
                      publisher: PublisherDep) -> Response:
    """Run a fork's pull request held for approval (admins only; the run stays untrusted)."""
    form = await csrf.read_form(request)
    csrf.check(request, form, viewer.csrf)
    await to_thread.run_sync(approve_now, engine, publisher, run_id, f"ui:{viewer.name}")
    # the form only chooses between two of our own pages: its text never becomes the redirect
    target = f"{PREFIX}/repos" if form.get("back") == f"{PREFIX}/repos" else f"{PREFIX}/runs/{run_id}"
    return RedirectResponse(target, status_code=303)


# --- repositories (admin) ---------------------------------------------------------------------------

@router.get(f"{PREFIX}/repos", response_class=HTMLResponse)
def repos_page(request: Request, viewer: AdminDep, engine: EngineDep) -> Response:
    with read_scope(engine) as session:
        repos = repo_store.list_repositories(session)
        deliveries = {r.id: repo_store.list_deliveries(session, r.id, 10) for r in repos}
        waiting = waiting_runs(session)
    base = str(request.base_url).rstrip("/")
    return ui_state(request).pages.render(request, "repos.html", {
        "viewer": viewer, "repos": repos, "deliveries": deliveries, "waiting": waiting, "base": base,
        "now": _now()})


# --- the API reference (offline) --------------------------------------------------------------------

@router.get("/api/v1/docs", response_class=HTMLResponse)
def api_reference(request: Request) -> Response:
    """The OpenAPI document as a page sandpit serves itself: the usual Swagger UI loads its code
    from a CDN, which an offline network cannot reach and the CSP forbids."""
    spec = request.app.openapi()
    operations = []
    for path, methods in spec.get("paths", {}).items():
        for method, op in methods.items():
            operations.append({"method": method.upper(), "path": path, "summary": op.get("summary", ""),
                               "description": op.get("description", ""), "tags": op.get("tags", []),
                               "parameters": op.get("parameters", []),
                               "responses": sorted(op.get("responses", {}).items())})
    state = ui_state(request)
    return state.pages.render(request, "api_docs.html", {
        "viewer": state.sessions.viewer(request), "operations": operations, "info": spec.get("info", {})})
