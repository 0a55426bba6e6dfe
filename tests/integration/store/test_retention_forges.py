"""Expiry of forge rows, uploaded trees and the expired-file list, on SQLite and PostgreSQL: each
row is gone after its cut-off and kept before it; a delivery inside the window is still a replay."""

from __future__ import annotations

import datetime as dt

from sqlalchemy.engine import Engine

from pipelines.store import repos
from pipelines.store.db import read_scope, session_scope
from pipelines.store.retention import (
    cache_store,
    expire_artifacts,
    expired_blobs_after,
    last_expired_blob_id,
    prune_expired_blobs,
)
from pipelines.store.retention_forges import (
    expire_commit_statuses,
    expire_deliveries,
    expire_source_archives,
    known_repositories,
)
from pipelines.store.sources import archive_bytes, record_archive_source, store_archive
from pipelines.store.statuses import StatusTarget, claim_due, enqueue_status, settle, statuses_of_commit
from pipelines.store.transitions import cancel_run
from tests.integration.store.conftest import T0, at, jobs, record, run_job, start_run

DAY = dt.timedelta(days=1)


def _repo(engine: Engine, name: str = "o/r") -> str:
    with session_scope(engine) as session:
        return repos.add_repository(session, repos.NewRepository(name, "github", f"https://h/{name}.git", "s"), T0).id


def test_statuses_done_with_go_after_the_cut_off_and_unsent_ones_stay(engine: Engine) -> None:
    """A sent status older than the cut-off goes; a newer sent one and one still being retried
    (however old) stay."""
    repo_id = _repo(engine)
    target = StatusTarget(repo_id, "a" * 40, "o/r", "sandpit/push", "")
    with session_scope(engine) as session:
        enqueue_status(session, target, "pending", "old", T0)
        enqueue_status(session, StatusTarget(repo_id, "b" * 40, "o/r", "sandpit/push", ""), "running", "retried", T0)
        enqueue_status(session, StatusTarget(repo_id, "c" * 40, "o/r", "sandpit/push", ""), "success", "new", T0)
    with session_scope(engine) as session:
        due = {d.sha[0]: d for d in claim_due(session, T0, dt.timedelta(seconds=30))}
        settle(session, due["a"].id, 1, "201 Created", sent_at=T0, retry_at=None)
        settle(session, due["b"].id, 1, "503", sent_at=None, retry_at=T0 + DAY)
        settle(session, due["c"].id, 1, "201 Created", sent_at=T0 + 20 * DAY, retry_at=None)
    with session_scope(engine) as session:
        assert expire_commit_statuses(session, T0 - DAY) == 0  # nothing is that old
        assert expire_commit_statuses(session, T0 + 10 * DAY) == 1
    with read_scope(engine) as session:
        left = {sha[0]: bool(statuses_of_commit(session, sha)) for sha in ("a" * 40, "b" * 40, "c" * 40)}
    assert left == {"a": False, "b": True, "c": True}


def test_deliveries_inside_the_window_are_still_replays_and_older_ones_are_forgotten(engine: Engine) -> None:
    """A delivery kept by the cut-off still finds its first answer (same id, or same body under a
    new id); after expiry the row and its replay protection are gone, in batches."""
    repo_id = _repo(engine)
    with session_scope(engine) as session:
        for i in range(5):
            row_id, seen = repos.claim_delivery(session, repo_id, f"old-{i}", f"{i:064x}", "push", T0)
            assert seen is None
            repos.settle_delivery(session, row_id, "created", 201, "a run", None)
        row_id, _ = repos.claim_delivery(session, repo_id, "recent", "f" * 64, "push", T0 + 25 * DAY)
        repos.settle_delivery(session, row_id, "created", 201, "a run", None)
    window = 30 * DAY
    with session_scope(engine) as session:  # 29 days on, every delivery is inside the window
        assert expire_deliveries(session, T0 + 29 * DAY - window) == 0
    with session_scope(engine) as session:
        _, seen = repos.claim_delivery(session, repo_id, "old-0", "e" * 64, "push", T0 + 29 * DAY)
        assert seen is not None and (seen.verdict, seen.status_code) == ("created", 201)
        _, seen = repos.claim_delivery(session, repo_id, "a-new-id", f"{1:064x}", "push", T0 + 29 * DAY)
        assert seen is not None and seen.verdict == "created"  # the same body under a new id
    with session_scope(engine) as session:
        assert expire_deliveries(session, T0 + 31 * DAY - window, limit=2) == 5  # 31 days on
    with read_scope(engine) as session:
        assert [d.delivery_id for d in repos.list_deliveries(session, repo_id)] == ["recent"]
    with session_scope(engine) as session:
        _, seen = repos.claim_delivery(session, repo_id, "recent", "f" * 64, "push", T0 + 26 * DAY)
        assert seen is not None  # still inside its window
        _, seen = repos.claim_delivery(session, repo_id, "old-0", f"{0:064x}", "push", T0 + 31 * DAY)
        assert seen is None  # forgotten: acted on as new


