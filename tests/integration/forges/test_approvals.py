"""Approving a fork's pull request through the real app (uvicorn on loopback, SQLite and
PostgreSQL, a git daemon on loopback): the API (admin only), the web UI's button (CSRF-checked
form), and a closed pull request cancelling a run that waits."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

import httpx
import pytest
from sqlalchemy.engine import Engine

from pipelines.store.db import make_engine, read_scope
from pipelines.store.outbox import pending_outbox
from pipelines.store.reads import read_run_row, run_jobs
from tests.integration.api.conftest import USER_TOKEN, LiveServer
from tests.integration.forges.gitserver import GitServer
from tests.integration.forges.payloads import github_pull_request, signed

SECRET = "approval-hook-secret-9"
PIPELINE = "mr:\n  script: [make check]\n  rules:\n    - if: $CI_PIPELINE_SOURCE == \"merge_request_event\"\n"


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    engine = make_engine(db_url)
    yield engine
    engine.dispose()


def _setup(admin: httpx.Client, git: GitServer) -> tuple[dict, str]:
    git.create("app")
    git.create("fork")
    sha = git.commit("fork", {".gitlab-ci.yml": PIPELINE}, "from a stranger")
    repo = admin.post("/api/v1/repos", json={"name": "acme/app", "forge": "github", "clone_url": git.url("app"),
                                             "secret": SECRET, "fork_policy": "approve"})
    assert repo.status_code == 201, repo.text
    return dict(repo.json()), sha


def _deliver(api: LiveServer, repo: dict, payload: dict) -> httpx.Response:
    body = json.dumps(payload).encode()
    with httpx.Client(base_url=api.url, timeout=60) as hooks:
        return hooks.post(repo["webhook_path"], content=body, headers=signed("github", body, SECRET, "pull_request"))


def test_a_held_run_is_approved_by_an_admin_only(api: LiveServer, admin: httpx.Client, git: GitServer,
                                                 engine: Engine) -> None:
    """The fork's pull request waits (listed, nothing queued); a user token may not approve it;
    an admin's approval queues its job with an outbox row; approving twice is 409."""
    repo, sha = _setup(admin, git)
    held = _deliver(api, repo, github_pull_request(git.url("app"), git.url("fork"), "acme/app", sha))
    assert (held.status_code, held.json()["verdict"]) == (202, "needs_approval"), held.text
    run_id = held.json()["run_id"]
    assert [w["run_id"] for w in admin.get("/api/v1/approvals").json()] == [run_id]
    with read_scope(engine) as session:
        assert [j.status for j in run_jobs(session, run_id)] == ["created"] and pending_outbox(session) == []
    with httpx.Client(base_url=api.url, headers={"Authorization": f"Bearer {USER_TOKEN}"}) as user:
        assert user.post(f"/api/v1/runs/{run_id}/approve").status_code == 403
    approved = admin.post(f"/api/v1/runs/{run_id}/approve")
    assert approved.status_code == 200, approved.text
    assert approved.json()["status"] == "running" and approved.json()["trust"] == "untrusted"
    assert [j["status"] for j in approved.json()["jobs"]] == ["queued"]
    again = admin.post(f"/api/v1/runs/{run_id}/approve")
    assert (again.status_code, again.json()["error"]) == (409, "not_waiting")
    assert admin.post("/api/v1/runs/no-such-run/approve").status_code == 404
    assert admin.get("/api/v1/approvals").json() == []


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_the_ui_approves_with_its_form_and_a_closed_pull_request_cancels_a_waiting_run(
    api: LiveServer, admin: httpx.Client, git: GitServer, engine: Engine,
) -> None:
    """The repositories page lists the waiting run with a button; the form needs the session's
    CSRF token; approving redirects back. A second pull request's run is cancelled by its close."""
    repo, sha = _setup(admin, git)
    first = _deliver(api, repo, github_pull_request(git.url("app"), git.url("fork"), "acme/app", sha, number=1))
    second = _deliver(api, repo, github_pull_request(git.url("app"), git.url("fork"), "acme/app", sha, number=2))
    first_id, second_id = first.json()["run_id"], second.json()["run_id"]
    from tests.integration.api.conftest import TRUSTED_TOKEN

    with httpx.Client(base_url=api.url, timeout=30) as web:
        web.get("/ui/login")
        web.post("/ui/login", data={"csrf": web.cookies.get("sandpit_login"), "method": "token",
                                    "token": TRUSTED_TOKEN, "next": "/ui/repos"})
        page = web.get("/ui/repos")
        assert page.status_code == 200 and f"/ui/runs/{first_id}/approve" in page.text
        token = re.search(r'name="csrf" value="([^"]+)"', page.text)
        assert token is not None
        assert "Approve and run" in web.get(f"/ui/runs/{first_id}").text
        forged = web.post(f"/ui/runs/{first_id}/approve", data={"csrf": "wrong"})
        assert forged.status_code == 403
        done = web.post(f"/ui/runs/{first_id}/approve", data={"csrf": token.group(1), "back": "/ui/repos"})
        assert (done.status_code, done.headers["location"]) == (303, "/ui/repos")
    with read_scope(engine) as session:
        run = read_run_row(session, first_id)
        assert run is not None and run.status == "running"
    closed = _deliver(api, repo, github_pull_request(git.url("app"), git.url("fork"), "acme/app", sha, number=2,
                                                     action="closed"))
    assert (closed.status_code, closed.json()["verdict"]) == (200, "cancelled"), closed.text
    with read_scope(engine) as session:
        run = read_run_row(session, second_id)
        assert run is not None and (run.status, run.cancelled) == ("cancelled", True)
        assert [j.status for j in run_jobs(session, second_id)] == ["cancelled"]
