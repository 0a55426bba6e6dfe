"""Web-hooks end to end through the real app (uvicorn on loopback, SQLite and PostgreSQL, real
Redis) and a real ``git daemon`` on 127.0.0.1 serving the repository the runs are read from.

Payloads are the real ones of ../shared/corpus/webhooks, pointed at the loopback repository and
signed in the test with the repository's secret, as each forge signs them.
"""

from __future__ import annotations

import base64
import concurrent.futures
import contextlib
import copy
import hashlib
import hmac
import json
import os
import shutil
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy.engine import Engine
from sqlmodel import select

from pipelines.store.db import read_scope
from pipelines.store.models import Job, Run, WebhookDelivery
from pipelines.store.reads import planned_jobs
from tests.conftest import CORPUS, require, require_corpus
from tests.integration.api.conftest import TRUSTED_TOKEN, LiveServer, claim, free_port

SECRET = "loopback-hook-secret-42"
PIPELINE = """\
stages: [test]
unit:
  stage: test
  script: [make check]
mr-only:
  stage: test
  script: [echo mr]
  rules:
    - if: $CI_PIPELINE_SOURCE == "merge_request_event"
"""


@dataclass
class GitServer:
    url: str  # git://127.0.0.1:<port>/project.git
    fork_url: str
    shas: list[str]


def _git(cwd: Path, *args: str) -> str:
    env = {"PATH": os.environ["PATH"], "HOME": str(cwd), "GIT_CONFIG_NOSYSTEM": "1",
           "GIT_AUTHOR_NAME": "Ada", "GIT_AUTHOR_EMAIL": "ada@example.org",
           "GIT_COMMITTER_NAME": "Ada", "GIT_COMMITTER_EMAIL": "ada@example.org"}
    return subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture(scope="module")
