"""Push → run → status with real processes: the API (``python -m api``), a worker (``sandpit worker``:
containers, the hardened checkout), redis-server, SQLite and PostgreSQL, a ``git daemon`` and a
loopback server speaking GitHub's status endpoint. Needs root (jobs run in real sandboxes)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.forges.forge_server import ForgeServer, forge_server
from tests.integration.forges.gitserver import Gitlink, GitServer, Link, git_server
from tests.integration.forges.payloads import github_pull_request, push, signed
from tests.integration.redis_server import free_port
from tests.integration.service.conftest import REPO, Service, redis, service  # noqa: F401 - fixtures
from tests.sandbox.conftest import TEST_STATE

SECRET = "end-to-end-hook-secret"
FORGE_TOKEN = "e2e-forge-token-42"
ADMIN = "e2e-admin-token-1234"
PUBLIC = "http://sandpit.test"
pytestmark = pytest.mark.parametrize("db_url", ["sqlite", "postgres"], indirect=True)

PIPELINE = """\
stages: [check, report]
check:
  stage: check
  image: python
  script:
    - test "$(git rev-parse HEAD)" = "$CI_COMMIT_SHA"
    - test "$(git rev-list --count HEAD)" = 3
    - test "$(cat marker.txt)" = "from the commit"
    - test "$CI_PIPELINE_SOURCE" = push && test "$CI_COMMIT_BRANCH" = main && test "$CI_COMMIT_TITLE" = third
    - test "$(readlink outside)" = /etc/passwd
    - echo "CHECKOUT-OK $(git log -1 --format=%s)"
    - echo changed by check > marker.txt
shallow:
  stage: check
  image: python
  variables: {GIT_DEPTH: "1"}
  script: [test "$(git rev-list --count HEAD)" = 1]
empty:
  stage: check
  variables: {GIT_STRATEGY: none}
  script: [test -z "$(ls -A)"]
submodules:
  stage: check
  image: python
  variables: {GIT_SUBMODULE_STRATEGY: normal}
  script:
    - test "$(cat vendor/lib/lib.txt)" = "lib, recorded"
    - test -z "$(git status --porcelain)"
    - git submodule status | grep -q "^ $LIB_SHA vendor/lib"
report:
  stage: report
  script:
    - test "$(cat marker.txt)" = "from the commit"
    - echo "SECRET=${DEPLOY_TOKEN:-none}"
