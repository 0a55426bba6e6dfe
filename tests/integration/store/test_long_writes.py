"""A big run's writes never starve other runs: small runs keep moving while one is created and advanced."""

from __future__ import annotations

import threading
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from pipelines.store.db import make_engine, session_scope
from pipelines.store.reads import queued_job_ids
from pipelines.store.transitions import claim_job, create_run, finish_job
from tests.integration.store.conftest import at, planned, record, start_run

# Shorter than the store's 30 s, so a write that holds SQLite's lock for long shows up as the
# error a client would get ("database is locked"), not as a slow test.
BUSY_TIMEOUT_MS = 5_000
BIG_TRANSITIONS = 30


def big_pipeline(builds: int = 1_000, tests: int = 990, deploys: int = 10) -> str:
    """2,000 jobs: a stage of builds, tests that each need one build, deploys after everything."""
    lines = ["stages: [build, test, deploy]"]
    lines += [f"build-{i}: {{stage: build, script: [make]}}" for i in range(builds)]
    lines += [f"test-{i}: {{stage: test, script: [pytest], needs: [build-{i % builds}]}}" for i in range(tests)]
    lines += [f"deploy-{i}: {{stage: deploy, script: [ship]}}" for i in range(deploys)]
    return "\n".join(lines) + "\n"


def _impatient(db_url: str) -> Engine:
    engine = make_engine(db_url)
    if engine.dialect.name == "sqlite":

        @sa.event.listens_for(engine, "connect")
        def _busy_timeout(dbapi_connection: Any, _record: Any) -> None:  # runs after make_engine's own
            cursor = dbapi_connection.cursor()
            cursor.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            cursor.close()

    return engine


def test_small_runs_keep_moving_while_a_big_run_is_created_and_advanced(engine: Engine, db_url: str) -> None:
    """One thread creates a 2,000-job run and finishes 30 of its jobs; meanwhile another
    creates, claims and finishes one-job runs. Every small-run transition succeeds (none
    fails on a lock), and the small runs made progress during the big run's writes."""
    impatient = _impatient(db_url)
    text = big_pipeline()
    big_plan = planned(text)
    big_done = threading.Event()
    big_errors: list[BaseException] = []
    big_finished: list[str] = []

    def big_run() -> None:
        try:
            with session_scope(impatient) as session:
                run_id = create_run(session, big_plan, trust="trusted", source="api", variables={}, now=at(0),
                                    pipeline=text).run.id
            with session_scope(impatient) as session:
                ready = queued_job_ids(session, run_id)[:BIG_TRANSITIONS]
            for job_id in ready:
                with session_scope(impatient) as session:
                    job = claim_job(session, job_id, "w-big", at(1), lease_s=30)
                assert job is not None
                with session_scope(impatient) as session:
                    finish_job(session, job_id, job.attempt, record(), at(2))
                big_finished.append(job_id)
        except BaseException as exc:  # reported below
            big_errors.append(exc)
        finally:
            big_done.set()

    small_ok = 0
    small_errors: list[BaseException] = []
    during_big = 0
    thread = threading.Thread(target=big_run)
    thread.start()
    try:
        while not big_done.is_set() or small_ok < 5:
            try:
                run_id = start_run(impatient, "one: {script: [ok]}\n")
                with session_scope(impatient) as session:
                    (job_id,) = queued_job_ids(session, run_id)
                with session_scope(impatient) as session:
                    job = claim_job(session, job_id, "w-small", at(1), lease_s=30)
                assert job is not None
                with session_scope(impatient) as session:
                    assert finish_job(session, job_id, job.attempt, record(), at(2)) == []
                small_ok += 1
                during_big += not big_done.is_set()
            except sa.exc.OperationalError as exc:  # "database is locked": starved by the big run
                small_errors.append(exc)
                if len(small_errors) >= 3:
                    break
    finally:
        thread.join(timeout=600)
        impatient.dispose()
    assert big_errors == [] and len(big_finished) == BIG_TRANSITIONS
    assert small_errors == []
    assert small_ok >= 5 and during_big >= 1
