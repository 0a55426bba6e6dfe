"""``workflow:auto_cancel`` in the store, on SQLite and PostgreSQL: each ``on_new_commit`` mode as
a newer push applies it to an older run (the older run's own setting), and ``on_job_failure``."""

from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy.engine import Engine

from pipelines.language.model import AutoCancel
from pipelines.store import repos
from pipelines.store.auto_cancel import auto_cancel_of
from pipelines.store.db import read_scope, session_scope
from pipelines.store.reads import read_run_row
from pipelines.store.superseding import cancel_if_interruptible, superseded_runs
from pipelines.store.transitions import claim_job, create_run, expire_leases, finish_job
from tests.integration.store.conftest import T0, at, jobs, planned, record, run_job, statuses

MIXED = """
workflow: {auto_cancel: {on_new_commit: %s}}
stages: [build, deploy]
build: {stage: build, script: [make], interruptible: true}
lint: {stage: build, script: [lint]}
docs: {stage: build, script: [docs], interruptible: true, needs: [lint]}
ship: {stage: deploy, script: [ship]}
"""


def _repo(engine: Engine) -> str:
    with session_scope(engine) as session:
        return repos.add_repository(session, repos.NewRepository("o/r", "github", "https://h/o/r.git", "s"), T0).id


def _push_run(engine: Engine, repo_id: str, text: str, sha: str, seconds: float = 0) -> str:
    with session_scope(engine) as session:
        run_id = create_run(session, planned(text), trust="trusted", source="webhook", variables={}, now=at(seconds),
                            pipeline=text, ref="main", sha=sha).run.id
        repos.link_run(session, run_id, repo_id, "push", "main", None, False)
    return run_id


def _claim(engine: Engine, run_id: str, name: str, seconds: float) -> None:
    with session_scope(engine) as session:
        assert claim_job(session, jobs(engine, run_id)[name].id, "w1", at(seconds), 30) is not None


def _supersede(engine: Engine, repo_id: str, new: str, seconds: float) -> list[tuple[str, str | None]]:
    with session_scope(engine) as session:
        older = superseded_runs(session, repo_id, new, at(seconds), kind="push", ref="main", merge_request_iid=None)
        return [(run_id, cancel_if_interruptible(session, run_id, at(seconds))) for run_id in older]


def _states(engine: Engine, run_id: str) -> dict[str, tuple[str, bool]]:
    return {name: (job.status, job.cancel_requested) for name, job in jobs(engine, run_id).items()}


@pytest.mark.parametrize(("mode", "why_not", "after"), [
    ("conservative", "job 'lint' (not interruptible) has started",
     {"build": ("running", False), "lint": ("running", False), "docs": ("created", False), "ship": ("created", False)}),
    ("interruptible", None,
     {"build": ("running", True), "lint": ("running", False), "docs": ("cancelled", False),
      "ship": ("created", False)}),
    ("none", "its workflow:auto_cancel:on_new_commit is none",
     {"build": ("running", False), "lint": ("running", False), "docs": ("created", False), "ship": ("created", False)}),
])
def test_each_on_new_commit_mode_once_a_non_interruptible_job_has_started(
        engine: Engine, mode: str, why_not: str | None, after: dict[str, tuple[str, bool]]) -> None:
    """With an interruptible and a non-interruptible job running: conservative leaves the run alone,
    interruptible stops and cancels only the interruptible jobs (the rest runs on), none does nothing."""
    repo_id = _repo(engine)
    old = _push_run(engine, repo_id, MIXED % mode, "a" * 40)
    _claim(engine, old, "build", 1)
    _claim(engine, old, "lint", 1)
    new = _push_run(engine, repo_id, MIXED % "conservative", "b" * 40, seconds=5)
    assert _supersede(engine, repo_id, new, 5) == [(old, why_not)]
    assert _states(engine, old) == after
    with read_scope(engine) as session:
        run = read_run_row(session, old)
        assert run is not None and run.finished_at is None and not run.cancelled