def git_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GitServer]:
    """A ``git daemon`` on a free loopback port serving ``project.git`` (two commits with a
    pipeline file) and ``fork.git`` (its copy), stopped by pid at the end."""
    require(shutil.which("git") is not None, "needs git")
    root = tmp_path_factory.mktemp("git")
    work = root / "work"
    work.mkdir()
    _git(work, "init", "-q", "-b", "main")
    (work / ".gitlab-ci.yml").write_text(PIPELINE)
    _git(work, "add", ".gitlab-ci.yml")
    _git(work, "commit", "-q", "-m", "first\n\nwith a body")
    first = _git(work, "rev-parse", "HEAD")
    (work / "README").write_text("hello\n")
    _git(work, "add", "README")
    _git(work, "commit", "-q", "-m", "second")
    second = _git(work, "rev-parse", "HEAD")
    _git(root, "clone", "-q", "--bare", str(work), "project.git")
    _git(root, "clone", "-q", "--bare", str(work), "fork.git")
    port = free_port()
    proc = subprocess.Popen(["git", "daemon", "--export-all", f"--base-path={root}", "--listen=127.0.0.1",
                             f"--port={port}", "--reuseaddr", str(root)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while subprocess.run(["git", "ls-remote", f"git://127.0.0.1:{port}/project.git"],
                             capture_output=True).returncode != 0:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("git daemon did not start")
            time.sleep(0.05)
        yield GitServer(f"git://127.0.0.1:{port}/project.git", f"git://127.0.0.1:{port}/fork.git", [first, second])
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)


@pytest.fixture
def admin(live: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=live.url, headers={"Authorization": f"Bearer {TRUSTED_TOKEN}"}, timeout=30) as c:
        yield c


@pytest.fixture
def hooks(live: LiveServer) -> Iterator[httpx.Client]:
    """A client with no bearer token, as a forge is."""
    with httpx.Client(base_url=live.url, timeout=60) as c:
        yield c


def register(admin: httpx.Client, forge: str, url: str, **extra: Any) -> dict[str, Any]:
    body = {"name": f"{forge}/{uuid.uuid4().hex[:8]}", "forge": forge, "clone_url": url, "secret": SECRET, **extra}
    response = admin.post("/api/v1/repos", json=body)
    assert response.status_code == 201, response.text
    repo: dict[str, Any] = response.json()
    return repo


def corpus(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((require_corpus(CORPUS / "webhooks") / name).read_text())
    return data


def point_repository(repo: dict[str, Any], url: str) -> None:
    repo.update(clone_url=url, html_url=url.removesuffix(".git"), ssh_url=url, git_url=url, url=url)


def github_push(git: GitServer, sha: str, message: str = "second") -> dict[str, Any]:
    data = corpus("github/push.json")
    point_repository(data["repository"], git.url)
    data.update(ref="refs/heads/main", before=git.shas[0], after=sha)
    data["head_commit"] = {**data["head_commit"], "id": sha, "message": message}
    return data


def github_pr(git: GitServer, sha: str, action: str = "opened", fork: bool = False) -> dict[str, Any]:
    data = corpus("github/pull_request.opened.fork.json" if fork else "github/pull_request.opened.json")
    data["action"] = action
    point_repository(data["repository"], git.url)
    point_repository(data["pull_request"]["base"]["repo"], git.url)
    point_repository(data["pull_request"]["head"]["repo"], git.fork_url if fork else git.url)
    data["pull_request"]["head"].update(sha=sha, ref="feature")
    return data


def sign_github(body: bytes, delivery: str | None = None, event: str = "push", secret: str = SECRET) -> dict[str, str]:
    mac = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return {"X-GitHub-Event": event, "X-GitHub-Delivery": delivery or str(uuid.uuid4()),
            "X-Hub-Signature-256": f"sha256={mac}", "Content-Type": "application/json"}


def send(hooks: httpx.Client, repo: dict[str, Any], payload: dict[str, Any], **sign: Any) -> httpx.Response:
    body = json.dumps(payload).encode()
    return hooks.post(repo["webhook_path"], content=body, headers=sign_github(body, **sign))


def runs(engine: Engine) -> list[Run]:
    with read_scope(engine) as session:
        return list(session.exec(select(Run)).all())


def job_env(engine: Engine, run_id: str) -> dict[str, dict[str, str]]:
    with read_scope(engine) as session:
        return {job.name: job.env() for job in planned_jobs(session, run_id)}


def verdicts(engine: Engine) -> list[tuple[str, int]]:
    with read_scope(engine) as session:
        rows = session.exec(select(WebhookDelivery).order_by(WebhookDelivery.id)).all()  # type: ignore[arg-type]
        return [(row.verdict, row.status_code) for row in rows]


def test_signed_push_creates_a_trusted_run_with_gitlab_variables(
    admin: httpx.Client, hooks: httpx.Client, engine: Engine, git_server: GitServer
) -> None:
    """A GitHub push signed with the repository's secret creates one trusted run on that commit,
    its pipeline read from the commit, its jobs carrying the CI_* variables GitLab would set."""
    repo = register(admin, "github", git_server.url)
    sha = git_server.shas[1]
    response = send(hooks, repo, github_push(git_server, sha))
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["verdict"] == "created"
    (run,) = runs(engine)
    assert (run.id, run.trust, run.source, run.sha, run.ref) == (body["run_id"], "trusted", "webhook", sha, "main")
    env = job_env(engine, run.id)
    assert set(env) == {"unit"}  # the merge-request-only job's rule is false on a push
    assert {k: env["unit"][k] for k in ("CI_PIPELINE_SOURCE", "CI_COMMIT_SHA", "CI_COMMIT_BRANCH",
                                        "CI_COMMIT_REF_NAME", "CI_COMMIT_BEFORE_SHA", "CI_COMMIT_TITLE")} == {
        "CI_PIPELINE_SOURCE": "push", "CI_COMMIT_SHA": sha, "CI_COMMIT_BRANCH": "main", "CI_COMMIT_REF_NAME": "main",
        "CI_COMMIT_BEFORE_SHA": git_server.shas[0], "CI_COMMIT_TITLE": "second"}
    assert "CI_COMMIT_TAG" not in env["unit"]
    # the same delivery again: the first answer, nothing new
    again = hooks.post(repo["webhook_path"], content=response.request.content, headers=dict(response.request.headers))
    assert again.status_code == 201 and again.headers["x-sandpit-replay"] == "1"
    assert again.json()["run_id"] == body["run_id"] and again.json()["replay"] is True
    # the same signed bytes under a new delivery id (GitHub signs the body, not the id): a replay too
    resent = send(hooks, repo, github_push(git_server, sha))
    assert resent.status_code == 201 and resent.headers["x-sandpit-replay"] == "1"
    assert len(runs(engine)) == 1
    assert verdicts(engine) == [("created", 201)]


def test_copies_arriving_at_once_create_one_run(
    admin: httpx.Client, hooks: httpx.Client, live: LiveServer, engine: Engine, git_server: GitServer
) -> None:
    """Four copies of one delivery sent at the same moment: one run, three replays."""
    repo = register(admin, "github", git_server.url)
    body = json.dumps(github_push(git_server, git_server.shas[1])).encode()
    headers = sign_github(body)
    barrier = threading.Barrier(4)

    def post() -> httpx.Response:
        with httpx.Client(base_url=live.url, timeout=60) as c:
            barrier.wait()
            return c.post(repo["webhook_path"], content=body, headers=headers)

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda _: post(), range(4)))
    assert sorted(a.headers.get("x-sandpit-replay", "0") for a in answers) == ["0", "1", "1", "1"]
    assert {a.json()["run_id"] for a in answers if a.status_code == 201} == {runs(engine)[0].id}
    assert len(runs(engine)) == 1


