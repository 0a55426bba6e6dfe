"""The incremental advance in the database: the run's counters stay true, a transition's work
does not grow with the run, and runs in flight across revision 0004 go on as before."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlmodel import Session

from pipelines.store.db import make_engine, migrate, session_scope
from pipelines.store.models import UTCDateTime
from pipelines.store.reads import run_counts, run_status
from pipelines.store.spec import job_to_spec
from pipelines.store.transitions import (
    cancel_job,
    cancel_run,
    claim_job,
    expire_leases,
    finish_job,
    play_job,
)
from tests.integration.store.conftest import at, jobs, planned, record, run_job, start_run, statuses

MIXED = """
stages: [build, test, deploy, cleanup]
build: {stage: build, script: [make]}
lint: {stage: build, script: [lint], allow_failure: true}
flaky: {stage: build, script: [x], retry: {max: 1, when: [runner_system_failure]}}
unit: {stage: test, script: [pytest], needs: [build]}
e2e: {stage: test, script: [e2e], needs: [build, flaky]}
notify: {stage: test, script: [mail], when: on_failure}
ship: {stage: deploy, script: [ship], when: manual}
gate: {stage: deploy, script: [gate], when: manual, allow_failure: false}
verify: {stage: deploy, script: [curl], needs: [unit]}
cleanup: {stage: cleanup, script: [rm], when: always}
"""


def _assert_counts_true(engine: Engine, run_id: str) -> None:
    with session_scope(engine) as session:
        stored, fresh = run_counts(session, run_id)
        assert stored == fresh
        assert stored.status(run_cancelled=False) == run_status(session, run_id)


def test_counters_stay_true_through_every_kind_of_transition(engine: Engine) -> None:
    """After finishes, an allowed failure, a retry by lease expiry, a play, a cancelled job and a
    cancelled run, the run's stored counters equal a fresh count of its jobs."""
    run_id = start_run(engine, MIXED)
    _assert_counts_true(engine, run_id)
    run_job(engine, run_id, "build")
    run_job(engine, run_id, "lint", record("failed", 1))
    flaky = jobs(engine, run_id)["flaky"].id
    with session_scope(engine) as session:
        assert claim_job(session, flaky, "w1", at(1), lease_s=5) is not None
    with session_scope(engine) as session:
        assert expire_leases(session, at(30)) == [flaky]  # worker_lost, retried
    _assert_counts_true(engine, run_id)
    run_job(engine, run_id, "flaky")
    run_job(engine, run_id, "unit")
    _assert_counts_true(engine, run_id)
    assert statuses(engine, run_id)["e2e"] == ("queued", None)
    run_job(engine, run_id, "e2e")
    got = statuses(engine, run_id)
    assert got["notify"] == ("skipped", None) and got["verify"] == ("queued", None)
    assert got["gate"] == ("manual", None)
    with session_scope(engine) as session:
        assert cancel_job(session, jobs(engine, run_id)["verify"].id, at(5)) == []  # gate blocks cleanup
    with session_scope(engine) as session:
        ship = jobs(engine, run_id)["ship"]
        assert ship.status == "manual"
    _assert_counts_true(engine, run_id)
    with session_scope(engine) as session:
        assert play_job(session, ship.id, at(6)) == [ship.id]
    _assert_counts_true(engine, run_id)
    with session_scope(engine) as session:
        cancel_run(session, run_id, at(7))
    with session_scope(engine) as session:
        stored, fresh = run_counts(session, run_id)
        assert stored == fresh


def _chain(size: int) -> str:
    """``size`` jobs: pairs a-i (build) and b-i (needs a-i), so finishing a-0 queues b-0 only."""
    half = size // 2
    return "stages: [build, test]\n" + "".join(
        f"a-{i}: {{stage: build, script: [x]}}\nb-{i}: {{stage: test, script: [y], needs: [a-{i}]}}\n"
        for i in range(half)
    )


def _sqlite_steps(engine: Engine, action: Callable[[Session], Any]) -> int:
    """SQLite virtual-machine steps (in thousands) that ``action`` costs in one transaction:
    the database's work, whatever the machine's speed."""
    steps = 0

    def count() -> int:
        nonlocal steps
        steps += 1
        return 0

    with engine.connect() as connection:
        raw = connection.connection.dbapi_connection
        assert raw is not None
        raw.set_progress_handler(count, 1000)
        try:
            with connection.begin(), Session(bind=connection) as session:
                action(session)
        finally:
            raw.set_progress_handler(None, 1000)
    return steps


