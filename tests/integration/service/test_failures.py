"""Nothing is lost: a worker SIGKILLed mid-job, a Redis restart with jobs queued, duplicate messages,
and secrets that never reach a stored or streamed log."""

from __future__ import annotations

import datetime as dt
import os
import signal
import time
from pathlib import Path

import pytest
import redis as redis_py

from pipelines.names import QUEUE, TASK_RUN_JOB, log_stream_key
from pipelines.store.db import make_engine, session_scope
from pipelines.store.reads import queued_job_ids
from pipelines.store.transitions import create_run
from tests.integration.service.conftest import Service
from worker.sandbox.reaper import leftovers

pytestmark = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)


def wait_for(predicate, timeout: float = 30, what: str = "condition"):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_sigkilled_worker_job_is_retried_or_lost_and_nothing_leaks(service: Service):
    """The job of a SIGKILLed worker is settled (retried, or error/worker_lost) and its container reaped."""
    doomed = service.start_worker()
    run_id = service.submit("victim:\n  script: ['sleep 2']\n  retry: {max: 1, when: [runner_system_failure]}\n")
    wait_for(lambda: service.jobs(run_id)["victim"].status == "running", what="the job to start")
    time.sleep(0.3)
    os.kill(doomed.pid, signal.SIGKILL)
    doomed.wait()
    started = time.monotonic()
    service.start_worker()  # reaps what the dead worker left, then takes the retried job
    status = service.wait(run_id, timeout=60)
    assert time.monotonic() - started < 60
    job = service.jobs(run_id)["victim"]
    attempts = service.attempts(job.id)
    assert attempts[0].reason == "worker_lost"
    assert (status, job.status, job.attempt) == ("succeeded", "succeeded", 2) or job.reason == "worker_lost"


def test_redis_restart_with_queued_jobs_loses_nothing(service: Service):
    """20 jobs are queued, Redis restarts empty before any worker runs: every job still runs exactly once."""
    run_id = service.submit("\n".join(f"j{i}:\n  script: [echo ok]" for i in range(20)))
    service.redis.restart()  # the published messages are gone with it
    assert redis_py.Redis.from_url(service.redis.url).llen(QUEUE) == 0
    service.start_worker(concurrency=4)
    assert service.wait(run_id, timeout=90) == "succeeded"
    for job in service.jobs(run_id).values():
        assert job.attempt == 1 and len(service.attempts(job.id)) == 1


def test_duplicate_message_runs_once(service: Service):
    run_id = service.submit("once:\n  script: ['echo ran']\n")
    job_id = service.jobs(run_id)["once"].id
    app = service.celery()
    for _ in range(3):
        app.send_task(TASK_RUN_JOB, args=[job_id], queue=QUEUE)
    app.send_task(TASK_RUN_JOB, args=["no-such-job"], queue=QUEUE)
    app.send_task(TASK_RUN_JOB, args=[{"forged": True}], queue=QUEUE)
    service.start_worker(concurrency=4)
    assert service.wait(run_id) == "succeeded"
    time.sleep(1.0)  # give the duplicates time to be consumed
    assert len(service.attempts(job_id)) == 1
    assert service.jobs(run_id)["once"].attempt == 1


def test_secret_never_appears_in_stored_or_streamed_log(service: Service):
    secret = "s3cr3t-t0ken-value"
    service.start_worker()
    engine = make_engine(service.db_url)
    from pipelines.language.model import PipelineInputs, Plan
    from pipelines.language.planner import plan

    planned = plan({".gitlab-ci.yml": "leak:\n  script:\n    - echo \"$API_TOKEN\"\n"
                    "    - printf '%s' \"$API_TOKEN\" | base64\n    - echo done\n"},
                   PipelineInputs(trigger="api"))
    assert isinstance(planned, Plan)
    with session_scope(engine) as s:
        run = create_run(s, planned, trust="untrusted", source="api", variables={}, now=dt.datetime.now(dt.UTC),
                         secrets={"API_TOKEN": secret})
        run_id = run.run.id
    with session_scope(engine) as s:
        ready = queued_job_ids(s, run_id)
    engine.dispose()
    service.celery().send_task(TASK_RUN_JOB, args=ready, queue=QUEUE)
    assert service.wait(run_id) == "succeeded"
    job = service.jobs(run_id)["leak"]
    stored = Path(job.log_path).read_text()  # type: ignore[arg-type]
    streamed = b"".join(v.get(b"d", b"") for _id, v in
                        redis_py.Redis.from_url(service.redis.url).xrange(log_stream_key(job.id))).decode()
    for text in (stored, streamed):
        assert "[MASKED]" in text and "done" in text
        assert secret not in text
        assert "czNjcjN0LXQwa2VuLXZhbHVl" not in text  # base64 of the secret


def test_worker_start_reaps_only_dead_jobs(service: Service):
    from tests.sandbox.conftest import test_settings

    assert leftovers(test_settings()) == []
