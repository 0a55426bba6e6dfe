"""The service for real: redis-server, worker processes (`sandpit worker`), a real database, containers.

Runs are created with the store and published the way the API does it (a Celery message by task
name carrying only the job id); the tests then watch the database.
"""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from celery import Celery
from sqlmodel import select

from pipelines.language.model import PipelineInputs, Plan
from pipelines.language.planner import plan
from pipelines.names import QUEUE, TASK_RUN_JOB
from pipelines.store.db import make_engine, migrate, session_scope
from pipelines.store.models import Job, JobAttempt, Run
from pipelines.store.outbox import mark_published
from pipelines.store.reads import queued_job_ids, run_status
from pipelines.store.transitions import create_run
from tests.conftest import require, require_root
from tests.integration.redis_server import RedisServer, missing, redis_server
from tests.sandbox.conftest import TEST_RUN, TEST_STATE
from worker.sandbox.reaper import leftovers
from worker.settings import Settings

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture()
def redis(tmp_path: Path) -> Iterator[RedisServer]:
    require_root()
    why = missing()
    require(why is None, why or "")
    with redis_server(tmp_path) as server:
        yield server


@dataclass
class Service:
    db_url: str
    redis: RedisServer
    tmp: Path
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def env(self) -> dict[str, str]:
        return {"PATH": os.environ["PATH"], "SANDPIT_STATE_DIR": str(TEST_STATE), "SANDPIT_RUN_DIR": str(TEST_RUN),
                "SANDPIT_DATABASE_URL": self.db_url, "SANDPIT_REDIS_URL": self.redis.url,
                "SANDPIT_LEASE_S": "2", "SANDPIT_SWEEP_S": "0.5", "SANDPIT_SCRATCH_SIZE": str(8 * 1024**3)}

    def start_worker(self, concurrency: int = 2, *, plain_celery: bool = False, args: tuple[str, ...] = (),
                     **env: str) -> subprocess.Popen[bytes]:
        argv = [sys.executable, "-m", "worker", "worker", "--concurrency", str(concurrency), *args]
        if plain_celery:  # the documented plain form
            argv = [sys.executable, "-m", "celery", "-A", "worker.service.celery_app", "worker", "-P", "threads",
                    "-c", str(concurrency), "-l", "INFO"]
        with open(self.tmp / f"worker-{len(self.workers)}.log", "wb") as log:
            proc = subprocess.Popen(argv,
                                    env={**self.env(), **env}, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
        self.workers.append(proc)
        return proc

    def failures(self, run_ids: list[str]) -> list[tuple[str, str, str | None, object]]:
        """(job, status, reason, message) of every job of these runs that did not succeed."""
        out = []
        for run_id in run_ids:
            for job in self.jobs(run_id).values():
                if job.status != "succeeded":
                    out.append((job.name, job.status, job.reason, (job.result or {}).get("message")))
        return out

    def worker_log(self, index: int) -> str:
        return (self.tmp / f"worker-{index}.log").read_text(errors="replace")

    def stop_workers(self) -> None:
        for proc in self.workers:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.workers:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def celery(self) -> Celery:
        app = Celery("sandpit-test", broker=self.redis.url)
        app.conf.update(task_serializer="json", accept_content=["json"], broker_connection_retry_on_startup=True)
        return app

    def submit(self, yaml_text: str, *, variables: dict[str, str] | None = None,
               secrets: dict[str, str] | None = None, trust: str = "untrusted") -> str:
        planned = plan({".gitlab-ci.yml": yaml_text}, PipelineInputs(trigger="api", variables=variables or {}))
        assert isinstance(planned, Plan), planned
        engine = make_engine(self.db_url)
        try:
            with session_scope(engine) as s:
                kwargs: dict[str, Any] = {"secrets": secrets} if secrets else {}
                run = create_run(s, planned, trust=trust, source="api",  # type: ignore[arg-type]
                                 variables=variables or {}, now=dt.datetime.now(dt.UTC), pipeline=yaml_text,
                                 **kwargs)
                run_id = run.run.id
            with session_scope(engine) as s:
                ready = queued_job_ids(s, run_id)
            app = self.celery()
            for job_id in ready:
                app.send_task(TASK_RUN_JOB, args=[job_id], queue=QUEUE)
            with session_scope(engine) as s:
                mark_published(s, ready, dt.datetime.now(dt.UTC))
        finally:
            engine.dispose()
        return run_id

    def wait(self, run_id: str, timeout: float = 90) -> str:
        engine = make_engine(self.db_url)
        try:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                with session_scope(engine) as s:
                    status = str(run_status(s, run_id))
                if status not in ("created", "running"):
                    return status
                time.sleep(0.1)
            raise AssertionError(f"run {run_id} still {status} after {timeout}s; jobs: {self.jobs(run_id)}")
        finally:
            engine.dispose()

    def jobs(self, run_id: str) -> dict[str, Job]:
        engine = make_engine(self.db_url)
        try:
            with session_scope(engine) as s:
                rows = s.exec(select(Job).where(Job.run_id == run_id)).all()
                for row in rows:
                    s.expunge(row)
                return {row.name: row for row in rows}
        finally:
            engine.dispose()

    def attempts(self, job_id: str) -> list[JobAttempt]:
        engine = make_engine(self.db_url)
        try:
            with session_scope(engine) as s:
                rows = list(s.exec(select(JobAttempt).where(JobAttempt.job_id == job_id)
                                   .order_by(JobAttempt.attempt)).all())
                for row in rows:
                    s.expunge(row)
                return rows
        finally:
            engine.dispose()

    def run_row(self, run_id: str) -> Run:
        engine = make_engine(self.db_url)
        try:
            with session_scope(engine) as s:
                row = s.get(Run, run_id)
                assert row is not None
                s.expunge(row)
                return row
        finally:
            engine.dispose()


@pytest.fixture()
def service(db_url: str, redis: RedisServer, tmp_path: Path) -> Iterator[Service]:
    migrate(db_url)
    svc = Service(db_url=db_url, redis=redis, tmp=tmp_path)
    try:
        yield svc
    finally:
        svc.stop_workers()
        for log in sorted(tmp_path.glob("worker-*.log")):
            text = log.read_text(errors="replace")
            if "Traceback" in text:
                print(f"--- {log.name}\n{text[-4000:]}")
    assert leftovers(Settings(state_dir=TEST_STATE, run_dir=TEST_RUN)) == []


def wait_for_api(base: str, proc: subprocess.Popen[bytes], timeout_s: float = 30) -> None:
    """Return once the API process ``proc`` answers ``/healthz`` at ``base`` with 200; fail if it
    exits first or does not come up in ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert proc.poll() is None, "the API exited at start"
        time.sleep(0.05)
    raise AssertionError("the API did not come up")
