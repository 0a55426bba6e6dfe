"""Commit statuses through the real app (uvicorn on loopback, its status sender, SQLite and
PostgreSQL) to a loopback server speaking GitHub's, Gitea's and GitLab's status endpoints.

The tests play the worker (claim and finish jobs through the store) so each state is seen."""

from __future__ import annotations

import datetime as dt
import json
import time
import uuid
from collections.abc import Iterator

import httpx
import pytest
from sqlalchemy.engine import Engine

from pipelines.store.db import make_engine, read_scope, session_scope
from pipelines.store.reads import run_jobs
from pipelines.store.statuses import statuses_of_commit
from pipelines.store.transitions import claim_job, finish_job
from tests.integration.api.conftest import LiveServer
from tests.integration.forges.conftest import FORGE_TOKEN
from tests.integration.forges.forge_server import ForgeServer
from tests.integration.forges.gitserver import GitServer
from tests.integration.forges.payloads import push, signed

SECRET = "forge-test-hook-secret-1"
PIPELINE = "stages: [test]\nunit:\n  stage: test\n  script: [make check]\nlint:\n  stage: test\n  script: [ruff]\n"
WORDS = {  # what each forge is told for pending, running, success, failed
    "github": ("pending", "pending", "success", "failure"),
    "gitea": ("pending", "pending", "success", "failure"),
    "gitlab": ("pending", "running", "success", "failed"),
}


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    engine = make_engine(db_url)
    yield engine
    engine.dispose()


def _register(admin: httpx.Client, forge: str, git: GitServer, forge_server: ForgeServer, name: str) -> dict:
    body = {"name": name, "forge": forge, "clone_url": git.url("app"), "secret": SECRET, "token": FORGE_TOKEN,
            "api_url": forge_server.api_url(forge), "fork_policy": "run"}
    answer = admin.post("/api/v1/repos", json=body)
    assert answer.status_code == 201, answer.text
    return dict(answer.json())


def _deliver(api: LiveServer, forge: str, repo: dict, payload: dict) -> httpx.Response:
    body = json.dumps(payload).encode()
    with httpx.Client(base_url=api.url, timeout=60) as hooks:
        return hooks.post(repo["webhook_path"], content=body, headers=signed(forge, body, SECRET))


def _play(engine: Engine, run_id: str, status: str = "succeeded", *, claim_only: bool = False) -> None:
    now = dt.datetime.now(dt.UTC)
    with session_scope(engine) as session:
        ids = [job.id for job in run_jobs(session, run_id) if job.status in ("queued", "running")]
    for job_id in ids:
        with session_scope(engine) as session:
            claimed = claim_job(session, job_id, "test-worker", now, 30)
        if claim_only or claimed is None:
            continue
        with session_scope(engine) as session:
            finish_job(session, job_id, claimed.attempt, {"status": status, "reason": None if status == "succeeded"
                                                          else "exit_code", "exit_code": 0 if status == "succeeded"
                                                          else 2}, now)


