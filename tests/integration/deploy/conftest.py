"""A multi-host deployment on one machine: an API host and worker hosts that share only Redis and
the database (SQLite file or PostgreSQL), each with a state dir and run dir of its own, as
separate machines would have. Real processes throughout: ``python -m api`` and ``sandpit worker``
(Celery), talking over loopback; jobs in real containers.

A host's images are a symlink to the machine's built store (jobs only read it: README, "Several
instances on one host"); its scratch filesystem is its own and is unmounted at the end, with
everything else the host made.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlmodel import select

from pipelines.store.db import make_engine, migrate, session_scope
from pipelines.store.models import JobAttempt
from tests.conftest import require, require_root
from tests.integration.redis_server import RedisServer, free_port, missing, redis_server
from tests.sandbox.conftest import TEST_STATE
from worker.sandbox.instance import forget_instance, instance_names, resolved_instance_id
from worker.sandbox.reaper import leftovers
from worker.settings import Settings

REPO = Path(__file__).resolve().parents[3]
ADMIN_TOKEN = "deploy-admin-0123456789"
USER_TOKEN = "deploy-user-0123456789"
TOKENS = f"ci:{ADMIN_TOKEN}:trusted,user:{USER_TOKEN}"


@dataclass
class Host:
    """One machine of the deployment: its own state and run dirs, the processes started on it."""

    name: str
    root: Path
    base_env: dict[str, str]
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def state(self) -> Path:
        return self.root / "state"

    @property
    def run(self) -> Path:
        return self.root / "run"

    def env(self, **extra: str) -> dict[str, str]:
        return {**self.base_env, "SANDPIT_STATE_DIR": str(self.state), "SANDPIT_RUN_DIR": str(self.run), **extra}

    def log(self, index: int = -1) -> str:
        logs = sorted(self.root.glob("proc-*.log"))
        return logs[index].read_text(errors="replace") if logs else ""

    def start(self, argv: list[str], **extra: str) -> subprocess.Popen[bytes]:
        with open(self.root / f"proc-{len(self.procs)}.log", "wb") as out:
            proc = subprocess.Popen(argv, env=self.env(**extra), stdout=out, stderr=subprocess.STDOUT, cwd=REPO)
        self.procs.append(proc)
        return proc

    def start_worker(self, concurrency: int = 2, **extra: str) -> subprocess.Popen[bytes]:
        return self.start([sys.executable, "-m", "worker", "worker", "--concurrency", str(concurrency)], **extra)

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@dataclass
class Deployment:
    tmp: Path
    db_url: str
    redis: RedisServer
    hosts: list[Host] = field(default_factory=list)
    api_url: str = ""
    api_host: Host | None = None
    api_port: int = 0
    api_proc: subprocess.Popen[bytes] | None = None

    def base_env(self) -> dict[str, str]:
        return {"PATH": os.environ["PATH"], "SANDPIT_DATABASE_URL": self.db_url, "SANDPIT_REDIS_URL": self.redis.url,
                "SANDPIT_LEASE_S": "3", "SANDPIT_SWEEP_S": "0.5", "SANDPIT_HEARTBEAT_S": "0.5",
                "SANDPIT_SCRATCH_SIZE": str(4 * 1024**3), "SANDPIT_NET_POOL": "0"}

    def host(self, name: str) -> Host:
        root = self.tmp / name
        (root / "state").mkdir(parents=True)
        (root / "run").mkdir()
        # the machine's built images, read-only to jobs; each host keeps its own everything else
        (root / "state" / "images").symlink_to(TEST_STATE / "images")
        host = Host(name, root, self.base_env())
        self.hosts.append(host)
        return host

    def start_api(self, **extra: str) -> Host:
        """The API on a host of its own (its state dir is nobody else's); again on the same port
        when it was started before (a restart)."""
        if self.api_host is None:
            self.api_host = self.host("api")
            self.api_port = free_port()
        host = self.api_host
        proc = host.start([sys.executable, "-m", "api", "--host", "127.0.0.1", "--port", str(self.api_port),
                           "--log-level", "warning"], SANDPIT_API_TOKENS=TOKENS, **extra)
        self.api_proc = proc
        self.api_url = f"http://127.0.0.1:{self.api_port}"
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, host.log()
            try:
                if httpx.get(f"{self.api_url}/healthz", timeout=2).status_code == 200:
                    return host
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, host.log()
            time.sleep(0.1)

    def stop_api(self) -> None:
        assert self.api_proc is not None
        self.api_proc.send_signal(signal.SIGTERM)
        self.api_proc.wait(timeout=30)

    def http_worker(self, host: Host, concurrency: int = 1, **extra: str) -> subprocess.Popen[bytes]:
        """A worker that shares no disk with the API: its files go over HTTP."""
        return host.start_worker(concurrency, SANDPIT_ARTIFACT_TRANSPORT="http", SANDPIT_API_URL=self.api_url,
                                 **extra)

    def delivery_waiting(self, host: Host, yaml_text: str) -> tuple[dict[str, Any], subprocess.Popen[bytes], Path]:
        """An http worker on ``host``, a one-job run of ``yaml_text``, and the API stopped while
        that job runs: returns once the job's delivery waits in the worker's outbox (the run, the
        worker's process, the outbox)."""
        worker = self.http_worker(host)
        self.wait_for("the worker", lambda: self.workers())
        run = self.submit(yaml_text)
        self.wait_for("the job running", lambda: self.run(run["id"])["jobs"][0]["status"] == "running")
        self.stop_api()
        outbox = host.state / "outbox"
        self.wait_for("the delivery in the outbox", lambda: outbox.is_dir() and list(outbox.glob("*.json")),
                      timeout=30)
        return run, worker, outbox

    def client(self, token: str = ADMIN_TOKEN) -> httpx.Client:
        return httpx.Client(base_url=self.api_url, headers={"Authorization": f"Bearer {token}"}, timeout=30)

    def submit(self, yaml_text: str) -> dict[str, Any]:
        with self.client() as c:
            response = c.post("/api/v1/runs", content=yaml_text, headers={"Content-Type": "text/yaml"})
        assert response.status_code == 201, response.text
        return dict(response.json())

    def run(self, run_id: str) -> dict[str, Any]:
        with self.client() as c:
            response = c.get(f"/api/v1/runs/{run_id}")
        assert response.status_code == 200, response.text
        return dict(response.json())

    def wait(self, run_id: str, timeout: float = 120) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            run = self.run(run_id)
            if run["status"] not in ("created", "running"):
                return run
            assert time.monotonic() < deadline, (run, self.logs())
            time.sleep(0.2)

    def wait_for(self, what: str, check: Any, timeout: float = 60) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            value = check()
            if value:
                return value
            assert time.monotonic() < deadline, f"{what} did not happen within {timeout}s\n{self.logs()}"
            time.sleep(0.1)

    def workers(self) -> list[dict[str, Any]]:
        with self.client() as c:
            response = c.get("/api/v1/workers")
        assert response.status_code == 200, response.text
        return list(response.json()["workers"])

    def attempts(self, job_id: str) -> list[JobAttempt]:
        engine = make_engine(self.db_url)
        try:
            with session_scope(engine) as s:
                rows = list(s.exec(select(JobAttempt).where(JobAttempt.job_id == job_id)
                                   .order_by(JobAttempt.attempt)).all())  # type: ignore[arg-type]
                for row in rows:
                    s.expunge(row)
                return rows
        finally:
            engine.dispose()

    def logs(self) -> str:
        parts = []
        for host in self.hosts:
            for log in sorted(host.root.glob("proc-*.log")):
                parts.append(f"--- {host.name}/{log.name}\n{log.read_text(errors='replace')[-3000:]}")
        return "\n".join(parts)


def pid_of_worker(worker_id: str) -> int:
    """The pid in a worker id (``<host name>-<pid>``)."""
    return int(worker_id.rsplit("-", 1)[1])


def _clean_host(host: Host) -> list[str]:
    """Unmount and remove what the host made; what was left behind by its processes, if anything."""
    problems = [str(x) for x in leftovers(Settings(state_dir=host.state, run_dir=host.run))]
    # the host's scratch filesystem and the idmapped image views its uid slots keep (reused by the
    # next job on a live host; here the host goes away), deepest first
    for mount in sorted(mounts_under(host.root), key=len, reverse=True):
        subprocess.run(["umount", mount], check=False)
    problems += [f"{m} stays mounted" for m in mounts_under(host.root)]
    names = instance_names(resolved_instance_id(host.run, host.state))
    cgroups = Path("/sys/fs/cgroup")
    for parent in [cgroups / names.cgroup_parent, *cgroups.glob(f"*/{names.cgroup_parent}")]:  # empty by now
        with contextlib.suppress(OSError):
            parent.rmdir()
    forget_instance(host.run, host.state)
    shutil.rmtree(host.root, ignore_errors=True)
    return problems


def mounts_under(root: Path) -> list[str]:
    prefix = str(root.resolve()) + "/"
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4] for line in f]
    return [p for p in points if p.startswith(prefix)]


