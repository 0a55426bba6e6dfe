"""Forge runs in the store, on SQLite and PostgreSQL: held runs and their approval, superseded
runs (GitLab's conservative auto-cancel), the commit status outbox, recorded sources."""

from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy.engine import Engine

from pipelines.store import repos
from pipelines.store.approvals import (
    WAITING_FOR_APPROVAL,
    NotWaiting,
    approval_state,
    approve_run,
    hold_run,
    waiting_runs,
)
from pipelines.store.db import read_scope, session_scope
from pipelines.store.errors import RunFinished
from pipelines.store.outbox import pending_outbox
from pipelines.store.reads import read_run_row
from pipelines.store.sources import (
    archive_bytes,
    ended_runs,
    record_archive_source,
    record_commit_source,
    run_source,
    store_archive,
)
from pipelines.store.statuses import (
    StatusTarget,
    claim_due,
    enqueue_status,
    report,
    settle,
    statuses_of_commit,
    watch_run,
    watched_runs,
)
from pipelines.store.superseding import cancel_if_interruptible, superseded_runs
from pipelines.store.transitions import cancel_run, claim_job, play_job
from tests.integration.store.conftest import T0, at, jobs, run_job, start_run, statuses

PIPELINE = """
stages: [build, test]
build: {stage: build, script: [make]}
lint: {stage: build, script: [lint], when: manual}
test: {stage: test, script: [make check]}
"""


def _repo(engine: Engine, name: str = "o/r") -> str:
    with session_scope(engine) as session:
        return repos.add_repository(session, repos.NewRepository(name, "github", f"https://h/{name}.git", "s"), T0).id


def test_a_held_run_starts_nothing_until_approved(engine: Engine) -> None:
    """Holding takes back the first advance (nothing queued, no outbox row, the manual job not
    playable) and the run waits; approving gives the jobs back, queued with outbox rows."""
    run_id = start_run(engine, PIPELINE, trust="untrusted")
    with session_scope(engine) as session:
        held = hold_run(session, run_id, at(0))
    assert len(held) == 1
    assert statuses(engine, run_id) == {"build": ("created", None), "lint": ("created", None),
                                        "test": ("created", None)}
    with read_scope(engine) as session:
        run = read_run_row(session, run_id)
        assert run is not None and run.status == WAITING_FOR_APPROVAL and run.finished_at is None
        assert pending_outbox(session) == []
        assert [w.run_id for w in waiting_runs(session)] == [run_id]
    with session_scope(engine) as session:
        assert play_job(session, jobs(engine, run_id)["lint"].id, at(1)) == []  # not offered while held
        assert claim_job(session, held[0], "w1", at(1), 30) is None
    with session_scope(engine) as session:
        queued = approve_run(session, run_id, "admin:ci", at(2))
    assert queued == list(held)
    assert statuses(engine, run_id)["build"] == ("queued", None)
    assert statuses(engine, run_id)["lint"] == ("manual", None)
    with read_scope(engine) as session:
        assert pending_outbox(session) == queued
        assert approval_state(session, run_id) == "approved" and waiting_runs(session) == []
        run = read_run_row(session, run_id)
        assert run is not None and run.status == "running"
    with session_scope(engine) as session, pytest.raises(NotWaiting):
        approve_run(session, run_id, "admin:ci", at(3))
    run_job(engine, run_id, "build", now=4)
    run_job(engine, run_id, "test", now=6)
    assert statuses(engine, run_id)["test"] == ("succeeded", None)


def test_a_cancelled_held_run_cannot_be_approved(engine: Engine) -> None:
    """A held run that was cancelled (its pull request closed) ends cancelled; approving it
    afterwards is refused and starts nothing."""
    run_id = start_run(engine, PIPELINE, trust="untrusted")
    with session_scope(engine) as session:
        hold_run(session, run_id, at(0))
    with session_scope(engine) as session:
        cancel_run(session, run_id, at(1))
    with session_scope(engine) as session, pytest.raises(RunFinished):
        approve_run(session, run_id, "admin:ci", at(2))
    with read_scope(engine) as session:
        run = read_run_row(session, run_id)
        assert run is not None and run.status == "cancelled" and run.finished_at is not None
        assert approval_state(session, run_id) == "cancelled" and pending_outbox(session) == []


INTERRUPTIBLE = """
stages: [build, deploy]
build: {stage: build, script: [make], interruptible: true}
slow: {stage: build, script: [sleep 100], interruptible: true}
deploy: {stage: deploy, script: [ship]}
"""


def _link(engine: Engine, run_id: str, repo_id: str, kind: str = "push", ref: str = "main",
          iid: int | None = None) -> None:
    with session_scope(engine) as session:
        repos.link_run(session, run_id, repo_id, kind, ref, iid, False)