@pytest.mark.parametrize("forge_kind", ["github", "gitea", "gitlab"])
def test_a_push_reports_pending_running_then_success_through_a_forge_that_was_down(
    forge_kind: str, api: LiveServer, admin: httpx.Client, git: GitServer, forge: ForgeServer, engine: Engine,
) -> None:
    """The forge answers the first status 503: it is sent again (back-off) and lands; then the run
    reports running and its end, each in the forge's own words, with the run's UI page and a count."""
    git.create("app")
    sha = git.commit("app", {".gitlab-ci.yml": PIPELINE}, "add ci")
    repo = _register(admin, forge_kind, git, forge, f"acme/{forge_kind}-{uuid.uuid4().hex[:6]}")
    forge.fail_next.append(503)
    answer = _deliver(api, forge_kind, repo, push(forge_kind, git.url("app"), "acme/app", sha))
    assert answer.status_code == 201, answer.text
    run_id = answer.json()["run_id"]
    pending, running, success, _failure = WORDS[forge_kind]
    first = forge.wait_for(sha, pending, timeout=60)
    assert [r.answered for r in forge.received][:2] == [503, 201]
    _play(engine, run_id, claim_only=True)
    if running != pending:
        forge.wait_for(sha, running)
    else:  # GitHub and Gitea say "pending" again, with what runs
        deadline = time.monotonic() + 60
        while not any("running" in r.body.get("description", "") for r in forge.received):
            assert time.monotonic() < deadline, forge.received
            time.sleep(0.05)
    with session_scope(engine) as session:
        jobs = run_jobs(session, run_id)
    for job in jobs:
        with session_scope(engine) as session:
            finish_job(session, job.id, job.attempt, {"status": "succeeded", "reason": None, "exit_code": 0},
                       dt.datetime.now(dt.UTC))
    got = forge.wait_for(sha, success)
    final = got[-1]
    assert final.body.get("description") == "2 passed"
    assert final.body.get("target_url") == f"http://sandpit.test/ui/runs/{run_id}"
    assert (final.body.get("context") or final.body.get("name")) == "sandpit/push"
    assert final.project == "acme/app" and final.forge == forge_kind
    assert first[0].auth == {"github": f"Bearer {FORGE_TOKEN}", "gitea": f"token {FORGE_TOKEN}",
                             "gitlab": FORGE_TOKEN}[forge_kind]
    # the sender records a status's outcome after the forge has answered it: wait for that record
    deadline = time.monotonic() + 60
    while True:
        with read_scope(engine) as session:
            outcomes = [(s.state, s.attempts, s.outcome[:3]) for s in statuses_of_commit(session, sha)]
        if (outcomes and outcomes[-1][1] > 0) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert outcomes[0] == ("pending", 2, "201") and outcomes[-1] == ("success", 1, "201")


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_broken_pipeline_file_fails_the_commit_and_a_bad_token_is_not_retried(
    api: LiveServer, admin: httpx.Client, git: GitServer, forge: ForgeServer, engine: Engine,
) -> None:
    """An invalid pipeline file creates no run and puts `failed` on the commit with the first
    problem's place; a commit without one says so; the forge refusing the token (401) is
    recorded, not retried for ever."""
    git.create("app")
    broken = git.commit("app", {".gitlab-ci.yml": "unit:\n  script: [x]\n  scirpt: [y]\n"}, "typo")
    repo = _register(admin, "github", git, forge, "acme/broken")
    answer = _deliver(api, "github", repo, push("github", git.url("app"), "acme/app", broken))
    assert (answer.status_code, answer.json()["verdict"]) == (422, "invalid_pipeline"), answer.text
    (status,) = forge.wait_for(broken, "failure")
    assert status.body["description"].startswith(".gitlab-ci.yml:3:3 ") and "scirpt" in status.body["description"]
    empty = git.commit("app", {".gitlab-ci.yml": None, "README": "x"}, "no ci")
    answer = _deliver(api, "github", repo, push("github", git.url("app"), "acme/app", empty, before=broken))
    assert answer.json()["verdict"] == "no_pipeline_file"
    assert "no pipeline file" in forge.wait_for(empty, "failure")[-1].body["description"]
    forge.token = "a-different-token"  # the forge no longer accepts ours
    third = git.commit("app", {".gitlab-ci.yml": "unit: {script: [x]}\n"}, "fixed")
    assert _deliver(api, "github", repo, push("github", git.url("app"), "acme/app", third)).status_code == 201
    deadline = time.monotonic() + 60
    while True:
        with read_scope(engine) as session:
            rows = statuses_of_commit(session, third)
        if rows and rows[0].sent_at is not None:
            break
        assert time.monotonic() < deadline, rows
        time.sleep(0.05)
    assert rows[0].outcome.startswith("refused: 401") and rows[0].attempts == 1
