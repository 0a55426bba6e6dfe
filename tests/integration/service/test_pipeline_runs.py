"""Pipelines through the real service: Redis, worker processes, SQLite and PostgreSQL, containers."""

from __future__ import annotations

import time

import pytest

from tests.integration.service.conftest import Service

PIPELINE = """
stages: [build, test, report]
build:
  stage: build
  image: debian
  script:
    - mkdir -p dist && echo built > dist/app.txt
  artifacts: {paths: [dist/]}
test:
  stage: test
  image: debian
  needs: [build]
  parallel:
    matrix:
      - FLAVOUR: [a, b]
  script:
    - test "$(cat dist/app.txt)" = built
    - echo "$FLAVOUR" > "dist/$FLAVOUR.txt"
  artifacts: {paths: ["dist/$FLAVOUR.txt"]}
report:
  stage: report
  image: debian
  script:
    - cat dist/a.txt dist/b.txt dist/app.txt
"""


def test_multi_stage_pipeline_with_needs_matrix_and_artifacts(service: Service):
    """Artifacts flow build → test (matrix) → report; every job succeeds once."""
    service.start_worker()
    run_id = service.submit(PIPELINE)
    assert service.wait(run_id) == "succeeded"
    jobs = service.jobs(run_id)
    assert set(jobs) == {"build", "test: [a]", "test: [b]", "report"}
    assert all(j.status == "succeeded" and j.attempt == 1 for j in jobs.values())
    assert [a["path"] for a in jobs["test: [a]"].result["artifacts"]] == ["dist/a.txt"]


def test_two_workers_share_the_queue_and_no_job_runs_twice(service: Service):
    service.start_worker(concurrency=2)
    service.start_worker(concurrency=2)
    jobs_yaml = "\n".join(f"j{i}:\n  script: [sleep 0.2]" for i in range(12))
    run_id = service.submit(jobs_yaml)
    ended = service.wait(run_id)
    jobs = service.jobs(run_id)
    assert ended == "succeeded", {name: (j.status, (j.result or {}).get("reason"), (j.result or {}).get("message"))
                                  for name, j in jobs.items()}
    assert len(jobs) == 12
    for job in jobs.values():
        assert job.attempt == 1 and len(service.attempts(job.id)) == 1
    assert len({j.lease_owner for j in jobs.values()}) >= 1


FAILING = """
stages: [one, two, three]
breaks:
  stage: one
  script: [exit 4]
may-fail:
  stage: one
  allow_failure: true
  script: [exit 9]
after-break:
  stage: two
  script: [echo never]
cleanup:
  stage: three
  when: always
  script: [echo cleaning]
on-failure:
  stage: three
  when: on_failure
  script: [echo noticed]
"""


def test_failure_skips_dependents_and_runs_always_and_on_failure(service: Service):
    service.start_worker()
    run_id = service.submit(FAILING)
    assert service.wait(run_id) == "failed"
    jobs = service.jobs(run_id)
    assert (jobs["breaks"].status, jobs["breaks"].exit_code) == ("failed", 4)
    assert jobs["may-fail"].status == "failed" and jobs["may-fail"].allow_failure
    assert (jobs["after-break"].status, jobs["after-break"].reason) == ("skipped", "dependency_failed")
    assert jobs["cleanup"].status == "succeeded"
    assert jobs["on-failure"].status == "succeeded"


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_retry_by_exit_code_records_attempts(service: Service):
    service.start_worker()
    run_id = service.submit("""
flaky:
  retry: {max: 2, exit_codes: [3]}
  script: [exit 3]
other:
  retry: {max: 2, exit_codes: [3]}
  script: [exit 5]
""")
    assert service.wait(run_id) == "failed"
    jobs = service.jobs(run_id)
    assert jobs["flaky"].attempt == 3 and len(service.attempts(jobs["flaky"].id)) == 3
    assert jobs["other"].attempt == 1


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_timeout(service: Service):
    service.start_worker()
    run_id = service.submit("slow:\n  timeout: 1s\n  script: [sleep 30]\n")
    assert service.wait(run_id) == "failed"
    job = service.jobs(run_id)["slow"]
    assert (job.status, job.reason) == ("failed", "timeout")


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_cancel_of_a_running_job(service: Service):
    """A running job stops within about a second (plus the grace period) after cancel, even with a
    long lease: cancel requests are looked for twice a second."""
    import datetime as dt

    from pipelines.store.db import make_engine, session_scope
    from pipelines.store.transitions import cancel_run

    service.start_worker(SANDPIT_LEASE_S="60")
    run_id = service.submit("long:\n  script: [sleep 60]\nnext:\n  stage: deploy\n  script: [echo no]\n")
    deadline = time.monotonic() + 30
    while service.jobs(run_id)["long"].status != "running":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    time.sleep(0.3)
    engine = make_engine(service.db_url)
    with session_scope(engine) as s:
        cancel_run(s, run_id, dt.datetime.now(dt.UTC))
    engine.dispose()
    cancelled_at = time.monotonic()
    assert service.wait(run_id, timeout=20) == "cancelled"
    while service.jobs(run_id)["long"].status == "running":
        assert time.monotonic() - cancelled_at < 1 + 2 + 1  # 1 s + the 2 s grace + slack
        time.sleep(0.05)
    jobs = service.jobs(run_id)
    assert jobs["long"].status == "cancelled"
    assert jobs["next"].status in ("cancelled", "skipped", "created")


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_plain_celery_worker_form(service: Service):
    """`celery -A worker.service.celery_app worker -P threads` is the same worker as `sandpit worker`."""
    service.start_worker(plain_celery=True)
    run_id = service.submit("hello:\n  script: ['echo hi']\n")
    assert service.wait(run_id) == "succeeded"