"""


@dataclass
class Api:
    url: str
    proc: subprocess.Popen[bytes]
    client: httpx.Client

    def run(self, run_id: str) -> dict[str, Any]:
        answer = self.client.get(f"/api/v1/runs/{run_id}")
        assert answer.status_code == 200, answer.text
        return dict(answer.json())

    def wait(self, run_id: str, timeout: float = 120) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            run = self.run(run_id)
            if run["finished_at"] is not None:
                return run
            time.sleep(0.1)
        raise AssertionError(f"run {run_id} did not end: {self.run(run_id)}")

    def log(self, job_id: str) -> str:
        return str(self.client.get(f"/api/v1/jobs/{job_id}/log").text)

    def deliver(self, repo: dict[str, Any], payload: dict[str, Any], event: str = "push") -> httpx.Response:
        body = json.dumps(payload).encode()
        return httpx.post(self.url + repo["webhook_path"], content=body, headers=signed("github", body, SECRET, event),
                          timeout=60)


@pytest.fixture
def stack(service: Service, tmp_path: Path) -> Iterator[tuple[Api, GitServer, ForgeServer]]:  # noqa: F811
    """The API and a worker on the service's Redis and database, a git daemon, the forge."""
    port = free_port()
    env = {"PATH": os.environ["PATH"], "SANDPIT_DATABASE_URL": service.db_url, "SANDPIT_REDIS_URL": service.redis.url,
           "SANDPIT_STATE_DIR": str(tmp_path / "api-state"), "SANDPIT_API_TOKENS": f"ci:{ADMIN}:trusted",
           "SANDPIT_PUBLIC_URL": PUBLIC}
    log = (tmp_path / "api.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "api", "--port", str(port), "--log-level", "warning"], env=env,
                            cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    service.start_worker(concurrency=2, SANDPIT_PUBLIC_URL=PUBLIC)
    url = f"http://127.0.0.1:{port}"
    client = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {ADMIN}"}, timeout=60)
    mirrors: list[Path] = []
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if client.get("/healthz").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline and proc.poll() is None, (tmp_path / "api.log").read_text()
            time.sleep(0.1)
        with git_server(tmp_path / "git") as git, forge_server(FORGE_TOKEN) as forge:
            api = Api(url, proc, client)
            api.mirrors = mirrors  # type: ignore[attr-defined]
            yield api, git, forge
    finally:
        client.close()
        proc.terminate()
        proc.wait(timeout=30)
        log.close()
        for mirror in mirrors:  # the worker's mirrors of this test's repositories
            shutil.rmtree(TEST_STATE / "mirrors" / f"{mirror}.git", ignore_errors=True)
            (TEST_STATE / "mirrors" / f"{mirror}.lock").unlink(missing_ok=True)


def _register(api: Api, git: GitServer, forge: ForgeServer, name: str, **extra: Any) -> dict[str, Any]:
    body = {"name": name, "forge": "github", "clone_url": git.url("app"), "secret": SECRET, "token": FORGE_TOKEN,
            "api_url": forge.api_url("github"), **extra}
    answer = api.client.post("/api/v1/repos", json=body)
    assert answer.status_code == 201, answer.text
    repo = dict(answer.json())
    api.mirrors.append(repo["id"])  # type: ignore[attr-defined]
    return repo


def _sources_gone(run_id: str, timeout: float = 20) -> bool:
    deadline = time.monotonic() + timeout
    while (TEST_STATE / "sources" / run_id).exists():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def test_a_signed_push_checks_the_commit_out_in_every_job_and_reports_on_it(
    stack: tuple[Api, GitServer, ForgeServer], service: Service,  # noqa: F811
) -> None:
    """The run is on the pushed commit; each job finds the repository in /workspace (files,
    symlink as a link, .git at GIT_DEPTH, HEAD at the commit) with GitLab's CI_* variables, its own
    copy (one job's change is not the next one's), GIT_STRATEGY none an empty one, GIT_SUBMODULE_STRATEGY
    normal the registered submodule at its recorded commit; the forge gets
    pending then success with the count and the run's page; the checkout goes when the run ends."""
    api, git, forge = stack
    git.create("lib")
    lib_sha = git.commit("lib", {"lib.txt": "lib, recorded\n"}, "lib")
    git.commit("lib", {"lib.txt": "lib, newer\n"}, "lib tip")
    git.create("app")
    git.commit("app", {"README": "first\n"}, "first")
    before = git.commit("app", {"marker.txt": "from the commit\n"}, "second")
    sha = git.commit("app", {".gitlab-ci.yml": PIPELINE.replace("$LIB_SHA", lib_sha), "outside": Link("/etc/passwd"),
                             "vendor/lib": Gitlink(lib_sha),
                             ".gitmodules": '[submodule "lib"]\n\tpath = vendor/lib\n\turl = ../lib.git\n'}, "third")
    repo = _register(api, git, forge, "acme/app")
    _register(api, git, forge, "acme/lib", clone_url=git.url("lib"))
    answer = api.deliver(repo, push("github", git.url("app"), "acme/app", sha, before=before, message="third"))
    assert answer.status_code == 201, answer.text
    run = api.wait(answer.json()["run_id"])
    jobs = {job["name"]: job for job in run["jobs"]}
    assert run["status"] == "succeeded", {n: (j["status"], j["message"], api.log(j["id"])[-2000:])
                                          for n, j in jobs.items() if j["status"] != "succeeded"}
    assert run["sha"] == sha and run["trust"] == "trusted"
    assert "CHECKOUT-OK third" in api.log(jobs["check"]["id"])
    assert "SECRET=none" in api.log(jobs["report"]["id"])
    got = forge.wait_for(sha, "success")
    assert got[0].body["state"] == "pending" and got[-1].body["description"] == "5 passed"
    assert got[-1].body["target_url"] == f"{PUBLIC}/ui/runs/{run['id']}"
    assert _sources_gone(run["id"]), "the checked-out tree of an ended run was not removed"


def test_a_fork_pull_request_waits_for_approval_then_runs_untrusted(
    stack: tuple[Api, GitServer, ForgeServer], service: Service, tmp_path: Path,  # noqa: F811
) -> None:
    """A stranger's pull request is held (nothing runs, the commit shows pending); `sandpit approve`
    runs it untrusted, from the fork's commit, without secrets; its failure reaches the forge."""
    api, git, forge = stack
    git.create("app")
    git.commit("app", {"README": "base\n"}, "base")
    git.create("fork")
    fork_sha = git.commit("fork", {".gitlab-ci.yml": (
        "stranger:\n  script:\n    - cat from-fork.txt\n    - 'echo \"SECRET=${DEPLOY_TOKEN:-none}\"'\n    - exit 3\n"
        "  rules:\n    - if: $CI_PIPELINE_SOURCE == \"merge_request_event\"\n"),
        "from-fork.txt": "written by a stranger\n"}, "please merge")
    repo = _register(api, git, forge, "acme/base", fork_policy="approve")
    held = api.deliver(repo, github_pull_request(git.url("app"), git.url("fork"), "acme/base", fork_sha),
                       event="pull_request")
    assert (held.status_code, held.json()["verdict"]) == (202, "needs_approval"), held.text
    run_id = held.json()["run_id"]
    pending = forge.wait_for(fork_sha, "pending")
    assert "approve" in pending[-1].body["description"]
    time.sleep(1.0)
    waiting = api.run(run_id)
    assert waiting["status"] == "waiting_for_approval" and [j["status"] for j in waiting["jobs"]] == ["created"]
    cli_env = {"PATH": os.environ["PATH"], "SANDPIT_API_URL": api.url, "SANDPIT_TOKEN": ADMIN,
               "SANDPIT_STATE_DIR": str(tmp_path / "cli")}
    approved = subprocess.run([sys.executable, "-m", "worker", "approve", run_id], env=cli_env, cwd=REPO,
                              capture_output=True, text=True, timeout=60)
    assert approved.returncode == 0 and f"approved run {run_id}" in approved.stdout, approved.stderr
    run = api.wait(run_id)
    (job,) = run["jobs"]
    log = api.log(job["id"])
    assert (run["status"], run["trust"], job["exit_code"]) == ("failed", "untrusted", 3), log
    assert "written by a stranger" in log and "SECRET=none" in log
    assert forge.wait_for(fork_sha, "failure")[-1].body["description"] == "1 failed"


def test_a_new_push_cancels_the_interruptible_jobs_of_the_older_run(
    stack: tuple[Api, GitServer, ForgeServer], service: Service,  # noqa: F811
) -> None:
    """A push while the branch's previous run is in its interruptible job cancels that run (the
    running job is stopped, the rest never starts); the new run runs to its end."""
    api, git, forge = stack
    git.create("app")
    slow = "stages: [build, deploy]\nbuild:\n  stage: build\n  interruptible: true\n  script: [sleep 60]\n" \
           "deploy:\n  stage: deploy\n  script: [echo deployed]\n"
    first = git.commit("app", {".gitlab-ci.yml": slow}, "slow one")
    repo = _register(api, git, forge, "acme/busy")
    old = api.deliver(repo, push("github", git.url("app"), "acme/busy", first)).json()["run_id"]
    deadline = time.monotonic() + 60
    while api.run(old)["jobs"][0]["status"] != "running":
        assert time.monotonic() < deadline, api.run(old)
        time.sleep(0.1)
    second = git.commit("app", {".gitlab-ci.yml": slow.replace("sleep 60", "echo fast")}, "fast one")
    new = api.deliver(repo, push("github", git.url("app"), "acme/busy", second, before=first))
    assert new.status_code == 201, new.text
    started = time.monotonic()
    cancelled = api.wait(old, timeout=60)
    assert time.monotonic() - started < 30
    assert cancelled["status"] == "cancelled"
    assert [(j["name"], j["status"]) for j in cancelled["jobs"]] == [("build", "cancelled"), ("deploy", "cancelled")]
    assert api.wait(new.json()["run_id"])["status"] == "succeeded"
    assert forge.wait_for(first, "error")[-1].body["state"] == "error"  # GitHub's word for a cancelled run
    forge.wait_for(second, "success")
