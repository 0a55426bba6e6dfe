"""Cancelling runs and jobs."""

from __future__ import annotations

from sqlalchemy.engine import Engine

from pipelines.store.db import session_scope
from pipelines.store.reads import run_status
from pipelines.store.transitions import cancel_job, cancel_run, claim_job, finish_job, renew_lease
from tests.integration.store.conftest import at, jobs, record, start_run, statuses

PIPELINE = """
stages: [build, test]
a: {stage: build, script: [x]}
b: {stage: build, script: [y], retry: 2}
c: {stage: test, script: [z]}
"""


def test_cancel_run_cancels_waiting_jobs_and_flags_running_ones(engine: Engine) -> None:
    """Queued and created jobs become cancelled; a running job gets cancel_requested."""
    run_id = start_run(engine, PIPELINE)
    by_name = jobs(engine, run_id)
    with session_scope(engine) as session:
        assert claim_job(session, by_name["b"].id, "w1", at(0), lease_s=30) is not None
    with session_scope(engine) as session:
        assert cancel_run(session, run_id, at(1)).status == "cancelled"
    got = jobs(engine, run_id)
    assert (got["a"].status, got["a"].reason) == ("cancelled", "cancelled")
    assert got["c"].status == "cancelled"
    assert (got["b"].status, got["b"].cancel_requested) == ("running", True)


def test_queued_job_of_a_cancelled_run_never_starts(engine: Engine) -> None:
    """A message for a job of a cancelled run claims nothing."""
    run_id = start_run(engine, PIPELINE)
    job_id = jobs(engine, run_id)["a"].id
    with session_scope(engine) as session:
        cancel_run(session, run_id, at(1))
    with session_scope(engine) as session:
        assert claim_job(session, job_id, "w1", at(2), lease_s=30) is None


def test_running_job_sees_the_cancel_and_is_not_retried(engine: Engine) -> None:
    """The worker learns of the cancel on renewal; its failure report ends cancelled, no retry."""
    run_id = start_run(engine, PIPELINE)
    job_id = jobs(engine, run_id)["b"].id
    with session_scope(engine) as session:
        claim_job(session, job_id, "w1", at(0), lease_s=30)
    with session_scope(engine) as session:
        cancel_run(session, run_id, at(1))
    with session_scope(engine) as session:
        assert renew_lease(session, job_id, "w1", 1, at(2), lease_s=30).cancel_requested
    with session_scope(engine) as session:
        assert finish_job(session, job_id, 1, record("failed", None, reason="cancelled", signal=15), at(3)) == []
        assert run_status(session, run_id) == "cancelled"
    assert statuses(engine, run_id)["b"] == ("cancelled", "cancelled")


def test_cancel_waiting_job_skips_its_dependents(engine: Engine) -> None:
    """Cancelling a queued job cancels it at once and its dependents are skipped."""
    run_id = start_run(engine, PIPELINE)
    by_name = jobs(engine, run_id)
    with session_scope(engine) as session:
        assert cancel_job(session, by_name["a"].id, at(1)) == []
    with session_scope(engine) as session:
        claim_job(session, by_name["b"].id, "w1", at(2), lease_s=30)
    with session_scope(engine) as session:
        finish_job(session, by_name["b"].id, 1, record(), at(3))
    got = statuses(engine, run_id)
    assert got["a"] == ("cancelled", "cancelled")
    assert got["c"] == ("skipped", "dependency_failed")
    with session_scope(engine) as session:
        assert run_status(session, run_id) == "cancelled"


def test_cancel_running_job_only_requests_it(engine: Engine) -> None:
    """A running job is not changed by cancel_job except for the flag its worker polls."""
    run_id = start_run(engine, PIPELINE)
    job_id = jobs(engine, run_id)["a"].id
    with session_scope(engine) as session:
        claim_job(session, job_id, "w1", at(0), lease_s=30)
    with session_scope(engine) as session:
        assert cancel_job(session, job_id, at(1)) == []
    job = jobs(engine, run_id)["a"]
    assert (job.status, job.cancel_requested) == ("running", True)