def test_interruptible_mode_lets_the_run_finish_with_what_is_left(engine: Engine) -> None:
    """After `interruptible` cancelled its interruptible jobs, the old run's other jobs go on; the
    stopped job ends cancelled and the run ends cancelled (a job was cancelled), not failed."""
    repo_id = _repo(engine)
    old = _push_run(engine, repo_id, MIXED % "interruptible", "a" * 40)
    _claim(engine, old, "build", 1)
    _claim(engine, old, "lint", 1)
    new = _push_run(engine, repo_id, MIXED % "interruptible", "b" * 40, seconds=5)
    _supersede(engine, repo_id, new, 5)
    build, lint = jobs(engine, old)["build"], jobs(engine, old)["lint"]
    with session_scope(engine) as session:
        finish_job(session, build.id, build.attempt, record("failed", 137, reason="cancelled"), at(6))
        finish_job(session, lint.id, lint.attempt, record(), at(7))
    assert statuses(engine, old) == {"build": ("cancelled", "cancelled"), "lint": ("succeeded", None),
                                     "docs": ("cancelled", "cancelled"), "ship": ("skipped", "dependency_failed")}
    with read_scope(engine) as session:
        run = read_run_row(session, old)
        assert run is not None and run.status == "cancelled" and run.finished_at is not None


def test_conservative_cancels_the_whole_run_while_only_interruptible_jobs_started(engine: Engine) -> None:
    """The default: only `build` (interruptible) has started, so the run is cancelled whole."""
    repo_id = _repo(engine)
    old = _push_run(engine, repo_id, MIXED % "conservative", "a" * 40)
    _claim(engine, old, "build", 1)
    new = _push_run(engine, repo_id, MIXED % "conservative", "b" * 40, seconds=5)
    assert _supersede(engine, repo_id, new, 5) == [(old, None)]
    assert _states(engine, old) == {"build": ("running", True), "lint": ("cancelled", False),
                                    "docs": ("cancelled", False), "ship": ("cancelled", False)}


def test_the_older_runs_own_setting_decides_not_the_newer_ones(engine: Engine) -> None:
    """GitLab reads `on_new_commit` of the pipeline it may cancel: an old run that says `none` stays
    whatever the new one says, and an old default run is cancelled by a new one that says `none`."""
    repo_id = _repo(engine)
    keeps = _push_run(engine, repo_id, MIXED % "none", "a" * 40)
    goes = _push_run(engine, repo_id, MIXED % "conservative", "b" * 40, seconds=1)
    new = _push_run(engine, repo_id, MIXED % "none", "c" * 40, seconds=5)
    assert _supersede(engine, repo_id, new, 5) == [(keeps, "its workflow:auto_cancel:on_new_commit is none"),
                                                    (goes, None)]
    assert statuses(engine, keeps)["build"] == ("queued", None)
    assert statuses(engine, goes)["build"] == ("cancelled", "cancelled")


def test_a_run_of_the_same_commit_supersedes_nothing(engine: Engine) -> None:
    """A second run of the commit the older run built (a re-push, a retried delivery under a new id)
    cancels nothing: GitLab skips an older pipeline with the new one's sha."""
    repo_id = _repo(engine)
    old = _push_run(engine, repo_id, MIXED % "conservative", "a" * 40)
    new = _push_run(engine, repo_id, MIXED % "conservative", "a" * 40, seconds=5)
    assert _supersede(engine, repo_id, new, 5) == []
    assert statuses(engine, old)["build"] == ("queued", None)


@pytest.mark.parametrize(("text", "expected"), [
    ("t: {script: [x]}", AutoCancel()),
    ("workflow: {auto_cancel: {on_new_commit: interruptible}}\nt: {script: [x]}", AutoCancel("interruptible")),
    ("workflow: {auto_cancel: {on_job_failure: all}}\nt: {script: [x]}", AutoCancel(on_job_failure="all")),
])
def test_the_run_keeps_its_settings(engine: Engine, text: str, expected: AutoCancel) -> None:
    """What the plan said is what the stored run says (no row for the defaults)."""
    with session_scope(engine) as session:
        run_id = create_run(session, planned(text), trust="trusted", source="api", variables={}, now=T0).run.id
    with read_scope(engine) as session:
        assert auto_cancel_of(session, run_id) == expected


