"""The Compose stack for real: compose/docker-compose.yml brought up from nothing on a Docker
engine of the test's own (tests/integration/deploy/dockerd.py: its own network namespace with no
route off the machine, its own data-root), with images made from the set-up's Debian rootfs and
no registry. A pipeline passes artifacts between jobs on the two workers; an artifact downloads
from the API; a worker container SIGKILLed mid-job has its job retried on the other; then the
stack and the engine are torn down, leaving nothing.

About 3 minutes here (most of it the image import and build and the stack's start), so it carries
the ``compose`` marker; .ci/test runs it like every other test.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import require, require_root
from tests.integration.deploy.dockerd import COMPOSE, Dockerd, cgroups_of, isolated_dockerd, missing, mounts_under
from tests.sandbox.conftest import TEST_STATE

REPO = Path(__file__).resolve().parents[3]
ROOTFS = Path(os.environ.get("SANDPIT_COMPOSE_ROOTFS", "/var/cache/sandpit/compose-rootfs.tar"))
PROJECT = "sandpitci"
ADMIN = "compose-admin-" + secrets.token_hex(8)

pytestmark = [pytest.mark.compose, pytest.mark.slow]

PIPELINE = """
stages: [build, test]
build:
  stage: build
  script:
    - mkdir -p dist
    - echo "built by $CI_JOB_ID" > dist/app.txt
  artifacts: {paths: [dist]}
check:
  stage: test
  parallel: 4
  script: [cat dist/app.txt, sleep 2]
gvisor:
  stage: test
  sandbox: {runtime: runsc}
  script: [cat dist/app.txt, "dmesg | head -n 1"]
"""

LONG_JOB = """
long:
  script: [echo started, sleep 25, echo done]
  retry: {max: 1, when: [runner_system_failure]}
"""


@dataclass
class Stack:
    engine: Dockerd
    env: dict[str, str]
    files: list[str]

    @property
    def url(self) -> str:
        return f"http://{self.engine.address}:8000"

    def compose(self, *args: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([COMPOSE, "-p", PROJECT, *self.files, *args], env=self.env, capture_output=True,
                              text=True, timeout=timeout, check=False, cwd=REPO)
        if check and proc.returncode != 0:
            raise AssertionError(f"docker-compose {' '.join(args)} failed:\n{proc.stdout[-3000:]}\n"
                                 f"{proc.stderr[-3000:]}\n{self.logs()}")
        return proc

    def logs(self) -> str:
        proc = subprocess.run([COMPOSE, "-p", PROJECT, *self.files, "logs", "--no-color", "--tail=60"], env=self.env,
                              capture_output=True, text=True, timeout=120, check=False, cwd=REPO)
        return proc.stdout[-12000:]

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {ADMIN}"}, timeout=30)

    def wait_for(self, what: str, check: Any, timeout: float = 180) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            try:
                value = check()
            except httpx.HTTPError:
                value = None
            if value:
                return value
            assert time.monotonic() < deadline, f"{what} did not happen within {timeout}s\n{self.logs()}"
            time.sleep(1)

    def run(self, run_id: str) -> dict[str, Any]:
        with self.client() as c:
            return dict(c.get(f"/api/v1/runs/{run_id}").json())

    def submit(self, text: str) -> dict[str, Any]:
        with self.client() as c:
            response = c.post("/api/v1/runs", content=text, headers={"Content-Type": "text/yaml"})
        assert response.status_code == 201, response.text
        return dict(response.json())

    def finished(self, run_id: str, timeout: float = 180) -> dict[str, Any]:
        return dict(self.wait_for(f"run {run_id} ending", lambda: (r := self.run(run_id))["status"] not in
                                  ("created", "running") and r, timeout))

    def workers(self) -> list[dict[str, Any]]:
        with self.client() as c:
            return list(c.get("/api/v1/workers").json()["workers"])

    def attempts(self, run_id: str) -> dict[str, list[str]]:
        """Job name → the worker of each attempt, read from the stack's own database."""
        assert re.fullmatch(r"[0-9a-f-]{36}", run_id), run_id
        sql = ("SELECT j.name, a.worker_id FROM job j JOIN job_attempt a ON a.job_id = j.id "  # noqa: S608 - a checked uuid
               f"WHERE j.run_id = '{run_id}' ORDER BY j.name, a.attempt")
        out = self.engine.docker("exec", f"{PROJECT}_postgres_1", "runuser", "-u", "postgres", "--", "psql", "-h",
                                 "/run/postgresql", "-U", "sandpit", "-d", "sandpit", "-AtF", "\t", "-c", sql).stdout
        found: dict[str, list[str]] = {}
        for line in out.splitlines():
            name, worker = line.split("\t")
            found.setdefault(name, []).append(worker)
        return found

    def container_of(self, worker_id: str) -> str:
        """The container whose host name the worker id starts with (``<hostname>-<pid>``)."""
        names = self.engine.docker("ps", "--format", "{{.Names}}").stdout.split()
        for name in names:
            hostname = self.engine.docker("inspect", "--format", "{{.Config.Hostname}}", name).stdout.strip()
            if worker_id.startswith(hostname + "-"):
                return name
        raise AssertionError(f"no container runs worker {worker_id}: {names}")