def test_an_uploaded_tree_goes_once_no_run_needs_it(engine: Engine) -> None:
    """Kept while a run naming it is unfinished or ended recently; kept while just uploaded even
    unnamed; gone once every run naming it ended before the cut-off."""
    tree, orphan = b"tree-bytes", b"orphan-bytes"
    with session_scope(engine) as session:
        store_archive(session, "1" * 64, tree, T0)
        store_archive(session, "2" * 64, orphan, T0 + DAY)
    first, second = start_run(engine, "t: {script: [x]}"), start_run(engine, "t: {script: [x]}")
    with session_scope(engine) as session:
        record_archive_source(session, first, "1" * 64)
        record_archive_source(session, second, "1" * 64)
    run_job(engine, first, "t", now=10)  # ended at T0 + 11 s
    with session_scope(engine) as session:  # second is unfinished: kept; the orphan is too young
        assert expire_source_archives(session, ended_before=T0 + 30 * DAY, stored_before=T0 + DAY) == 0
    with session_scope(engine) as session:
        cancel_run(session, second, T0 + 5 * DAY)  # now both have ended
    with session_scope(engine) as session:  # ended recently (the cut-off is before the ends): kept
        assert expire_source_archives(session, ended_before=T0, stored_before=T0 + 2 * DAY) == 1  # the orphan
    with read_scope(engine) as session:
        assert archive_bytes(session, "1" * 64) == tree and archive_bytes(session, "2" * 64) is None
    with session_scope(engine) as session:
        assert expire_source_archives(session, ended_before=T0 + 6 * DAY, stored_before=T0 + 2 * DAY) == 1
    with read_scope(engine) as session:
        assert archive_bytes(session, "1" * 64) is None


def test_expired_files_are_noted_for_every_host_and_pruned_after_a_while(engine: Engine) -> None:
    """An expired artifact and a replaced cache archive are noted once each, readable from a
    cursor (never one noted after the given time), and pruned by age."""
    run_id = start_run(engine, "t: {script: [x], artifacts: {paths: [a], expire_in: 1 hour}}")
    kept = {"path": "a", "size": 1, "sha256": "a" * 64}
    run_job(engine, run_id, "t", record(artifacts=[kept]), now=1)
    with session_scope(engine) as session:
        cache_store(session, "k", "trusted", "b" * 64, 1, at(10))
        cache_store(session, "k", "trusted", "b" * 64, 1, at(20))  # the same archive again: nothing replaced
        cache_store(session, "k", "trusted", "c" * 64, 1, at(30))  # b is replaced
        assert [e.sha256 for e in expire_artifacts(session, at(3600 + 5))] == ["a" * 64]
    with read_scope(engine) as session:
        noted = expired_blobs_after(session, 0, at(10_000))
        assert [sha for _, sha in noted] == ["b" * 64, "a" * 64]
        assert expired_blobs_after(session, 0, at(1000)) == noted[:1]  # a was noted later
        assert expired_blobs_after(session, noted[0][0], at(10_000)) == noted[1:]
        assert last_expired_blob_id(session) == noted[1][0]
    with session_scope(engine) as session:
        assert prune_expired_blobs(session, at(1000)) == 1
    with read_scope(engine) as session:
        assert [sha for _, sha in expired_blobs_after(session, 0, at(10_000))] == ["a" * 64]
    assert jobs(engine, run_id)["t"].status == "succeeded"


def test_known_repositories(engine: Engine) -> None:
    """Which mirror names are registered repositories, once a repository is removed too."""
    kept, removed = _repo(engine, "o/kept"), _repo(engine, "o/gone")
    with session_scope(engine) as session:
        repos.remove_repository(session, removed)
    with read_scope(engine) as session:
        assert known_repositories(session, [kept, removed, "never-was"]) == {kept}
        assert known_repositories(session, []) == set()