ON_FAILURE = """
workflow: {auto_cancel: {on_job_failure: %s}}
stages: [test, deploy]
unit: {stage: test, script: [unit]}
slow: {stage: test, script: [sleep 100]}
flaky: {stage: test, script: [x], allow_failure: true}
retried: {stage: test, script: [x], retry: 1}
later: {stage: test, script: [x], needs: [slow]}
manual: {stage: test, script: [x], when: manual}
cleanup: {stage: deploy, script: [x], when: on_failure}
ship: {stage: deploy, script: [ship]}
"""


def _start(engine: Engine, text: str) -> str:
    with session_scope(engine) as session:
        return create_run(session, planned(text), trust="trusted", source="api", variables={}, now=T0).run.id


def test_on_job_failure_all_cancels_the_rest_and_the_run_fails(engine: Engine) -> None:
    """A job failing for good cancels every waiting job (the `on_failure` one too), asks the running
    ones to stop and leaves the manual one; a failure that is allowed, or that will be retried,
    cancels nothing. The run ends `failed`, as on GitLab."""
    run_id = _start(engine, ON_FAILURE % "all")
    _claim(engine, run_id, "slow", 1)
    run_job(engine, run_id, "flaky", record("failed", 1), now=2)  # allowed to fail
    run_job(engine, run_id, "retried", record("failed", 1), now=3)  # retried: queued again
    assert statuses(engine, run_id)["unit"] == ("queued", None)
    assert statuses(engine, run_id)["retried"] == ("queued", None)
    newly = run_job(engine, run_id, "unit", record("failed", 2), now=4)
    assert newly == []
    assert _states(engine, run_id) == {
        "unit": ("failed", False), "slow": ("running", True), "flaky": ("failed", False),
        "retried": ("cancelled", False), "later": ("cancelled", False), "manual": ("manual", False),
        "cleanup": ("cancelled", False), "ship": ("cancelled", False)}
    slow = jobs(engine, run_id)["slow"]
    with session_scope(engine) as session:
        finish_job(session, slow.id, slow.attempt, record("failed", 137, reason="cancelled"), at(9))
    with read_scope(engine) as session:
        run = read_run_row(session, run_id)
        assert run is not None and (run.status, run.cancelled, run.finished_at is not None) == ("failed", False, True)
    assert statuses(engine, run_id)["slow"] == ("cancelled", "cancelled")


def test_on_job_failure_none_changes_nothing_else(engine: Engine) -> None:
    """The default: the other jobs go on, the `on_failure` job is queued after the stage."""
    run_id = _start(engine, ON_FAILURE % "none")
    _claim(engine, run_id, "slow", 1)
    run_job(engine, run_id, "unit", record("failed", 2), now=4)
    after = _states(engine, run_id)
    assert after["slow"] == ("running", False) and after["retried"] == ("queued", False)


def test_the_sweepers_verdict_counts_as_a_failure(engine: Engine) -> None:
    """A job whose worker vanished (its lease expired, `error`/`worker_lost`) fails the run like any
    other failure: the sweeper's transition cancels the rest."""
    text = "workflow: {auto_cancel: {on_job_failure: all}}\nslow: {script: [x]}\nother: {script: [y]}\n"
    run_id = _start(engine, text)
    _claim(engine, run_id, "slow", 1)
    with session_scope(engine) as session:
        assert expire_leases(session, at(1) + dt.timedelta(minutes=5)) == []
    assert statuses(engine, run_id) == {"slow": ("error", "worker_lost"), "other": ("cancelled", "cancelled")}