@pytest.mark.parametrize("transition", ["finish", "cancel", "play"])
def test_one_transition_costs_the_same_in_a_small_and_a_big_run(tmp_path: Path, transition: str) -> None:
    """Finishing, cancelling or playing one job of a 2,000-job run costs the database about
    what it costs in a 20-job run (SQLite VM steps): it touches the job and its dependents."""
    url = f"sqlite:///{tmp_path / 'steps.db'}"
    migrate(url)
    engine = make_engine(url)
    try:
        cost = {}
        for size in (20, 2_000):
            text = _chain(size).replace("a-0: {stage: build,", "a-0: {stage: build, when: manual,")
            run_id = start_run(engine, text)
            by_name = jobs(engine, run_id)
            target = by_name["a-1"].id
            if transition == "finish":
                with session_scope(engine) as session:
                    assert claim_job(session, target, "w1", at(1), lease_s=30) is not None
                action: Callable[[Session], Any] = lambda s, t=target: finish_job(s, t, 1, record(), at(2))  # noqa: E731
            elif transition == "cancel":
                action = lambda s, t=target: cancel_job(s, t, at(2))  # noqa: E731
            else:
                action = lambda s, t=by_name["a-0"].id: play_job(s, t, at(2))  # noqa: E731
            cost[size] = _sqlite_steps(engine, action)
        assert cost[2_000] <= 2 * cost[20] + 5, cost
    finally:
        engine.dispose()


_CHAIN = """
stages: [build, test, deploy]
build: {stage: build, script: [make]}
test: {stage: test, script: [pytest]}
deploy: {stage: deploy, script: [ship]}
lint: {stage: test, script: [lint], needs: [build]}
"""


def test_a_run_in_flight_before_revision_0004_goes_on_after_it(db_url: str) -> None:
    """A run stored at revision 0003 (build succeeded, test and lint queued, deploy waiting)
    is counted by the data migration and advances as before: the last job of a stage queues
    deploy, the run ends succeeded."""
    migrate(db_url, "0003")
    old = make_engine(db_url)
    now = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
    json_columns = {"variables", "secrets", "stages", "spec", "needs", "usage", "result"}
    time_columns = {"created_at", "queued_at", "finished_at"}

    def table(name: str, *columns: str) -> Any:
        typed = [sa.column(c, sa.JSON if c in json_columns else UTCDateTime if c in time_columns else None)
                 for c in columns]
        return sa.table(name, *typed)

    run = table("run", "id", "created_at", "status", "cancelled", "trust", "source", "pipeline", "variables",
                "secrets", "stages", "ref", "sha", "message")
    job = table("job", "id", "run_id", "position", "name", "stage", "spec", "needs", "when", "allow_failure",
                "status", "attempt", "cancel_requested", "usage", "result", "queued_at", "finished_at")
    plan = planned(_CHAIN)
    state = {"build": "succeeded", "test": "queued", "lint": "queued", "deploy": "created"}
    try:
        with old.begin() as connection:
            connection.execute(run.insert().values(
                id="r1", created_at=now, status="running", cancelled=False, trust="trusted", source="api",
                pipeline=_CHAIN, variables={}, secrets={}, stages=list(plan.stages), ref="", sha="", message=""))
            connection.execute(job.insert(), [
                {"id": f"j-{p.name}", "run_id": "r1", "position": i, "name": p.name, "stage": p.stage,
                 "spec": job_to_spec(p), "needs": list(p.depends_on), "when": p.when, "allow_failure": False,
                 "status": state[p.name], "attempt": 0, "cancel_requested": False, "usage": {}, "result": {},
                 "queued_at": now, "finished_at": now if state[p.name] == "succeeded" else None}
                for i, p in enumerate(plan.jobs)
            ])
    finally:
        old.dispose()
    migrate(db_url)
    engine = make_engine(db_url)
    try:
        _assert_counts_true(engine, "r1")
        assert run_job(engine, "r1", "test") == []  # lint still runs: deploy waits
        assert run_job(engine, "r1", "lint") == ["j-deploy"]
        run_job(engine, "r1", "deploy")
        with session_scope(engine) as session:
            assert run_status(session, "r1") == "succeeded"
        _assert_counts_true(engine, "r1")
        assert statuses(engine, "r1")["deploy"] == ("succeeded", None)
    finally:
        engine.dispose()