def test_a_newer_push_cancels_an_older_run_until_a_non_interruptible_job_starts(engine: Engine) -> None:
    """GitLab's conservative auto-cancel: an older run of the branch whose started jobs are all
    interruptible is cancelled (its running job asked to stop, its waiting ones cancelled); once
    a non-interruptible job has started it is left alone. Another branch is never touched."""
    repo_id = _repo(engine)
    old = start_run(engine, INTERRUPTIBLE)
    other = start_run(engine, INTERRUPTIBLE)
    _link(engine, old, repo_id)
    _link(engine, other, repo_id, ref="feature")
    with session_scope(engine) as session:
        assert claim_job(session, jobs(engine, old)["slow"].id, "w1", at(1), 30) is not None
    new = start_run(engine, INTERRUPTIBLE)
    _link(engine, new, repo_id)
    with session_scope(engine) as session:
        older = superseded_runs(session, repo_id, new, T0 + dt.timedelta(seconds=5), kind="push", ref="main",
                                merge_request_iid=None)
        assert older == [old]
        assert cancel_if_interruptible(session, old, at(5)) is None
    by_name = jobs(engine, old)
    assert by_name["slow"].cancel_requested and by_name["deploy"].status == "cancelled"
    assert statuses(engine, other)["build"] == ("queued", None)

    late = start_run(engine, INTERRUPTIBLE)
    _link(engine, late, repo_id)
    run_job(engine, late, "build", now=6)
    run_job(engine, late, "slow", now=7)
    with session_scope(engine) as session:
        assert claim_job(session, jobs(engine, late)["deploy"].id, "w1", at(9), 30) is not None
    with session_scope(engine) as session:
        why = cancel_if_interruptible(session, late, at(10))
    assert why == "job 'deploy' (not interruptible) has started"
    assert jobs(engine, late)["deploy"].status == "running" and not jobs(engine, late)["deploy"].cancel_requested


def test_merge_request_runs_supersede_by_iid(engine: Engine) -> None:
    """New commits on a merge request find the older runs of that merge request only."""
    repo_id = _repo(engine)
    first, other_mr, push = (start_run(engine, INTERRUPTIBLE) for _ in range(3))
    _link(engine, first, repo_id, "merge_request", "feature", 7)
    _link(engine, other_mr, repo_id, "merge_request", "feature", 8)
    _link(engine, push, repo_id, "push", "feature")
    new = start_run(engine, INTERRUPTIBLE)
    with session_scope(engine) as session:
        found = superseded_runs(session, repo_id, new, at(60), kind="merge_request", ref="feature",
                                merge_request_iid=7)
    assert found == [first]


def test_statuses_are_reported_once_per_change_and_the_newest_unsent_wins(engine: Engine) -> None:
    """A watched run's change is recorded once (compare-and-set); a due status with a newer one
    of the same commit and context waiting is superseded, not sent; a retried one waits."""
    repo_id = _repo(engine)
    run_id = start_run(engine, PIPELINE)
    target = StatusTarget(repo_id, "a" * 40, "o/r", "sandpit/push", "http://ui/runs/x")
    with session_scope(engine) as session:
        watch_run(session, run_id, target, "pending", "waiting for a worker", at(0))
    with read_scope(engine) as session:
        (watched,) = watched_runs(session)
    assert (watched.reported, watched.status, dict(watched.jobs)) == (
        "pending", "running", {"queued": 1, "manual": 1, "created": 1})
    with session_scope(engine) as session:
        assert report(session, watched, "running", "running: 0 of 3", at(1))
        assert not report(session, watched, "running", "again", at(1))  # stale: already moved
    with session_scope(engine) as session:
        due = claim_due(session, at(2), dt.timedelta(seconds=30))
    assert [d.state for d in due] == ["running"]  # pending was superseded
    with session_scope(engine) as session:
        assert claim_due(session, at(3), dt.timedelta(seconds=30)) == []  # claimed
        settle(session, due[0].id, 1, "503 Service Unavailable", sent_at=None, retry_at=at(10))
    with session_scope(engine) as session:
        assert claim_due(session, at(5), dt.timedelta(seconds=30)) == []  # backing off
        again = claim_due(session, at(11), dt.timedelta(seconds=30))
        assert [(d.id, d.attempts) for d in again] == [(due[0].id, 1)]
        settle(session, again[0].id, 2, "201 Created", sent_at=at(11), retry_at=None)
        enqueue_status(session, target, "failed", "no pipeline file", at(12))
    with read_scope(engine) as session:
        rows = statuses_of_commit(session, "a" * 40)
    assert [(r.state, r.outcome.split(" ")[0], r.sent_at is not None) for r in rows] == [
        ("pending", "superseded", True), ("running", "201", True), ("failed", "", False)]


def test_sources_are_recorded_and_archives_stored_once(engine: Engine) -> None:
    """A run's commit or archive is read back as recorded; the same archive bytes are stored
    once; ended runs (and runs the store does not know) are told apart from live ones."""
    repo_id = _repo(engine)
    commit_run, archive_run, other = (start_run(engine, PIPELINE) for _ in range(3))
    with session_scope(engine) as session:
        record_commit_source(session, commit_run, repo_id, "https://h/fork.git", "b" * 40)
        store_archive(session, "c" * 64, b"tar bytes", at(0))
        store_archive(session, "c" * 64, b"tar bytes", at(1))
        record_archive_source(session, archive_run, "c" * 64)
        cancel_run(session, other, at(2))
    with read_scope(engine) as session:
        found = run_source(session, commit_run)
        assert found is not None and (found.kind, found.repo_id, found.clone_url, found.sha) == (
            "commit", repo_id, "https://h/fork.git", "b" * 40)
        archived = run_source(session, archive_run)
        assert archived is not None and archived.kind == "archive"
        assert archive_bytes(session, "c" * 64) == b"tar bytes" and run_source(session, other) is None
        assert ended_runs(session, [commit_run, other, "no-such-run"]) == {other, "no-such-run"}
