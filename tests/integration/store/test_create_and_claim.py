"""create_run and the claim compare-and-set."""

from __future__ import annotations

import threading

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import select

from pipelines.store.db import session_scope
from pipelines.store.models import Job, Outbox, Run
from pipelines.store.outbox import pending_outbox
from pipelines.store.reads import queued_job_ids
from pipelines.store.spec import job_from_spec
from pipelines.store.transitions import claim_job, create_run
from tests.integration.store.conftest import T0, at, jobs, planned, run_job, start_run

PIPELINE = """
stages: [build, test, deploy]
build: {stage: build, script: [make]}
lint: {stage: test, needs: [], script: [ruff]}
test: {stage: test, script: [pytest], timeout: 10m}
deploy: {stage: deploy, script: [ship], when: manual}
"""


def test_create_run_queues_jobs_with_no_unmet_needs(engine: Engine) -> None:
    """Jobs that wait for nothing are queued; the rest stay created; the run is running."""
    run_id = start_run(engine, PIPELINE)
    got = {name: job.status for name, job in jobs(engine, run_id).items()}
    assert got == {"build": "queued", "lint": "queued", "test": "created", "deploy": "created"}
    with session_scope(engine) as session:
        run = session.get(Run, run_id)
        assert run is not None and run.status == "running"


def test_create_run_writes_an_outbox_row_per_queued_job(engine: Engine) -> None:
    """Every queued job has an unpublished outbox row, and no other job has one."""
    run_id = start_run(engine, PIPELINE)
    with session_scope(engine) as session:
        assert sorted(pending_outbox(session)) == sorted(queued_job_ids(session, run_id))


def test_outbox_rows_roll_back_with_the_run(engine: Engine) -> None:
    """The outbox is written in the run's transaction: a rollback leaves neither behind."""
    with pytest.raises(RuntimeError), session_scope(engine) as session:
        create_run(session, planned(PIPELINE), trust="trusted", source="cli", variables={}, now=T0)
        assert pending_outbox(session)
        raise RuntimeError("crash before commit")
    with session_scope(engine) as session:
        assert session.exec(select(Run)).all() == []
        assert session.exec(select(Outbox)).all() == []


def test_job_spec_rebuilds_the_planned_job(engine: Engine) -> None:
    """A worker can rebuild the concrete planned job from the stored spec."""
    run_id = start_run(engine, PIPELINE)
    stored = jobs(engine, run_id)["test"]
    assert job_from_spec(stored.spec) == planned(PIPELINE).job("test")
    assert stored.needs == ["build"]


def test_manual_job_waits_as_manual_once_its_needs_are_met(engine: Engine) -> None:
    """A `when: manual` job becomes `manual`, not queued, when its predecessors succeed."""
    run_id = start_run(engine, PIPELINE)
    run_job(engine, run_id, "build")
    run_job(engine, run_id, "lint")
    run_job(engine, run_id, "test")
    assert jobs(engine, run_id)["deploy"].status == "manual"


def test_claim_makes_the_job_running_with_a_lease(engine: Engine) -> None:
    """A claim sets running, attempt 1, the owner, the lease and a timeout deadline."""
    run_id = start_run(
        engine,
        PIPELINE.replace("build: {stage: build, script: [make]}", "build: {stage: build, script: [make], timeout: 1m}"),
    )
    job_id = jobs(engine, run_id)["build"].id
    with session_scope(engine) as session:
        job = claim_job(session, job_id, "w1", at(0), lease_s=30)
        assert job is not None
        assert (job.status, job.attempt, job.lease_owner) == ("running", 1, "w1")
        assert job.lease_expires_at == at(30)
        assert job.deadline_at == at(60 + 60)


def test_second_claim_of_a_claimed_job_does_nothing(engine: Engine) -> None:
    """A duplicate message: the second claim returns None and changes nothing."""
    run_id = start_run(engine, PIPELINE)
    job_id = jobs(engine, run_id)["build"].id
    with session_scope(engine) as session:
        assert claim_job(session, job_id, "w1", at(0), lease_s=30) is not None
    with session_scope(engine) as session:
        assert claim_job(session, job_id, "w2", at(1), lease_s=30) is None
    job = jobs(engine, run_id)["build"]
    assert (job.lease_owner, job.attempt) == ("w1", 1)


def test_claim_of_a_finished_or_waiting_job_does_nothing(engine: Engine) -> None:
    """A stale message for a finished job, or one for a job not yet queued, claims nothing."""
    run_id = start_run(engine, PIPELINE)
    run_job(engine, run_id, "lint")
    by_name = jobs(engine, run_id)
    with session_scope(engine) as session:
        assert claim_job(session, by_name["lint"].id, "w2", at(5), lease_s=30) is None
        assert claim_job(session, by_name["deploy"].id, "w2", at(5), lease_s=30) is None


def test_racing_claimers_exactly_one_wins(engine: Engine) -> None:
    """Eight workers claim the same job at once in their own sessions: exactly one wins."""
    run_id = start_run(engine, PIPELINE)
    job_id = jobs(engine, run_id)["build"].id
    barrier = threading.Barrier(8)
    winners: list[str] = []
    errors: list[BaseException] = []

    def claimer(worker: str) -> None:
        try:
            barrier.wait()
            with session_scope(engine) as session:
                if claim_job(session, job_id, worker, at(0), lease_s=30) is not None:
                    winners.append(worker)
        except BaseException as exc:  # reported below; a thread cannot fail the test itself
            errors.append(exc)

    threads = [threading.Thread(target=claimer, args=(f"w{i}",)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    assert len(winners) == 1
    job = jobs(engine, run_id)["build"]
    assert (job.lease_owner, job.attempt) == (winners[0], 1)


def test_untrusted_run_is_stored_with_its_trust_and_source(engine: Engine) -> None:
    """A run carries its trust level and where it came from."""
    run_id = start_run(engine, PIPELINE, trust="untrusted")
    with session_scope(engine) as session:
        run = session.get(Run, run_id)
        assert run is not None and (run.trust, run.source) == ("untrusted", "api")
        assert len(session.exec(select(Job).where(Job.run_id == run_id)).all()) == 4
