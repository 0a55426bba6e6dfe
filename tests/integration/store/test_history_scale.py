"""What one job costs must not grow with the history: every statement on a job's path, the
sweeper's, retention's and the API's reads a job hits is planned on an index, never as a read of
a whole history table (``job``, ``run``, their attempts, edges, artifacts, outbox rows, web-hook
deliveries and commit statuses), on SQLite and PostgreSQL.

The statements are not listed by hand: each operation runs for real on a store that holds a few
finished runs, every statement it sends is recorded, and each is then explained with its own
parameters (SQLite ``EXPLAIN QUERY PLAN``, made without statistics as sandpit's databases are;
PostgreSQL ``EXPLAIN`` with ``enable_seqscan`` off, so a sequential scan in the plan means no index
could serve the statement, whatever the table's size). The timings live in bench/bench_history.py.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from pipelines.retention import RetentionSettings, collect
from pipelines.store import listing, reads, repos
from pipelines.store.db import session_scope
from pipelines.store.inflight import count_runs_in_flight, record_submitter
from pipelines.store.outbox import pending_outbox, requeue_stale
from pipelines.store.retention import blob_referenced, expire_artifacts
from pipelines.store.transitions import claim_job, create_run, expire_leases, finish_job, renew_lease
from pipelines.store.workers import list_workers
from tests.integration.store.conftest import T0, at, planned, record, run_job, start_run

HISTORY_TABLES = ("job", "run", "job_attempt", "job_edge", "artifact", "outbox", "webhook_delivery", "commit_status")
PIPELINE = """\
stages: [build, test, deploy]
build: {stage: build, script: [make], artifacts: {paths: [dist/], expire_in: 1 day}}
test: {stage: test, script: [pytest], needs: [build]}
lint: {stage: test, script: [ruff]}
deploy: {stage: deploy, script: [ship]}
"""
ONE_JOB = "job:\n  script: [make]\n  artifacts: {paths: [out/], expire_in: 1 day}\n"
# an ordered walk of the whole list, read newest first and stopped at the page's end: the one
# plan allowed to name no condition (every row it reads is shown)
ORDERED_WALKS = {"GET runs": "SCAN run USING INDEX ix_run_created_at"}


def whole_reads(connection: sa.Connection, statement: str, parameters: Any) -> list[str]:
    """The parts of the plan of ``statement`` that read all of a history table or index."""
    if connection.dialect.name == "sqlite":
        rows = connection.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, parameters).all()
        return [str(row[3]) for row in rows
                if any(str(row[3]) == f"SCAN {t}" or str(row[3]).startswith(f"SCAN {t} ") for t in HISTORY_TABLES)]
    connection.exec_driver_sql("SET LOCAL enable_seqscan = off")
    plan = connection.exec_driver_sql("EXPLAIN (FORMAT JSON) " + statement, parameters).scalar_one()
    if isinstance(plan, str):
        plan = json.loads(plan)
    # each index's first column, and whether it is partial (it holds only the rows its predicate keeps)
    indexes = {str(row[0]): (str(row[1]), bool(row[2])) for row in connection.exec_driver_sql(
        "SELECT c.relname, a.attname, i.indpred IS NOT NULL FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid"
        " JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]")}
    found: list[str] = []

    def walk(node: dict[str, Any], under_limit: bool) -> None:
        table, kind = node.get("Relation Name"), str(node.get("Node Type", ""))
        if table in HISTORY_TABLES:
            first, partial = indexes.get(str(node.get("Index Name")), ("", False))
            # a condition on a later column of the index still reads all of it
            bounded = partial or re.search(rf"\b{first}\b", str(node.get("Index Cond", ""))) is not None
            if kind == "Seq Scan":
                found.append(f"Seq Scan on {table}")
            elif "Index" in kind and not bounded and (not under_limit or "Filter" in node):
                found.append(f"{kind} on {table} using {node.get('Index Name')} without a condition on {first}")
        for child in node.get("Plans", ()):
            walk(child, under_limit or kind == "Limit")

    walk(plan[0]["Plan"], False)
    return found


@contextmanager
def recorded(engine: Engine) -> Iterator[list[tuple[str, Any]]]:
    """The statements (and each one's first parameter set) sent on ``engine`` inside the block."""
    seen: list[tuple[str, Any]] = []

    def before(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool) -> None:
        if statement.lstrip().split(None, 1)[0].upper() in ("SELECT", "UPDATE", "DELETE", "INSERT", "WITH"):
            seen.append((statement, parameters[0] if executemany and parameters else parameters))

    sa.event.listen(engine, "before_cursor_execute", before)
    try:
        yield seen
    finally:
        sa.event.remove(engine, "before_cursor_execute", before)


def history(engine: Engine) -> dict[str, str]:
    """A few finished runs as the store makes them (one of a web-hook, with its delivery and
    statuses), and ids to read back."""
    run_ids = [start_run(engine, PIPELINE) for _ in range(3)]
    for run_id in run_ids:
        run_job(engine, run_id, "build", record(artifacts=[{"path": "dist/a", "size": 3, "sha256": "a" * 64}]), now=1)
        for name in ("test", "lint", "deploy"):
            run_job(engine, run_id, name, now=3)
    with session_scope(engine) as session:
        repo = repos.add_repository(session, repos.NewRepository(
            name="acme/app", forge="gitea", clone_url="http://127.0.0.1:9/a.git", secret_sealed="sealed"), T0)
        repos.link_run(session, run_ids[0], repo.id, kind="push", ref="main", merge_request_iid=None, from_fork=False)
        repos.record_delivery(session, repo.id, "push", "refused", 401, "bad signature", T0)
    with session_scope(engine) as session:
        build = next(j for j in reads.run_jobs(session, run_ids[1]) if j.name == "build")
    return {"run": run_ids[1], "job": build.id}


def operations(engine: Engine, state_dir: Path, old: dict[str, str]) -> list[tuple[str, Callable[[], object]]]:
    """What one job costs the service, step by step, in the order it happens."""
    now = at(600)
    made: dict[str, Any] = {}

    def create() -> None:
        with session_scope(engine) as session:
            count_runs_in_flight(session, "token:ci")
            stored = create_run(session, planned(ONE_JOB), trust="trusted", source="api", variables={}, now=now,
                                pipeline=ONE_JOB, ref="main", mark_sent=True)
            record_submitter(session, stored.run.id, "token:ci")
        made["job"] = stored.queued[0]

    def claim() -> None:
        with session_scope(engine) as session:
            job = claim_job(session, made["job"], "w-scale", now, lease_s=30)
        assert job is not None
        made["attempt"] = job.attempt

    def renew() -> None:
        with session_scope(engine) as session:
            assert renew_lease(session, made["job"], "w-scale", made["attempt"], now, lease_s=30).held
        assert not reads.stop_requested(engine, made["job"])

    def finish() -> None:
        artifact = {"path": "out/x", "size": 1, "sha256": "b" * 64}
        with session_scope(engine) as session:
            finish_job(session, made["job"], made["attempt"], record(artifacts=[artifact]), at(601))

    def in_session(action: Callable[[Any], object]) -> Callable[[], object]:
        def run() -> object:
            with session_scope(engine) as session:
                return action(session)
        return run

    def page(wanted: listing.RunFilter) -> Callable[[], object]:
        return in_session(lambda s: listing.list_runs(s, wanted))

    return [
        ("admission", in_session(lambda s: count_runs_in_flight(s, "token:ci"))),
        ("create", create),
        ("claim", claim),
        ("renew", renew),
        ("finish", finish),
        ("sweep leases", in_session(lambda s: expire_leases(s, now))),
        ("sweep queued", in_session(lambda s: requeue_stale(s, now, older_than_s=30) + pending_outbox(s))),
        ("sweep artifacts", in_session(lambda s: expire_artifacts(s, at(3 * 86400)))),
        ("blob referenced", in_session(lambda s: blob_referenced(s, "a" * 64))),
        ("retention", lambda: collect(engine, state_dir, RetentionSettings(), now, wait=True)),
        ("GET run", lambda: reads.read_run_view(engine, old["run"])),
        ("GET job", in_session(lambda s: (reads.job_row(s, old["job"]), reads.artifacts_of(s, old["job"])))),
        ("GET runs", page(listing.RunFilter())),
        ("GET runs ?status=running", page(listing.RunFilter(statuses=("running",)))),
        ("GET runs ?status=failed,cancelled", page(listing.RunFilter(statuses=("failed", "cancelled")))),
        ("GET runs ?ref=main", page(listing.RunFilter(ref="main"))),
        ("GET runs ?source=webhook,cli", page(listing.RunFilter(sources=("webhook", "cli")))),
        ("GET runs ?repository=acme/app", page(listing.RunFilter(repository="acme/app"))),
        ("GET runs ?before=", page(listing.RunFilter(before=(at(0), "~"), statuses=("succeeded",)))),
        ("GET workers", lambda: list_workers(engine, now)),
        ("GET /metrics", in_session(reads.status_counts)),
    ]


def whole_reads_of(engine: Engine, tmp_path: Path) -> list[str]:
    """Run every operation on a store with a history; the whole-table reads they planned."""
    old = history(engine)
    state = tmp_path / "state"
    state.mkdir()
    problems: list[str] = []
    for name, action in operations(engine, state, old):
        with recorded(engine) as seen:
            action()
        assert seen, f"{name} sent no statement: the recorder saw nothing"
        with engine.connect() as connection:
            for statement, parameters in seen:
                for part in whole_reads(connection, statement, parameters):
                    if part != ORDERED_WALKS.get(name):
                        problems.append(f"{name}: {part}\n    {' '.join(statement.split())[:300]}")
            connection.rollback()
    return problems


def test_no_step_of_a_job_reads_a_whole_history_table(engine: Engine, tmp_path: Path) -> None:
    """Every statement each step of a job's life sends (create with the admission count, claim,
    renewal, result, the sweeper's queries, a retention pass, the API's reads) has a plan that
    finds its rows through an index condition; a run list without filters may walk the
    ``created_at`` index in order (it stops at the page's end)."""
    problems = whole_reads_of(engine, tmp_path)
    assert not problems, "whole-table reads on a job's path:\n" + "\n".join(problems)


@pytest.mark.parametrize("statement", [
    "SELECT count(*) FROM job WHERE name = 'build'",
    "SELECT id FROM run WHERE message = 'x' ORDER BY created_at DESC LIMIT 5",
    "SELECT status, count(*) FROM job GROUP BY status",  # what /metrics counted before revision 0012
])
def test_the_plan_check_sees_a_whole_table_read(engine: Engine, statement: str) -> None:
    """The check itself finds a read of a whole table (a filter no index serves), so the test
    above can fail."""
    start_run(engine, PIPELINE)
    with engine.connect() as connection:
        assert whole_reads(connection, statement, {}), statement
        connection.rollback()
