"""Retrying one finished job (and playing a manual one) in the store, on SQLite and PostgreSQL:
the new attempt, what it let skip waiting again, the run reopened, and every refusal."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy.engine import Engine

from pipelines.store import repos
from pipelines.store.advance import outcome
from pipelines.store.approvals import hold_run
from pipelines.store.db import read_scope, session_scope
from pipelines.store.errors import JobNotFound
from pipelines.store.outbox import pending_outbox
from pipelines.store.reads import artifacts_of, read_run_row, run_counts
from pipelines.store.retention import expire_artifacts
from pipelines.store.statuses import StatusTarget, watch_run, watched_runs
from pipelines.store.transitions import (
    cancel_job,
    cancel_run,
    claim_job,
    create_run,
    finish_job,
    play_manual_job,
    retry_job,
)
from pipelines.store.transitions.controls import NotPlayable
from pipelines.store.transitions.retry import NotRetryable
from tests.integration.store.conftest import T0, at, jobs, planned, record, run_job, start_run, statuses

# build fails: unit (needs build) and every job of the later stages are skipped, ship (manual)
# too; docs (needs nothing) and notify (on_failure) run
PIPELINE = """
stages: [build, test, deploy]
build: {stage: build, script: [make]}
docs: {stage: build, script: [doc]}
unit: {stage: test, script: [pytest], needs: [build]}
api: {stage: test, script: [pytest api], needs: [unit]}
notify: {stage: test, script: [mail], when: on_failure}
lint: {stage: test, script: [lint], needs: [docs]}
ship: {stage: deploy, script: [ship], when: manual}
"""


def _attempts(engine: Engine, job_id: str) -> list[tuple[int, str, bool]]:
    from pipelines.store.listing import job_detail

    with read_scope(engine) as session:
        return [(a.attempt, a.status, a.retried) for a in job_detail(session, job_id).attempts]


def _assert_counts_true(engine: Engine, run_id: str) -> None:
    """The run's counters and every waiting job's edge counts equal a fresh count of its jobs."""
    with session_scope(engine) as session:
        stored, fresh = run_counts(session, run_id)
    assert stored == fresh
    by_name = jobs(engine, run_id)
    for job in by_name.values():
        if job.status != "created" or job.follows_stages:
            continue
        kinds = [outcome(_state(by_name[name])) for name in job.needs]
        assert (job.waiting_on, job.failed_on) == (kinds.count("pending"), kinds.count("failed")), job.name


def _state(job: Any) -> Any:
    from pipelines.store.advance import JobState

    return JobState(job.name, job.status, job.when, job.allow_failure, (), job.reason)


def _failed_build(engine: Engine) -> str:
    run_id = start_run(engine, PIPELINE)
    run_job(engine, run_id, "build", record("failed", 2))
    run_job(engine, run_id, "docs")
    run_job(engine, run_id, "notify")
    run_job(engine, run_id, "lint")
    got = statuses(engine, run_id)
    assert got["unit"] == got["api"] == got["ship"] == ("skipped", "dependency_failed")
    with read_scope(engine) as session:
        run = read_run_row(session, run_id)
        assert run is not None and (run.status, run.finished_at is not None) == ("failed", True)
    return run_id


def test_a_failed_job_is_queued_again_and_what_it_skipped_waits_again(engine: Engine) -> None:
    """The failed job becomes queued (its outbox row written), its skipped dependents by needs and
    by stage order become created, the jobs that ran stay as they were, the run runs again."""
    run_id = _failed_build(engine)
    build = jobs(engine, run_id)["build"]
    with session_scope(engine) as session:
        retried = retry_job(session, build.id, at(10))
    assert retried.queued == (build.id,) and retried.attempt == 2
    assert {jobs(engine, run_id)[n].id for n in ("unit", "api", "ship")} == set(retried.reset)
    got = statuses(engine, run_id)
    assert got["build"] == ("queued", None)
    assert got["unit"] == got["api"] == got["ship"] == ("created", None)
    assert got["docs"] == got["notify"] == got["lint"] == ("succeeded", None)
    fresh = jobs(engine, run_id)["build"]
    assert (fresh.exit_code, fresh.result, fresh.finished_at, fresh.log_path) == (None, {}, None, None)
    with read_scope(engine) as session:
        run = read_run_row(session, run_id)
        assert run is not None and (run.status, run.finished_at) == ("running", None)
        assert build.id in pending_outbox(session)
    _assert_counts_true(engine, run_id)


def test_the_new_attempt_runs_and_the_run_goes_on_from_it(engine: Engine) -> None:
    """The worker claims attempt 2 (the history keeps attempt 1, marked retried); once it passes,
    the jobs that waited run, the manual job is offered, and the run succeeds."""
    run_id = _failed_build(engine)
    build, unit = jobs(engine, run_id)["build"], jobs(engine, run_id)["unit"]
    with session_scope(engine) as session:
        retry_job(session, build.id, at(10))
    with session_scope(engine) as session:
        claimed = claim_job(session, build.id, "w2", at(11), lease_s=30)
        assert claimed is not None and claimed.attempt == 2
    with session_scope(engine) as session:
        assert finish_job(session, build.id, 2, record(), at(12)) == [unit.id]
    assert _attempts(engine, build.id) == [(1, "failed", True), (2, "succeeded", False)]
    run_job(engine, run_id, "unit", now=13)
    run_job(engine, run_id, "api", now=15)
    got = statuses(engine, run_id)
    assert got["ship"] == ("manual", None) and got["notify"] == ("succeeded", None)
    _assert_counts_true(engine, run_id)
    with read_scope(engine) as session:
        run = read_run_row(session, run_id)
        assert run is not None and run.status == "succeeded"  # ship may fail: it waits, not blocks


def test_a_retried_job_that_fails_again_skips_them_again(engine: Engine) -> None:
    """What waited again is skipped again when the new attempt fails too."""
    run_id = _failed_build(engine)
    build = jobs(engine, run_id)["build"].id
    with session_scope(engine) as session:
        retry_job(session, build, at(10))
    run_job(engine, run_id, "build", record("failed", 2), now=11)
    got = statuses(engine, run_id)
    assert got["unit"] == got["api"] == got["ship"] == ("skipped", "dependency_failed")
    with read_scope(engine) as session:
        run = read_run_row(session, run_id)
        assert run is not None and run.status == "failed" and run.finished_at is not None
    _assert_counts_true(engine, run_id)


def test_a_succeeded_job_is_retried_and_its_on_failure_dependents_decided_again(engine: Engine) -> None:
    """Any finished job may be retried (GitLab's rule): a succeeded one runs again; the on_failure
    job its success skipped waits again, and runs when the new attempt fails."""
    text = "stages: [a, b]\nbuild: {stage: a, script: [x]}\nalert: {stage: b, script: [y], when: on_failure}\n"
    run_id = start_run(engine, text)
    run_job(engine, run_id, "build")
    assert statuses(engine, run_id)["alert"] == ("skipped", None)
    build, alert = jobs(engine, run_id)["build"].id, jobs(engine, run_id)["alert"].id
    with session_scope(engine) as session:
        assert retry_job(session, build, at(5)).reset == (alert,)
    assert statuses(engine, run_id)["alert"] == ("created", None)
    assert run_job(engine, run_id, "build", record("failed", 1), now=6) == [alert]
    _assert_counts_true(engine, run_id)


def test_a_job_of_a_cancelled_run_is_retried_and_the_run_is_live_again(engine: Engine) -> None:
    """As GitLab: a job of a cancelled run may be retried; the run is no longer cancelled and the
    job can be claimed, while the run's other cancelled jobs stay cancelled."""
    run_id = start_run(engine, PIPELINE)
    with session_scope(engine) as session:
        cancel_run(session, run_id, at(1))
    docs = jobs(engine, run_id)["docs"].id
    with session_scope(engine) as session:
        retry_job(session, docs, at(2))
    with read_scope(engine) as session:
        run = read_run_row(session, run_id)
        assert run is not None and (run.cancelled, run.status) == (False, "running")
    run_job(engine, run_id, "docs", now=3)
    got = statuses(engine, run_id)
    assert got["docs"] == ("succeeded", None) and got["build"] == ("cancelled", "cancelled")
    assert got["lint"] == ("cancelled", "cancelled")  # cancelled, not skipped: it stays so
    with read_scope(engine) as session:
        run = read_run_row(session, run_id)
        assert run is not None and run.status == "cancelled" and run.finished_at is not None
    _assert_counts_true(engine, run_id)


def test_a_cancelled_job_is_retried_and_its_dependents_run(engine: Engine) -> None:
    """A job cancelled before it ran is retried as its first attempt; what its cancel skipped runs."""
    run_id = start_run(engine, PIPELINE)
    build = jobs(engine, run_id)["build"].id
    with session_scope(engine) as session:
        cancel_job(session, build, at(1))
    with session_scope(engine) as session:
        assert retry_job(session, build, at(2)).attempt == 1
    assert statuses(engine, run_id)["unit"] == ("created", None)
    run_job(engine, run_id, "build", now=3)
    assert statuses(engine, run_id)["unit"] == ("queued", None)
    _assert_counts_true(engine, run_id)


def test_trust_variables_and_secrets_stay_the_runs(engine: Engine) -> None:
    """The run's trust, variables and secrets are those it was stored with; the claim hands the
    worker the same."""
    with session_scope(engine) as session:
        stored = create_run(session, planned("solo: {script: [x]}\n"), trust="untrusted", source="api",
                            variables={"A": "1"}, secrets={"S": "hush"}, now=T0)
    run_id = stored.run.id
    run_job(engine, run_id, "solo", record("failed", 1))
    with session_scope(engine) as session:
        retry_job(session, stored.jobs[0].id, at(5))
    with read_scope(engine) as session:
        run = read_run_row(session, run_id)
        assert run is not None and (run.trust, run.variables, run.secrets) == ("untrusted", {"A": "1"}, {"S": "hush"})


def test_the_old_attempts_artifacts_expire_and_the_watch_reopens(engine: Engine) -> None:
    """Attempt 1's artifacts expire at the retry (the sweeper removes them like any expired one);
    a watched run that had reported its end is watched again."""
    run_id = start_run(engine, "solo: {script: [x]}\n")
    with session_scope(engine) as session:
        repo = repos.add_repository(session, repos.NewRepository("o/r", "github", "https://h/o/r.git", "s"), T0)
        watch_run(session, run_id, StatusTarget(repo.id, "a" * 40, "o/r", "sandpit", "http://ui"), "success",
                  "done", at(0))
    kept = [{"path": "dist/app", "size": 3, "sha256": "b" * 64}]
    run_job(engine, run_id, "solo", record(artifacts=kept))
    solo = jobs(engine, run_id)["solo"].id
    with read_scope(engine) as session:
        assert [a.path for a in artifacts_of(session, solo)] == ["dist/app"] and watched_runs(session) == []
    with session_scope(engine) as session:
        retry_job(session, solo, at(5))
    with session_scope(engine) as session:
        assert [(e.job_id, e.path) for e in expire_artifacts(session, at(5))] == [(solo, "dist/app")]
        assert [w.run_id for w in watched_runs(session)] == [run_id]


@pytest.mark.parametrize("state", ["queued", "running", "created", "manual", "skipped"])
def test_a_job_that_has_not_ended_is_not_retried(engine: Engine, state: str) -> None:
    """Queued, running, created, manual and skipped jobs are refused with the reason; nothing changes."""
    text = ("stages: [a, b]\nfirst: {stage: a, script: [x]}\nlater: {stage: b, script: [y]}\n"
            "gate: {stage: b, script: [z], when: manual}\nalert: {stage: b, script: [w], when: on_failure}\n")
    run_id = start_run(engine, text)
    first = jobs(engine, run_id)["first"].id
    if state == "running":
        with session_scope(engine) as session:
            claim_job(session, first, "w1", at(1), lease_s=30)
    elif state in ("manual", "skipped"):
        run_job(engine, run_id, "first")
    name = {"created": "later", "manual": "gate", "skipped": "alert"}.get(state, "first")
    target = jobs(engine, run_id)[name]
    assert target.status == state
    before = statuses(engine, run_id)
    with session_scope(engine) as session, pytest.raises(NotRetryable) as refused:
        retry_job(session, target.id, at(5))
    assert refused.value.status == state and refused.value.reason
    assert statuses(engine, run_id) == before


def test_a_run_waiting_for_approval_retries_nothing(engine: Engine) -> None:
    """A job of a held run is refused: approving comes first."""
    text = "stages: [a, b]\nnote: {stage: a, script: [x], when: on_failure}\nrun: {stage: a, script: [y]}\n"
    with session_scope(engine) as session:
        stored = create_run(session, planned(text), trust="untrusted", source="webhook", variables={}, now=T0)
        hold_run(session, stored.run.id, T0)
    note = jobs(engine, stored.run.id)["note"]
    assert note.status == "skipped"
    with session_scope(engine) as session, pytest.raises(NotRetryable, match="waiting for approval"):
        retry_job(session, note.id, at(1))


def test_an_unknown_job_is_not_found(engine: Engine) -> None:
    with session_scope(engine) as session, pytest.raises(JobNotFound):
        retry_job(session, "no-such-job", at(1))
    with session_scope(engine) as session, pytest.raises(JobNotFound):
        play_manual_job(session, "no-such-job", at(1))


def test_only_a_manual_job_of_a_live_run_is_played(engine: Engine) -> None:
    """play_manual_job queues a manual job; a finished one, or one of a cancelled run, is refused."""
    text = "stages: [a, b]\nfirst: {stage: a, script: [x]}\ngate: {stage: b, script: [z], when: manual}\n"
    run_id = start_run(engine, text)
    run_job(engine, run_id, "first")
    by_name = jobs(engine, run_id)
    with session_scope(engine) as session, pytest.raises(NotPlayable, match="retried instead"):
        play_manual_job(session, by_name["first"].id, at(3))
    with session_scope(engine) as session:
        assert play_manual_job(session, by_name["gate"].id, at(4)) == [by_name["gate"].id]
    with session_scope(engine) as session, pytest.raises(NotPlayable, match="it is queued"):
        play_manual_job(session, by_name["gate"].id, at(5))
    other = start_run(engine, text)
    run_job(engine, other, "first")
    with session_scope(engine) as session:
        cancel_run(session, other, at(6))
    gate = jobs(engine, other)["gate"].id
    with session_scope(engine) as session, pytest.raises(NotPlayable, match="cancelled"):
        play_manual_job(session, gate, at(7))