def test_forged_oversized_and_misdirected_deliveries_create_nothing(
    admin: httpx.Client, hooks: httpx.Client, engine: Engine, git_server: GitServer
) -> None:
    """Wrong secret, tampered body, no signature, a body over the cap, another repository's
    payload, an unknown repository: each refused with its own status and verdict, no run."""
    repo = register(admin, "github", git_server.url)
    payload = github_push(git_server, git_server.shas[1])
    body = json.dumps(payload).encode()
    path = repo["webhook_path"]
    delivery = str(uuid.uuid4())

    forged = hooks.post(path, content=body, headers=sign_github(body, delivery, secret="not-the-secret-000"))
    assert (forged.status_code, forged.json()["error"]) == (401, "bad_signature")
    tampered = hooks.post(path, content=body.replace(b"second", b"third!"), headers=sign_github(body))
    assert (tampered.status_code, tampered.json()["error"]) == (401, "bad_signature")
    unsigned = hooks.post(path, content=body, headers={"X-GitHub-Event": "push", "X-GitHub-Delivery": delivery})
    assert (unsigned.status_code, unsigned.json()["error"]) == (401, "missing_signature")
    big = json.dumps({**payload, "padding": "x" * (70 * 1024)}).encode()
    oversized = hooks.post(path, content=big, headers=sign_github(big))
    assert (oversized.status_code, oversized.json()["error"]) == (413, "too_large")
    other = copy.deepcopy(payload)
    point_repository(other["repository"], "https://example.org/someone/else.git")
    misdirected = send(hooks, repo, other)
    assert (misdirected.status_code, misdirected.json()["error"]) == (422, "wrong_repository")
    unknown = hooks.post("/api/v1/webhooks/github/no-such-repo", content=body, headers=sign_github(body))
    assert (unknown.status_code, unknown.json()["error"]) == (404, "unknown_repository")
    no_forge = hooks.post(f"/api/v1/webhooks/bitbucket/{repo['id']}", content=body, headers=sign_github(body))
    assert (no_forge.status_code, no_forge.json()["error"]) == (404, "unknown_forge")
    wrong_forge = hooks.post(f"/api/v1/webhooks/gitlab/{repo['id']}", content=body, headers=sign_github(body))
    assert (wrong_forge.status_code, wrong_forge.json()["error"]) == (404, "wrong_forge")
    assert runs(engine) == []
    # a forged delivery does not reserve its id: the genuine one with that id still runs
    genuine = hooks.post(path, content=body, headers=sign_github(body, delivery))
    assert genuine.status_code == 201, genuine.text
    assert len(runs(engine)) == 1
    assert [v for v, _ in verdicts(engine)] == ["bad_signature", "bad_signature", "missing_signature", "too_large",
                                                "wrong_repository", "wrong_forge", "created"]


