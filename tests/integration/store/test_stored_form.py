"""A run's jobs stored compactly (shared variables once per run, stage order as a count) and
read back whole, on both databases."""

from __future__ import annotations

import json

import sqlalchemy as sa
from alembic import command
from sqlalchemy.engine import Engine

from pipelines.store.db import alembic_config, make_engine, migrate, session_scope
from pipelines.store.models import Job
from pipelines.store.reads import planned_jobs, queued_job_ids, run_jobs
from pipelines.store.spec import job_from_spec, job_to_spec
from pipelines.store.transitions import claim_job, create_run
from tests.integration.store.conftest import T0, at, planned


def pipeline(builds: int) -> str:
    lines = ["stages: [build, test, deploy]"]
    lines += [f"build-{i}: {{stage: build, script: [make]}}" for i in range(builds)]
    lines += ["test: {stage: test, script: [pytest], needs: [build-0]}", "deploy: {stage: deploy, script: [ship]}"]
    return "\n".join(lines) + "\n"


def _create(engine: Engine, text: str) -> str:
    with session_scope(engine) as session:
        return create_run(session, planned(text), trust="trusted", source="api", variables={}, now=T0,
                         pipeline=text).run.id


def _raw_spec_sizes(engine: Engine, run_id: str) -> dict[str, int]:
    with engine.connect() as connection:
        rows = connection.execute(sa.text("SELECT name, spec FROM job WHERE run_id = :r"), {"r": run_id}).all()
    return {name: len(spec if isinstance(spec, str) else json.dumps(spec)) for name, spec in rows}


def test_a_stage_ordered_job_stores_as_much_in_a_big_run_as_in_a_small_one(engine: Engine) -> None:
    """deploy waits for every earlier job: its stored row does not grow with their number (it
    did: one name per earlier job), nor does any job's with the pipeline-wide variables."""
    small, big = _create(engine, pipeline(2)), _create(engine, pipeline(300))
    small_sizes, big_sizes = _raw_spec_sizes(engine, small), _raw_spec_sizes(engine, big)
    assert big_sizes["deploy"] <= small_sizes["deploy"] + 8  # a wider count, nothing more
    assert max(big_sizes.values()) < 700


def test_every_read_gives_the_jobs_back_whole(engine: Engine) -> None:
    """run_jobs and planned_jobs return exactly what the planner made (the predefined variables,
    every predecessor's name), and ``needs`` as before."""
    text = pipeline(30)
    run_id = _create(engine, text)
    expected = planned(text)
    with session_scope(engine) as session:
        jobs = run_jobs(session, run_id)
        assert planned_jobs(session, run_id) == list(expected.jobs)
    assert [job.spec for job in jobs] == [job_to_spec(job) for job in expected.jobs]
    by_name = {job.name: job for job in jobs}
    assert len(by_name["deploy"].needs) == 31 and by_name["deploy"].needs[0] == "build-0"
    assert by_name["test"].needs == ["build-0"]


def test_the_claim_returns_the_whole_spec(engine: Engine) -> None:
    """A worker's claim gets the spec it will run, equal to the planner's job."""
    text = pipeline(3)
    run_id = _create(engine, text)
    with session_scope(engine) as session:
        job_id = queued_job_ids(session, run_id)[0]
        claimed = claim_job(session, job_id, "w1", at(1), lease_s=30)
        assert claimed is not None
        whole = {job.name: job.spec for job in run_jobs(session, run_id)}
    assert claimed.spec == whole[claimed.name]
    assert {"CI_COMMIT_SHA", "CI_JOB_NAME"} <= {pair[0] for pair in claimed.spec["variables"]}


def test_what_create_run_returns_is_what_it_wrote(engine: Engine) -> None:
    """The snapshots create_run returns equal the rows read back, column by column (the columns
    it writes as constants included)."""
    text = pipeline(5)
    with session_scope(engine) as session:
        stored = create_run(session, planned(text), trust="trusted", source="api", variables={}, now=T0,
                           pipeline=text)
    with session_scope(engine) as session:
        read = {job.id: job for job in run_jobs(session, stored.run.id)}
    columns = [c.name for c in Job.__table__.columns]  # type: ignore[attr-defined]
    for job in stored.jobs:
        assert {c: getattr(job, c) for c in columns} == {c: getattr(read[job.id], c) for c in columns}


def test_downgrading_revision_0006_writes_the_whole_specs_back(db_url: str) -> None:
    """Below revision 0006 the older code reads job specs as they are: the downgrade puts the
    run's shared variables and stage-order names back into every job's spec and needs (a field
    left at its default stays out: every reader fills those in)."""
    migrate(db_url)
    engine = make_engine(db_url)
    try:
        text = pipeline(4)
        run_id = _create(engine, text)
        command.downgrade(alembic_config(db_url), "0005")
        with engine.connect() as connection:
            rows = connection.execute(sa.text("SELECT name, spec, needs FROM job WHERE run_id = :r"),
                                      {"r": run_id}).all()
        expected = {job.name: job for job in planned(text).jobs}
        for name, spec, needs in rows:
            spec = json.loads(spec) if isinstance(spec, str) else spec
            needs = json.loads(needs) if isinstance(needs, str) else needs
            assert "shared_variables" not in spec and isinstance(spec.get("depends_on", []), list)
            assert job_from_spec(spec) == expected[name]  # what the older code rebuilds
            assert needs == list(expected[name].depends_on)
        migrate(db_url)
    finally:
        engine.dispose()
