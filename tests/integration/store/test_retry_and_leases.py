"""Retry rules, attempt history, stale reports, lease renewal and expiry."""

from __future__ import annotations

from sqlalchemy.engine import Engine
from sqlmodel import col, select

from pipelines.store.db import session_scope
from pipelines.store.models import JobAttempt
from pipelines.store.outbox import pending_outbox
from pipelines.store.transitions import claim_job, expire_leases, finish_job, renew_lease
from tests.integration.store.conftest import at, jobs, record, start_run, statuses

RETRY = "t: {script: [pytest], retry: {max: 2, when: script_failure, exit_codes: [3]}}\n"


def _attempts(engine: Engine, job_id: str) -> list[tuple[int, str, str | None, int | None, bool]]:
    with session_scope(engine) as session:
        rows = session.exec(
            select(JobAttempt).where(JobAttempt.job_id == job_id).order_by(col(JobAttempt.attempt))
        ).all()
        return [(a.attempt, a.status, a.reason, a.exit_code, a.retried) for a in rows]


def _claim(engine: Engine, job_id: str, now: float, worker: str = "w1") -> int:
    with session_scope(engine) as session:
        job = claim_job(session, job_id, worker, at(now), lease_s=30)
        assert job is not None
        return job.attempt


def test_matching_exit_code_is_retried_and_every_attempt_recorded(engine: Engine) -> None:
    """Exit 3 (listed) is retried: queued again with an outbox row; exit 1 then fails it."""
    run_id = start_run(engine, RETRY)
    job_id = jobs(engine, run_id)["t"].id
    attempt = _claim(engine, job_id, 0)
    with session_scope(engine) as session:
        assert finish_job(session, job_id, attempt, record("failed", 3), at(1)) == [job_id]
        assert job_id in pending_outbox(session)
    assert statuses(engine, run_id)["t"] == ("queued", None)
    attempt = _claim(engine, job_id, 2)
    assert attempt == 2
    with session_scope(engine) as session:
        assert finish_job(session, job_id, attempt, record("failed", 1), at(3)) == []
    assert statuses(engine, run_id)["t"] == ("failed", "exit_code")
    assert _attempts(engine, job_id) == [
        (1, "failed", "exit_code", 3, True),
        (2, "failed", "exit_code", 1, False),
    ]


def test_retries_stop_at_max(engine: Engine) -> None:
    """retry max 2 means three attempts at most."""
    run_id = start_run(engine, RETRY)
    job_id = jobs(engine, run_id)["t"].id
    for n in range(3):
        attempt = _claim(engine, job_id, n * 10)
        with session_scope(engine) as session:
            finish_job(session, job_id, attempt, record("failed", 3), at(n * 10 + 1))
    assert statuses(engine, run_id)["t"] == ("failed", "exit_code")
    assert [a[4] for a in _attempts(engine, job_id)] == [True, True, False]


def test_stale_attempt_report_is_ignored(engine: Engine) -> None:
    """A report for attempt 1 arriving after attempt 2 started changes nothing."""
    run_id = start_run(engine, RETRY)
    job_id = jobs(engine, run_id)["t"].id
    _claim(engine, job_id, 0)
    with session_scope(engine) as session:
        finish_job(session, job_id, 1, record("failed", 3), at(1))
    _claim(engine, job_id, 2)
    with session_scope(engine) as session:
        assert finish_job(session, job_id, 1, record("succeeded"), at(3)) == []
    job = jobs(engine, run_id)["t"]
    assert (job.status, job.attempt) == ("running", 2)
    assert len(_attempts(engine, job_id)) == 1


def test_duplicate_report_is_ignored(engine: Engine) -> None:
    """The same attempt reported twice is recorded once."""
    run_id = start_run(engine, "t: {script: [x]}\n")
    job_id = jobs(engine, run_id)["t"].id
    attempt = _claim(engine, job_id, 0)
    for _ in range(2):
        with session_scope(engine) as session:
            finish_job(session, job_id, attempt, record(), at(1))
    assert len(_attempts(engine, job_id)) == 1


def test_renewed_lease_survives_expiry_and_reports_no_cancel(engine: Engine) -> None:
    """A worker that renews keeps its job; expire_leases leaves it alone."""
    run_id = start_run(engine, "t: {script: [x]}\n")
    job_id = jobs(engine, run_id)["t"].id
    _claim(engine, job_id, 0)
    with session_scope(engine) as session:
        lease = renew_lease(session, job_id, "w1", 1, at(25), lease_s=30)
        assert (lease.held, lease.cancel_requested) == (True, False)
    with session_scope(engine) as session:
        assert expire_leases(session, at(40)) == []
    assert statuses(engine, run_id)["t"] == ("running", None)


def test_renew_by_another_worker_is_refused(engine: Engine) -> None:
    """Only the claiming worker, for its own attempt, can renew the lease."""
    run_id = start_run(engine, "t: {script: [x]}\n")
    job_id = jobs(engine, run_id)["t"].id
    _claim(engine, job_id, 0)
    with session_scope(engine) as session:
        assert not renew_lease(session, job_id, "w2", 1, at(5), lease_s=30).held
        assert not renew_lease(session, job_id, "w1", 2, at(5), lease_s=30).held


def test_expired_lease_is_retried_then_fails_worker_lost(engine: Engine) -> None:
    """A lost worker's job is retried when retry allows, then ends error/worker_lost."""
    run_id = start_run(engine, "t: {script: [x], retry: 1}\nafter: {stage: deploy, script: [y]}\n")
    job_id = jobs(engine, run_id)["t"].id
    _claim(engine, job_id, 0)
    with session_scope(engine) as session:
        assert expire_leases(session, at(29)) == []
        assert expire_leases(session, at(31)) == [job_id]
    assert statuses(engine, run_id)["t"] == ("queued", None)
    _claim(engine, job_id, 40, worker="w2")
    with session_scope(engine) as session:
        assert expire_leases(session, at(100)) == []
    assert statuses(engine, run_id) == {
        "t": ("error", "worker_lost"),
        "after": ("skipped", "dependency_failed"),
    }
    assert [(a[0], a[1], a[2], a[4]) for a in _attempts(engine, job_id)] == [
        (1, "error", "worker_lost", True),
        (2, "error", "worker_lost", False),
    ]
    with session_scope(engine) as session:  # the dead worker's late report is stale
        assert finish_job(session, job_id, 2, record(), at(101)) == []


def test_job_past_its_timeout_is_failed_even_with_a_live_lease(engine: Engine) -> None:
    """The deadline backstop: timeout + grace passed fails the job with reason timeout."""
    run_id = start_run(engine, "t: {script: [sleep 1000], timeout: 1m}\n")
    job_id = jobs(engine, run_id)["t"].id
    _claim(engine, job_id, 0)
    with session_scope(engine) as session:
        renew_lease(session, job_id, "w1", 1, at(110), lease_s=30)
    with session_scope(engine) as session:
        assert expire_leases(session, at(119)) == []
        expire_leases(session, at(121))
    assert statuses(engine, run_id)["t"] == ("failed", "timeout")