def test_ping_deletion_skip_tag_and_other_events(
    admin: httpx.Client, hooks: httpx.Client, engine: Engine, git_server: GitServer
) -> None:
    """Ping answers pong; a deleted branch, a ``[skip ci]`` commit and a check_run create nothing;
    a tag push builds with CI_COMMIT_TAG."""
    repo = register(admin, "github", git_server.url)
    ping = corpus("github/ping.json")
    point_repository(ping["repository"], git_server.url)
    answer = send(hooks, repo, ping, event="ping")
    assert (answer.status_code, answer.json()["verdict"]) == (200, "pong")
    deleted = github_push(git_server, git_server.shas[1])
    deleted.update(after="0" * 40, deleted=True)
    assert send(hooks, repo, deleted).json()["verdict"] == "ref_deleted"
    skipped = send(hooks, repo, github_push(git_server, git_server.shas[1], "wip [skip ci]"))
    assert (skipped.status_code, skipped.json()["verdict"]) == (202, "skip_ci")
    tag = github_push(git_server, git_server.shas[0], "first")
    tag.update(ref="refs/tags/v1.0", before="0" * 40, created=True)
    tagged = send(hooks, repo, tag)
    assert tagged.status_code == 201, tagged.text
    tag_env = job_env(engine, tagged.json()["run_id"])["unit"]
    assert (tag_env["CI_COMMIT_TAG"], tag_env["CI_COMMIT_REF_NAME"]) == ("v1.0", "v1.0")
    assert "CI_COMMIT_BRANCH" not in tag_env and tag_env["CI_COMMIT_SHA"] == git_server.shas[0]
    check = corpus("github/check_run.completed.json")
    point_repository(check["repository"], git_server.url)
    ignored = send(hooks, repo, check, event="check_run")
    assert (ignored.status_code, ignored.json()["verdict"]) == (202, "ignored_event")
    assert [run.id for run in runs(engine)] == [tagged.json()["run_id"]]  # only the tag push built


@pytest.mark.parametrize(("policy", "status", "verdict"), [
    ("run", 201, "created"), ("approve", 202, "needs_approval"), ("never", 202, "fork_refused")])
def test_pull_request_from_a_fork_is_untrusted(
    admin: httpx.Client, hooks: httpx.Client, engine: Engine, git_server: GitServer,
    policy: str, status: int, verdict: str,
) -> None:
    """A fork's pull request runs untrusted (fork_policy run), waits untrusted for approval with
    nothing queued (approve), or creates nothing (never)."""
    repo = register(admin, "github", git_server.url, fork_policy=policy)
    answer = send(hooks, repo, github_pr(git_server, git_server.shas[1], fork=True), event="pull_request")
    assert (answer.status_code, answer.json()["verdict"]) == (status, verdict), answer.text
    if policy == "never":
        assert runs(engine) == []
        return
    if policy == "approve":
        (held,) = runs(engine)
        assert (held.id, held.trust, held.status) == (answer.json()["run_id"], "untrusted", "waiting_for_approval")
        assert {j[1] for j in _job_ids(engine, held.id)} == {"mr-only"}
        with read_scope(engine) as session:
            assert all(j.status == "created" for j in session.exec(select(Job).where(Job.run_id == held.id)).all())
        return
    (run,) = runs(engine)
    assert run.trust == "untrusted"
    env = job_env(engine, run.id)
    assert set(env) == {"mr-only"}  # as on GitLab: a job without rules is not in merge request pipelines
    assert env["mr-only"]["CI_PIPELINE_SOURCE"] == "merge_request_event"
    assert env["mr-only"]["CI_MERGE_REQUEST_IID"] == "140"
    assert env["mr-only"]["CI_MERGE_REQUEST_SOURCE_PROJECT_PATH"] == "tranchitella/workflows"
    assert env["mr-only"]["CI_COMMIT_TITLE"] == "second"  # read from the commit: the payload has no message


