"""A busy worker survives Redis restarts: with and without persistence, many times over.

kombu's Redis transport can raise ``AttributeError: 'NoneType' object has no attribute 'hostname'`` when
a channel of a connection that Celery has already closed restores its unacked messages; the worker
then stopped for good with status 0. Each restart below happens while jobs run, are acked and publish
their dependents."""

from __future__ import annotations

import time

import pytest

from tests.integration.service.conftest import Service

pytestmark = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)

CHAIN = """
stages: [a, b, c]
a:
  stage: a
  parallel: 3
  script: ['sleep 0.$((RANDOM % 7))']
b:
  stage: b
  parallel: 2
  script: ['sleep 0.3']
c:
  stage: c
  script: ['true']
"""


@pytest.mark.slow
@pytest.mark.parametrize("persistence", [False, True], ids=["empty", "appendonly"])
def test_busy_worker_survives_every_redis_restart(service: Service, persistence: bool):
    """Eight Redis restarts while runs flow: the worker is alive after each, and every run finishes."""
    if persistence:
        service.redis.persistent = True
        service.redis.restart()
    worker = service.start_worker(concurrency=4)
    runs: list[str] = []
    for _ in range(8):
        runs += [service.submit(CHAIN) for _ in range(2)]
        time.sleep(0.8)  # jobs are running, acking and publishing their dependents now
        service.redis.restart()
        time.sleep(0.7)
        assert worker.poll() is None, f"worker exited with {worker.returncode}: {service.worker_log(0)[-3000:]}"
    statuses = {run_id: service.wait(run_id, timeout=120) for run_id in runs}
    assert set(statuses.values()) == {"succeeded"}, service.failures(runs)
    assert worker.poll() is None
    for run_id in runs:
        for job in service.jobs(run_id).values():
            assert job.status == "succeeded"
