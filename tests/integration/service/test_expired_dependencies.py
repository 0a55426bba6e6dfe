"""A job whose dependency's artifacts have expired, through a real worker, Redis, containers and
its sweeper: as GitLab (``missing_dependency_failure``), it fails before it starts and says which
job's artifacts are gone; a job that takes no artifacts from it (``dependencies: []``) runs."""

from __future__ import annotations

import datetime as dt
import time

import pytest

from pipelines.names import QUEUE, TASK_RUN_JOB
from pipelines.store.db import make_engine, session_scope
from pipelines.store.reads import artifacts_of
from pipelines.store.transitions import play_manual_job
from tests.integration.service.conftest import Service

PIPELINE = """
stages: [build, deploy]
build:
  stage: build
  script: [mkdir -p dist, echo built > dist/app]
  artifacts: {paths: [dist/], expire_in: 1 second}
deploy:
  stage: deploy
  when: manual
  dependencies: [build]
  retry: {max: 2, when: always}
  script: [cat dist/app]
notes:
  stage: deploy
  when: manual
  dependencies: []
  script: [echo no artifacts needed]
"""


def _until(what: str, check: object, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"{what} did not happen in {timeout}s"
        time.sleep(0.1)


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_job_whose_dependencys_artifacts_expired_fails_before_it_starts(service: Service) -> None:
    """``build`` keeps ``dist/app`` for a second; the manual jobs are played once its row is
    gone (the worker's sweeper removed it). ``deploy`` (``dependencies: [build]``) fails
    ``invalid_spec`` with a message naming ``build``, and ran nothing (no log, no exit code);
    ``notes`` (``dependencies: []``) succeeds. (Manual jobs may fail, as in GitLab, so the run
    succeeds.)"""
    service.start_worker(concurrency=2)
    run_id = service.submit(PIPELINE)
    _until("build", lambda: service.jobs(run_id)["build"].status == "succeeded")
    build = service.jobs(run_id)["build"]
    assert [a["path"] for a in build.result["artifacts"]] == ["dist/app"]
    engine = make_engine(service.db_url)
    try:
        def swept() -> bool:
            with session_scope(engine) as session:
                return artifacts_of(session, build.id) == []
        _until("the sweeper removing build's expired artifact", swept)
        jobs = service.jobs(run_id)
        played = []
        for name in ("deploy", "notes"):
            with session_scope(engine) as session:
                played += play_manual_job(session, jobs[name].id, dt.datetime.now(dt.UTC))
    finally:
        engine.dispose()
    app = service.celery()
    for job_id in played:
        app.send_task(TASK_RUN_JOB, args=[job_id], queue=QUEUE)
    final = ("succeeded", "failed", "error", "cancelled")
    _until("the played jobs", lambda: all(service.jobs(run_id)[n].status in final for n in ("deploy", "notes")))
    assert service.wait(run_id) == "succeeded"  # a manual job may fail (allow_failure: true, as GitLab)
    jobs = service.jobs(run_id)
    deploy, notes = jobs["deploy"], jobs["notes"]
    assert (deploy.status, deploy.reason, deploy.exit_code) == ("failed", "invalid_spec", None)
    assert deploy.result["message"] == ("this job depends on jobs whose artifacts expired or were removed: 'build'; "
                                        "retry them, then this job, to make the artifacts again")
    assert not deploy.result.get("log")
    assert deploy.attempt == 1 and len(service.attempts(deploy.id)) == 1
    assert (notes.status, notes.exit_code) == ("succeeded", 0)