def test_closed_pull_request_cancels_its_runs(
    admin: httpx.Client, hooks: httpx.Client, engine: Engine, git_server: GitServer
) -> None:
    """Opening a pull request creates a trusted run; closing it cancels that run (and only it)."""
    repo = register(admin, "github", git_server.url)
    opened = send(hooks, repo, github_pr(git_server, git_server.shas[1]), event="pull_request")
    assert opened.status_code == 201, opened.text
    pushed = send(hooks, repo, github_push(git_server, git_server.shas[1]))
    assert pushed.status_code == 201
    pr_run = opened.json()["run_id"]
    (job_id,) = [j for j in _job_ids(engine, pr_run) if j[1] == "mr-only"]
    claim(engine, job_id[0])  # one job is running: it is asked to stop
    closed = send(hooks, repo, github_pr(git_server, git_server.shas[1], action="closed"), event="pull_request")
    assert (closed.status_code, closed.json()["verdict"]) == (200, "cancelled"), closed.text
    assert pr_run in closed.json()["message"]
    by_id = {run.id: run for run in runs(engine)}
    assert by_id[pr_run].cancelled and not by_id[pushed.json()["run_id"]].cancelled
    with read_scope(engine) as session:
        running = session.get(Job, job_id[0])
        assert running is not None and running.cancel_requested


def _job_ids(engine: Engine, run_id: str) -> list[tuple[str, str]]:
    with read_scope(engine) as session:
        return [(j.id, j.name) for j in session.exec(select(Job).where(Job.run_id == run_id)).all()]