@pytest.fixture()
def redis(tmp_path: Path) -> Iterator[RedisServer]:
    require_root()
    why = missing()
    require(why is None, why or "")
    (tmp_path / "redis").mkdir()
    with redis_server(tmp_path / "redis") as server:
        yield server


@pytest.fixture()
def hosts_root() -> Iterator[Path]:
    """Where the hosts' dirs live: not under pytest's tmp (``/tmp/pytest-of-root`` is 0700, and a
    job's root, an unprivileged host uid, must pass through every parent of its job dir: crun
    and runc resolve the rootfs inside the job's user namespace)."""
    root = Path(tempfile.mkdtemp(prefix="sandpit-deploy-", dir="/var/tmp"))
    root.chmod(0o711)
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture()
def deployment(db_url: str, redis: RedisServer, hosts_root: Path) -> Iterator[Deployment]:
    require((TEST_STATE / "images").is_dir(), f"needs the built images under {TEST_STATE}/images")
    migrate(db_url)
    deploy = Deployment(hosts_root, db_url, redis)
    problems: list[str] = []
    try:
        yield deploy
    finally:
        for host in reversed(deploy.hosts):
            host.stop()
        for host in deploy.hosts:
            text = "\n".join(log.read_text(errors="replace") for log in sorted(host.root.glob("proc-*.log")))
            if "Traceback" in text:
                print(f"--- {host.name}\n{text[-6000:]}")
            with contextlib.suppress(OSError):
                problems += _clean_host(host)
    assert problems == []


def utc_age(text: str) -> float:
    return (dt.datetime.now(dt.UTC) - dt.datetime.fromisoformat(text)).total_seconds()
