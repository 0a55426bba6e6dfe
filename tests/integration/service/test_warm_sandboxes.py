"""Warm sandboxes through the real service (worker/sandbox/warm.py): once a job has run, the worker
keeps a started sandbox for the next job like it, that job runs in it, and a worker that stops
leaves none behind."""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable
from pathlib import Path

from tests.integration.service.conftest import Service
from tests.sandbox.conftest import TEST_STATE

JOB = """
one:
  image: debian
  script:
    - echo "job {n} $CI_JOB_ID"
    - cat /.warm-mark 2>/dev/null || echo no-mark
"""


def waiting() -> set[Path]:
    jobs = TEST_STATE / "jobs"
    return {d for d in jobs.iterdir() if d.name.startswith("warm-")} if jobs.is_dir() else set()


def until(found: Callable[[], set[Path]], timeout_s: float = 20) -> set[Path]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        got = found()
        if got:
            return got
        time.sleep(0.05)
    raise AssertionError("nothing appeared")


def output(service: Service, run_id: str) -> str:
    job = service.jobs(run_id)["one"]
    assert job.log_path
    return "".join(json.loads(line).get("d", "") for line in Path(job.log_path).read_text().splitlines())


def test_the_next_job_starts_in_the_sandbox_the_job_before_left(service: Service):
    service.start_worker(concurrency=1)
    first = service.submit(JOB.format(n=1), secrets={"TOKEN": "first-run-secret-value"})
    assert service.wait(first) == "succeeded"
    assert "job 1" in output(service, first) and "no-mark" in output(service, first)
    (sandbox,) = until(waiting)
    # a token only the host put there: the next job reads it only if it runs in this very sandbox
    token = secrets.token_hex(8)
    (sandbox / "rootfs" / ".warm-mark").write_text(token)
    second = service.submit(JOB.format(n=2))
    assert service.wait(second) == "succeeded"
    text = output(service, second)
    assert "job 2" in text and token in text and service.jobs(second)["one"].id in text
    assert "first-run-secret-value" not in text
    assert sandbox not in until(lambda: waiting() - {sandbox})  # taken, torn down with its job, and another made


def test_a_worker_that_stops_leaves_no_warm_sandbox(service: Service):
    worker = service.start_worker(concurrency=2)
    run_id = service.submit(JOB.format(n=1))
    assert service.wait(run_id) == "succeeded"
    until(waiting)
    service.stop_workers()
    assert worker.returncode == 0
    assert waiting() == set()  # and the fixture finds no leftover of any kind
