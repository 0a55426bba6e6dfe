"""finish_job advancing a run: needs, failures, allow_failure, when, concurrent finishes."""

from __future__ import annotations

import threading

from sqlalchemy.engine import Engine

from pipelines.store.db import session_scope
from pipelines.store.models import Run
from pipelines.store.reads import run_status
from pipelines.store.transitions import claim_job, finish_job, play_job
from tests.integration.store.conftest import at, jobs, record, run_job, start_run, statuses

CHAIN = """
stages: [build, test, deploy]
build: {stage: build, script: [make]}
test: {stage: test, script: [pytest]}
deploy: {stage: deploy, script: [ship]}
"""


def _run(engine: Engine, run_id: str) -> Run:
    with session_scope(engine) as session:
        run = session.get(Run, run_id)
        assert run is not None
        return run


def test_success_queues_the_next_stage_and_returns_its_ids(engine: Engine) -> None:
    """finish_job returns exactly the ids it made queued."""
    run_id = start_run(engine, CHAIN)
    newly = run_job(engine, run_id, "build")
    assert newly == [jobs(engine, run_id)["test"].id]
    assert statuses(engine, run_id)["test"] == ("queued", None)


def test_run_succeeds_when_every_job_succeeded(engine: Engine) -> None:
    """The last success makes the run succeeded with a finish time."""
    run_id = start_run(engine, CHAIN)
    for name in ("build", "test", "deploy"):
        run_job(engine, run_id, name)
    run = _run(engine, run_id)
    assert (run.status, run.finished_at is not None) == ("succeeded", True)


def test_failure_skips_every_dependent_with_dependency_failed(engine: Engine) -> None:
    """A failed job's dependents, and theirs, are skipped with reason dependency_failed."""
    run_id = start_run(engine, CHAIN)
    assert run_job(engine, run_id, "build", record("failed", 1)) == []
    assert statuses(engine, run_id) == {
        "build": ("failed", "exit_code"),
        "test": ("skipped", "dependency_failed"),
        "deploy": ("skipped", "dependency_failed"),
    }
    assert _run(engine, run_id).status == "failed"


def test_allowed_failure_counts_as_success(engine: Engine) -> None:
    """An allow_failure job that fails lets its dependents run and the run succeed."""
    run_id = start_run(engine, CHAIN.replace("script: [make]}", "script: [make], allow_failure: true}"))
    run_job(engine, run_id, "build", record("failed", 1))
    run_job(engine, run_id, "test")
    run_job(engine, run_id, "deploy")
    assert _run(engine, run_id).status == "succeeded"


def test_allow_failure_exit_codes_allow_only_those_codes(engine: Engine) -> None:
    """allow_failure: {exit_codes: [3]} allows exit 3 and not exit 1."""
    text = CHAIN.replace("script: [make]}", "script: [make], allow_failure: {exit_codes: [3]}}")
    allowed, refused = start_run(engine, text), start_run(engine, text)
    run_job(engine, allowed, "build", record("failed", 3))
    run_job(engine, refused, "build", record("failed", 1))
    assert statuses(engine, allowed)["test"] == ("queued", None)
    assert statuses(engine, refused)["test"] == ("skipped", "dependency_failed")


WHENS = """
stages: [build, test, cleanup]
build: {stage: build, script: [make]}
test: {stage: test, script: [pytest]}
notify: {stage: test, script: [mail], when: on_failure}
cleanup: {stage: cleanup, script: [rm], when: always}
"""


def test_on_failure_and_always_jobs_run_after_a_failure(engine: Engine) -> None:
    """After a failure: on_failure and always jobs run in stage order, on_success ones are skipped."""
    run_id = start_run(engine, WHENS)
    run_job(engine, run_id, "build", record("failed", 1))
    got = statuses(engine, run_id)
    assert got["test"] == ("skipped", "dependency_failed")
    assert got["notify"] == ("queued", None)
    assert got["cleanup"] == ("created", None)  # a later stage: it waits for notify
    run_job(engine, run_id, "notify")
    assert statuses(engine, run_id)["cleanup"] == ("queued", None)
    run_job(engine, run_id, "cleanup")
    assert _run(engine, run_id).status == "failed"


def test_on_failure_job_is_skipped_when_nothing_failed(engine: Engine) -> None:
    """With no failure the on_failure job is skipped (no reason) and always still runs."""
    run_id = start_run(engine, WHENS)
    run_job(engine, run_id, "build")
    run_job(engine, run_id, "test")
    got = statuses(engine, run_id)
    assert got["notify"] == ("skipped", None)
    assert got["cleanup"] == ("queued", None)
    run_job(engine, run_id, "cleanup")
    assert _run(engine, run_id).status == "succeeded"


def test_playing_a_manual_job_queues_it(engine: Engine) -> None:
    """A manual job waits as `manual` until played; play_job queues it once."""
    run_id = start_run(engine, "go: {script: [ship], when: manual}\n")
    job_id = jobs(engine, run_id)["go"].id
    assert statuses(engine, run_id)["go"] == ("manual", None)
    with session_scope(engine) as session:
        assert play_job(session, job_id, at(1)) == [job_id]
    with session_scope(engine) as session:
        assert play_job(session, job_id, at(2)) == []
        assert run_status(session, run_id) == "running"


def test_blocking_manual_job_holds_its_dependents(engine: Engine) -> None:
    """A manual job with allow_failure: false blocks later jobs and the run shows manual."""
    text = """
stages: [build, deploy, verify]
build: {stage: build, script: [make]}
deploy: {stage: deploy, script: [ship], when: manual, allow_failure: false}
verify: {stage: verify, script: [curl]}
"""
    run_id = start_run(engine, text)
    run_job(engine, run_id, "build")
    assert statuses(engine, run_id)["verify"] == ("created", None)
    assert _run(engine, run_id).status == "manual"


def test_non_blocking_manual_job_lets_later_stages_run(engine: Engine) -> None:
    """A job-level `when: manual` may fail by default, so the next stage does not wait for it."""
    text = """
stages: [build, deploy, verify]
build: {stage: build, script: [make]}
deploy: {stage: deploy, script: [ship], when: manual}
verify: {stage: verify, script: [curl]}
"""
    run_id = start_run(engine, text)
    run_job(engine, run_id, "build")
    assert statuses(engine, run_id)["verify"] == ("queued", None)
    run_job(engine, run_id, "verify")
    assert _run(engine, run_id).status == "succeeded"


def test_two_needs_finishing_at_once_queue_the_join_exactly_once(engine: Engine) -> None:
    """Jobs a and b finish concurrently; c, which needs both, is queued once, by one of them."""
    text = "a: {stage: build, script: [x]}\nb: {stage: build, script: [y]}\nc: {script: [z]}\n"
    run_id = start_run(engine, text)
    by_name = jobs(engine, run_id)
    for name in ("a", "b"):
        with session_scope(engine) as session:
            assert claim_job(session, by_name[name].id, f"w-{name}", at(0), lease_s=30) is not None
    barrier = threading.Barrier(2)
    results: list[list[str]] = []
    errors: list[BaseException] = []

    def finisher(name: str) -> None:
        try:
            barrier.wait()
            with session_scope(engine) as session:
                results.append(finish_job(session, by_name[name].id, 1, record(), at(1)))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=finisher, args=(name,)) for name in ("a", "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    assert sorted(results, key=len) == [[], [by_name["c"].id]]
    assert statuses(engine, run_id)["c"] == ("queued", None)
