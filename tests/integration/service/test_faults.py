"""The fault run: runs flow through the real API into real workers while a busy worker is SIGKILLed,
Redis restarts empty and then with persistence, and the API is SIGKILLed — on SQLite and PostgreSQL.

Bounded in count and time (about 40 runs of two jobs, one fault every few seconds). Afterwards every
run the API accepted is terminal and succeeded (the killed worker's job is retried), no job ran
twice outside a retry, nothing is left on the host, and the surviving worker is still alive."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.integration.api.conftest import TOKENS, TRUSTED_TOKEN
from tests.integration.redis_server import free_port
from tests.integration.service.conftest import REPO, Service, wait_for_api

PIPELINE = """
build:
  script: ['sleep 0.$((RANDOM % 5))']
  retry: {max: 2, when: [runner_system_failure]}
test:
  needs: [build]
  script: ['sleep 0.2']
  retry: {max: 2, when: [runner_system_failure]}
"""
TERMINAL = {"succeeded", "failed", "cancelled", "error"}


class Api:
    """``python -m api`` as a process that can be SIGKILLed and started again on the same port."""

    def __init__(self, service: Service) -> None:
        self.service = service
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> None:
        env = {**self.service.env(), "SANDPIT_API_TOKENS": TOKENS}
        with open(self.service.tmp / f"api-{self.starts}.log", "wb") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "api", "--port", str(self.port),
                                          "--log-level", "warning"], env=env, cwd=REPO, stdout=log,
                                         stderr=subprocess.STDOUT)
        self.starts += 1
        wait_for_api(self.base, self.proc)

    def kill(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class Submitter(threading.Thread):
    """POSTs a run every ``period`` seconds until stopped; remembers what the API accepted."""

    def __init__(self, api: Api, period: float = 0.4) -> None:
        super().__init__(daemon=True)
        self.api, self.period = api, period
        self.accepted: list[str] = []
        self.unanswered = 0  # the API died mid-request: the run may or may not exist
        self.refused: list[tuple[int, str]] = []
        self.halt = threading.Event()

    def run(self) -> None:
        headers = {"Content-Type": "text/yaml", "Authorization": f"Bearer {TRUSTED_TOKEN}"}
        while not self.halt.wait(self.period):
            try:
                response = httpx.post(f"{self.api.base}/api/v1/runs", content=PIPELINE, headers=headers, timeout=10)
            except httpx.TransportError:
                self.unanswered += 1
                continue
            if response.status_code == 201:
                self.accepted.append(response.json()["id"])
            elif response.status_code != 503:  # 503: the broker or database is away for a moment
                self.refused.append((response.status_code, response.text[:300]))


@pytest.mark.slow
@pytest.mark.parametrize("db_url", ["sqlite", "postgres"], indirect=True)
def test_runs_survive_worker_kill_redis_restarts_and_api_kill(service: Service, tmp_path: Path):
    """Every accepted run ends succeeded; only the killed worker's jobs have a second attempt."""
    api = Api(service)
    api.start()
    doomed = service.start_worker(concurrency=3)
    submitter = Submitter(api)
    submitter.start()
    try:
        time.sleep(3)
        os.kill(doomed.pid, signal.SIGKILL)  # busy: jobs of several runs are running
        doomed.wait()
        survivor = service.start_worker(concurrency=3)
        time.sleep(3)
        service.redis.restart()  # empty: queued messages are gone; the outbox and sweeper resend
        time.sleep(3)
        service.redis.persistent = True
        service.redis.restart()  # with an append-only file: queued messages come back
        time.sleep(3)
        api.kill()
        time.sleep(0.5)
        api.start()
        time.sleep(3)
    finally:
        submitter.halt.set()
        submitter.join(timeout=30)
    try:
        assert not submitter.refused, submitter.refused
        assert len(submitter.accepted) >= 20, (len(submitter.accepted), submitter.unanswered)
        statuses = {run_id: service.wait(run_id, timeout=150) for run_id in submitter.accepted}
        assert set(statuses.values()) == {"succeeded"}, service.failures(submitter.accepted)
        assert survivor.poll() is None, "the surviving worker died"
        for run_id in submitter.accepted:
            for job in service.jobs(run_id).values():
                attempts = service.attempts(job.id)
                assert job.status == "succeeded" and len(attempts) == job.attempt
                # a second attempt only ever follows the SIGKILLed worker's lost one
                assert all(a.reason == "worker_lost" for a in attempts[:-1]), [a.reason for a in attempts]
    finally:
        api.stop()
        for log in sorted(tmp_path.glob("api-*.log")):
            text = log.read_text(errors="replace")
            if "Traceback" in text:
                print(f"--- {log.name}\n{text[-3000:]}")