def _seed_images(seed: Path) -> None:
    """A job-image store holding the set-up's built ``debian`` image only (refs and its layer)."""
    (seed / "refs").mkdir(parents=True)
    (seed / "layers").mkdir()
    ref = TEST_STATE / "images" / "refs" / "debian.json"
    key = json.loads(ref.read_text())["key"]
    shutil.copy2(ref, seed / "refs")
    subprocess.run(["cp", "-a", "--reflink=auto", str(TEST_STATE / "images" / "layers" / key), str(seed / "layers")],
                   check=True)


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    require_root()
    why = missing()
    require(why is None, why or "")
    require(ROOTFS.is_file(), f"needs the stack's base rootfs {ROOTFS} (.ci/setup builds it with "
                              "compose/base/build-rootfs.sh)")
    require((TEST_STATE / "images" / "refs" / "debian.json").is_file(), "needs the debian image built")
    root = Path(tempfile.mkdtemp(prefix="sandpit-compose-", dir="/var/tmp"))
    try:
        with isolated_dockerd(root / "engine") as engine:
            secrets_dir = root / "secrets"
            secrets_dir.mkdir(mode=0o700)
            for name, value in (("postgres_password", secrets.token_urlsafe(18)),
                                ("redis_password", secrets.token_urlsafe(18)), ("api_tokens", f"ci:{ADMIN}:trusted"),
                                ("job_token_key", secrets.token_urlsafe(48))):
                (secrets_dir / name).write_text(value + "\n")
            _seed_images(root / "seed")
            env = {**engine.env, "SANDPIT_SECRETS_DIR": str(secrets_dir), "SANDPIT_API_ADDRESS": engine.address,
                   "SANDPIT_API_PORT": "8000", "SANDPIT_LEASE_S": "5", "SANDPIT_HEARTBEAT_S": "2",
                   "SANDPIT_NET_POOL": "0", "SANDPIT_IMAGES_SEED": str(root / "seed")}
            stack = Stack(engine, env, ["-f", str(REPO / "compose/docker-compose.yml"),
                                        "-f", str(REPO / "compose/offline.yml")])
            engine.docker("import", str(ROOTFS), "sandpit-base:bookworm")
            try:
                stack.compose("build", "api")
                stack.compose("up", "-d", "--no-build")
                yield stack
            finally:
                stack.compose("down", "--volumes", "--remove-orphans", "--timeout", "30", check=False)
                left = engine.docker("ps", "-aq").stdout.split() + engine.docker("volume", "ls", "-q").stdout.split()
                assert left == [], left
        assert mounts_under(root) == [] and cgroups_of(engine.cgroup_parent) == []
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_the_stack_comes_up_healthy_with_two_http_workers(stack: Stack) -> None:
    """Every service reports healthy; both workers register, each in its own container and
    state volume, sending files over HTTP, with runsc among their runtimes."""
    workers = stack.wait_for("two alive workers", lambda: len([w for w in stack.workers()
                                                                if w["state"] == "alive"]) == 2 and stack.workers())
    assert {w["transport"] for w in workers} == {"http"}
    assert all("runsc" in w["runtimes"] for w in workers), workers
    assert len({w["host"] for w in workers}) == 2
    states = stack.wait_for("every service healthy", lambda: all(
        "(healthy)" in line for line in stack.compose("ps").stdout.splitlines()[2:] if line.strip()))
    assert states
    mounts = json.loads(stack.engine.docker("inspect", "--format", "{{json .Mounts}}", f"{PROJECT}_api_1").stdout)
    assert [m["Name"] for m in mounts if m["Type"] == "volume"] == [f"{PROJECT}_api-state"]


def test_artifacts_pass_between_jobs_on_both_workers_and_download(stack: Stack) -> None:
    """The build's artifact reaches test jobs on the other worker and a gVisor job; it downloads
    from the API with its recorded sha256."""
    stack.wait_for("two alive workers", lambda: len([w for w in stack.workers() if w["state"] == "alive"]) == 2)
    run = stack.finished(stack.submit(PIPELINE)["id"])
    assert run["status"] == "succeeded", [(j["name"], j["status"], j["message"]) for j in run["jobs"]]
    jobs = {j["name"]: j for j in run["jobs"]}
    build = jobs["build"]
    with stack.client() as c:
        logs = {name: c.get(f"/api/v1/jobs/{j['id']}/log").text for name, j in jobs.items()}
        got = c.get(f"/api/v1/jobs/{build['id']}/artifacts/dist/app.txt")
    for name, text in logs.items():
        if name != "build":
            assert f"built by {build['id']}" in text, (name, text)
    workers = stack.attempts(run["id"])
    builder = workers["build"][-1]
    assert any(w[-1] != builder for name, w in workers.items() if name != "build"), workers
    assert "gVisor" in logs["gvisor"] or "Starting" in logs["gvisor"], logs["gvisor"]
    assert got.status_code == 200 and got.text == f"built by {build['id']}\n"
    assert got.headers["x-content-sha256"] == build["artifacts"][0]["sha256"]


def test_a_worker_container_killed_mid_job_has_its_job_retried_on_the_other(stack: Stack) -> None:
    """SIGKILL to the container running a job: the worker is listed gone, and the job's second
    attempt runs on the other worker and succeeds."""
    stack.wait_for("two alive workers", lambda: len([w for w in stack.workers() if w["state"] == "alive"]) == 2)
    run = stack.submit(LONG_JOB)
    holder = stack.wait_for("a worker running the job", lambda: [w for w in stack.workers() if w["running_jobs"]])
    victim = str(holder[0]["id"])
    stack.engine.docker("kill", "--signal", "KILL", stack.container_of(victim))
    stack.wait_for("the killed worker listed gone", lambda: {w["id"]: w["state"] for w in stack.workers()}[victim]
                   == "gone", timeout=120)
    ended = stack.finished(run["id"], timeout=240)
    assert ended["status"] == "succeeded", ended["jobs"]
    assert ended["jobs"][0]["attempt"] == 2
    first, second = stack.attempts(run["id"])["long"]
    assert first == victim and second != victim
    survivor = [w for w in stack.workers() if w["id"] != victim and w["state"] == "alive"]
    assert survivor, stack.workers()
