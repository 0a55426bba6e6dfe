"""The outbox publisher's view, the stale-queue sweeper, artifact expiry, cache trust."""

from __future__ import annotations

from sqlalchemy.engine import Engine

from pipelines.store.db import session_scope
from pipelines.store.outbox import mark_published, pending_outbox, prune_outbox, requeue_stale
from pipelines.store.reads import artifacts_of, queued_job_ids
from pipelines.store.retention import cache_lookup, cache_store, expire_artifacts
from pipelines.store.transitions import cancel_run
from tests.integration.store.conftest import at, jobs, record, run_job, start_run

TWO = "a: {stage: build, script: [x]}\nb: {stage: build, script: [y]}\n"


def test_published_jobs_leave_the_pending_outbox(engine: Engine) -> None:
    """mark_published removes exactly those jobs from pending_outbox."""
    run_id = start_run(engine, TWO)
    by_name = jobs(engine, run_id)
    with session_scope(engine) as session:
        assert mark_published(session, [by_name["a"].id], at(1)) == 1
    with session_scope(engine) as session:
        assert pending_outbox(session) == [by_name["b"].id]


def test_sweeper_reannounces_jobs_left_queued(engine: Engine) -> None:
    """A job queued and published but never claimed gets a new outbox row after the period."""
    run_id = start_run(engine, TWO)
    with session_scope(engine) as session:
        ids = queued_job_ids(session, run_id)
        mark_published(session, ids, at(0))
    with session_scope(engine) as session:
        assert requeue_stale(session, at(10), older_than_s=60) == []
        assert sorted(requeue_stale(session, at(61), older_than_s=60)) == sorted(ids)
    with session_scope(engine) as session:
        assert sorted(pending_outbox(session)) == sorted(ids)
        assert requeue_stale(session, at(62), older_than_s=60) == []


def test_sweeper_ignores_cancelled_runs(engine: Engine) -> None:
    """Jobs of a cancelled run are never re-announced."""
    run_id = start_run(engine, TWO)
    with session_scope(engine) as session:
        cancel_run(session, run_id, at(1))
    with session_scope(engine) as session:
        assert requeue_stale(session, at(1000), older_than_s=60) == []


def test_prune_outbox_deletes_only_old_published_rows(engine: Engine) -> None:
    """Published rows older than the cut-off go; unpublished ones stay."""
    run_id = start_run(engine, TWO)
    by_name = jobs(engine, run_id)
    with session_scope(engine) as session:
        mark_published(session, [by_name["a"].id], at(1))
    with session_scope(engine) as session:
        assert prune_outbox(session, at(2)) == 1
        assert pending_outbox(session) == [by_name["b"].id]


ARTIFACTS = "a: {script: [make], artifacts: {paths: [dist], expire_in: 1 hour}}\nb: {script: [x]}\n"


def test_artifacts_expire_after_expire_in(engine: Engine) -> None:
    """Artifacts are kept until expire_in has passed, then expire_artifacts removes the rows."""
    run_id = start_run(engine, ARTIFACTS)
    artifact = {"path": "dist/app.tar", "size": 10, "sha256": "ab" * 32}
    run_job(engine, run_id, "a", record(artifacts=[artifact]), now=0)
    run_job(engine, run_id, "b", record(artifacts=[{"path": "keep", "size": 1, "sha256": ""}]), now=0)
    job_id, other_id = jobs(engine, run_id)["a"].id, jobs(engine, run_id)["b"].id
    with session_scope(engine) as session:
        assert expire_artifacts(session, at(1800)) == []
        expired = expire_artifacts(session, at(3602))
        assert [(e.run_id, e.job_id, e.path) for e in expired] == [(run_id, job_id, "dist/app.tar")]
    with session_scope(engine) as session:
        assert artifacts_of(session, job_id) == []
        assert [a.path for a in artifacts_of(session, other_id)] == ["keep"]


def test_cache_entries_never_cross_trust_levels(engine: Engine) -> None:
    """An untrusted run's cache is invisible to trusted runs, and the other way round."""
    with session_scope(engine) as session:
        cache_store(session, "deps-v1", "untrusted", "11" * 32, 100, at(0))
    with session_scope(engine) as session:
        assert cache_lookup(session, "deps-v1", "trusted") is None
        entry = cache_lookup(session, "deps-v1", "untrusted")
        assert entry is not None and entry.sha256 == "11" * 32
        cache_store(session, "deps-v1", "trusted", "22" * 32, 200, at(1))
    with session_scope(engine) as session:
        trusted = cache_lookup(session, "deps-v1", "trusted")
        untrusted = cache_lookup(session, "deps-v1", "untrusted")
        assert trusted is not None and untrusted is not None
        assert (trusted.sha256, untrusted.sha256) == ("22" * 32, "11" * 32)


def test_cache_store_replaces_the_entry(engine: Engine) -> None:
    """Saving a key again at the same trust level replaces it."""
    with session_scope(engine) as session:
        cache_store(session, "k", "trusted", "aa", 1, at(0))
    with session_scope(engine) as session:
        cache_store(session, "k", "trusted", "bb", 2, at(1))
    with session_scope(engine) as session:
        entry = cache_lookup(session, "k", "trusted")
        assert entry is not None and (entry.sha256, entry.size, entry.created_at) == ("bb", 2, at(1))