def test_gitlab_token_and_signing_token_and_forgejo_signature(
    admin: httpx.Client, hooks: httpx.Client, engine: Engine, git_server: GitServer
) -> None:
    """GitLab with X-Gitlab-Token, with the Standard Webhooks signature (stale refused), and
    Forgejo's signature header each authenticate their real payloads."""
    sha = git_server.shas[1]
    lab = register(admin, "gitlab", git_server.url)
    push = corpus("gitlab/push.captured.json")
    push["project"].update(git_http_url=git_server.url, git_ssh_url=git_server.url, web_url=git_server.url,
                           http_url=git_server.url, ssh_url=git_server.url, url=git_server.url)
    push["repository"] = {"url": git_server.url}
    push.update(after=sha, checkout_sha=sha)
    push["commits"] = [{**push["commits"][-1], "id": sha, "message": "second"}]
    body = json.dumps(push).encode()
    headers = {"X-Gitlab-Event": "Push Hook", "X-Gitlab-Event-UUID": str(uuid.uuid4())}
    wrong = hooks.post(lab["webhook_path"], content=body, headers={**headers, "X-Gitlab-Token": "wrong-token-00000"})
    assert (wrong.status_code, wrong.json()["error"]) == (401, "bad_signature")
    ok = hooks.post(lab["webhook_path"], content=body, headers={**headers, "X-Gitlab-Token": SECRET})
    assert ok.status_code == 201, ok.text
    assert job_env(engine, ok.json()["run_id"])["unit"]["CI_COMMIT_BRANCH"] == "main"

    def signed(stamp: int) -> dict[str, str]:
        msg = f"msg_{uuid.uuid4().hex}"
        mac = hmac.new(SECRET.encode(), f"{msg}.{stamp}.".encode() + body, hashlib.sha256).digest()
        return {"X-Gitlab-Event": "Push Hook", "webhook-id": msg, "webhook-timestamp": str(stamp),
                "webhook-signature": "v1," + base64.b64encode(mac).decode()}

    stale = hooks.post(lab["webhook_path"], content=body, headers=signed(int(time.time()) - 3600))
    assert (stale.status_code, stale.json()["error"]) == (401, "stale_timestamp")
    fresh = hooks.post(lab["webhook_path"], content=body, headers=signed(int(time.time())))
    # the same bytes under a new webhook-id and a fresh timestamp: a replay of the first push
    assert (fresh.status_code, fresh.headers["x-sandpit-replay"]) == (201, "1")
    assert fresh.json()["run_id"] == ok.json()["run_id"]
    body = json.dumps({**push, "user_name": "someone else"}).encode()  # another push of that commit
    fresh = hooks.post(lab["webhook_path"], content=body, headers=signed(int(time.time())))
    assert fresh.status_code == 201 and "x-sandpit-replay" not in fresh.headers, fresh.text

    tea = register(admin, "gitea", git_server.url)
    gpush = corpus("gitea/forgejo.push.json")
    point_repository(gpush["repository"], git_server.url)
    gpush.update(after=sha, ref="refs/heads/main")
    gbody = json.dumps(gpush).encode()
    mac = hmac.new(SECRET.encode(), gbody, hashlib.sha256).hexdigest()
    forged = hooks.post(tea["webhook_path"], content=gbody, headers={
        "X-Forgejo-Event": "push", "X-Forgejo-Delivery": str(uuid.uuid4()), "X-Forgejo-Signature": "0" * 64,
        "X-Gitea-Signature": mac})
    assert forged.status_code == 401  # the Forgejo header, present, is the one checked
    good = hooks.post(tea["webhook_path"], content=gbody, headers={
        "X-Forgejo-Event": "push", "X-Forgejo-Delivery": str(uuid.uuid4()), "X-Forgejo-Signature": mac})
    assert good.status_code == 201, good.text
    assert len(runs(engine)) == 3


def test_repos_api_is_admin_only_and_never_returns_secrets(
    admin: httpx.Client, client: httpx.Client, hooks: httpx.Client, engine: Engine, git_server: GitServer
) -> None:
    """Only a trusted token manages repositories; no answer holds the secret or token; a rotated
    secret replaces the old one for signatures; a removed repository's web-hook is unknown."""
    assert client.post("/api/v1/repos", json={"name": "x/y", "forge": "github", "clone_url": git_server.url,
                                              "secret": SECRET}).status_code == 403
    assert client.get("/api/v1/repos").status_code == 403
    repo = register(admin, "github", git_server.url, token="forge-api-token-xyz")
    bad = admin.post("/api/v1/repos", json={"name": "a/b", "forge": "github", "clone_url": "file:///etc",
                                            "secret": SECRET})
    assert bad.status_code == 400
    dup = admin.post("/api/v1/repos", json={"name": repo["name"], "forge": "github", "clone_url": git_server.url,
                                            "secret": SECRET})
    assert (dup.status_code, dup.json()["error"]) == (409, "repository_exists")
    shown = admin.get(f"/api/v1/repos/{repo['name']}")
    listed = admin.get("/api/v1/repos")
    for text in (shown.text, listed.text, json.dumps(repo)):
        assert SECRET not in text and "forge-api-token-xyz" not in text
    assert shown.json()["has_token"] is True
    with read_scope(engine) as session:
        from pipelines.store.models import Repository

        stored = session.get(Repository, repo["id"])
        assert stored is not None and SECRET not in stored.secret_sealed
    new_secret = "a-brand-new-secret-99"
    rotated = admin.post(f"/api/v1/repos/{repo['id']}/rotate-secret", json={"secret": new_secret})
    assert rotated.status_code == 200 and rotated.json()["secret_rotated_at"]
    ping = corpus("github/ping.json")
    point_repository(ping["repository"], git_server.url)
    assert send(hooks, repo, ping, event="ping").status_code == 401
    assert send(hooks, repo, ping, event="ping", secret=new_secret).status_code == 200
    assert [d["verdict"] for d in admin.get(f"/api/v1/repos/{repo['id']}").json()["deliveries"]] == [
        "pong", "bad_signature"]
    assert admin.delete(f"/api/v1/repos/{repo['name']}").status_code == 204
    assert admin.get(f"/api/v1/repos/{repo['id']}").status_code == 404
    gone = send(hooks, repo, ping, event="ping", secret=new_secret)
    assert (gone.status_code, gone.json()["error"]) == (404, "unknown_repository")


def test_abandoned_claim_is_taken_over_once(engine: Engine) -> None:
    """A claim left "processing" by a process that died is taken over by a later redelivery
    (once, however many arrive); a recent one is still answered as a replay."""
    import datetime as dt

    from pipelines.store import repos as store
    from pipelines.store.db import session_scope

    now = dt.datetime.now(dt.UTC)
    with session_scope(engine) as session:
        repo = store.add_repository(session, store.NewRepository("o/r", "github", "https://h/o/r.git", "sealed"), now)
        repo_id = repo.id
    with session_scope(engine) as session:
        first, seen = store.claim_delivery(session, repo_id, "d-1", "b" * 64, "push", now)
        assert seen is None
    with session_scope(engine) as session:
        again, seen = store.claim_delivery(session, repo_id, "d-1", "b" * 64, "push", now + dt.timedelta(minutes=1))
        assert seen is not None and seen.verdict == store.PROCESSING and again == first
    later = now + store.ABANDONED_AFTER + dt.timedelta(seconds=1)
    with session_scope(engine) as session:
        taken, seen = store.claim_delivery(session, repo_id, "d-1", "b" * 64, "push", later)
        assert (taken, seen) == (first, None)
    with session_scope(engine) as session:
        _, seen = store.claim_delivery(session, repo_id, "d-1", "b" * 64, "push", later)
        assert seen is not None  # taken over just now: not abandoned


def test_failed_fetch_is_retried_by_a_redelivery(
    admin: httpx.Client, hooks: httpx.Client, engine: Engine, git_server: GitServer
) -> None:
    """A commit the git server cannot give (down, or not there yet) is answered 502
    ``fetch_failed`` and recorded; the same delivery sent again is acted on afresh, not replayed."""
    repo = register(admin, "github", git_server.url)
    missing = "f" * 40
    body = json.dumps(github_push(git_server, missing)).encode()
    headers = sign_github(body)
    first = hooks.post(repo["webhook_path"], content=body, headers=headers)
    assert (first.status_code, first.json()["error"]) == (502, "fetch_failed"), first.text
    again = hooks.post(repo["webhook_path"], content=body, headers=headers)
    assert again.status_code == 502 and "x-sandpit-replay" not in again.headers
    assert runs(engine) == []
    assert verdicts(engine) == [("fetch_failed", 502), ("fetch_failed", 502)]


def test_configured_pipeline_path_falls_back_to_gitlab_ci(
    admin: httpx.Client, hooks: httpx.Client, engine: Engine, git_server: GitServer
) -> None:
    """A repository registered with a pipeline path its commit lacks builds from `.gitlab-ci.yml`."""
    repo = register(admin, "github", git_server.url, pipeline_path="ci/pipeline.yml")
    answer = send(hooks, repo, github_push(git_server, git_server.shas[1]))
    assert answer.status_code == 201, answer.text
    (run,) = runs(engine)
    assert run.pipeline == PIPELINE
