"""What a job starts with from the jobs it takes artifacts from (``reads.artifact_inputs``), on
SQLite and PostgreSQL: never an expired artifact, and which of those jobs had artifacts that are
gone (expired, or removed by the sweeper), as GitLab's dependency check sees it."""

from __future__ import annotations

from typing import Any

from sqlalchemy.engine import Engine

from pipelines.store.db import session_scope
from pipelines.store.reads import ArtifactInputs, artifact_inputs
from pipelines.store.retention import expire_artifacts
from pipelines.store.transitions.retry import retry_job
from tests.integration.store.conftest import at, jobs, record, run_job, start_run

PIPELINE = """
stages: [build, test]
short:
  stage: build
  script: [make]
  artifacts: {paths: [dist/], expire_in: 60 seconds}
kept:
  stage: build
  script: [make]
  artifacts: {paths: [keep/]}
nothing:
  stage: build
  script: [make]
test:
  stage: test
  script: [make check]
"""
DEPENDENCIES = ("short", "kept", "nothing")


def _artifact(path: str, sha: str) -> dict[str, Any]:
    return {"path": path, "size": 1, "sha256": sha * 64}


def _inputs(engine: Engine, run_id: str, seconds: float) -> ArtifactInputs:
    with session_scope(engine) as session:
        return artifact_inputs(session, run_id, DEPENDENCIES, at(seconds))


def _built(engine: Engine) -> str:
    run_id = start_run(engine, PIPELINE)
    run_job(engine, run_id, "short", record(artifacts=[_artifact("dist/app", "a")]))  # ends at 2 s: expires at 62 s
    run_job(engine, run_id, "kept", record(artifacts=[_artifact("keep/lib", "b")]))
    run_job(engine, run_id, "nothing")
    return run_id


def test_live_artifacts_are_inputs_and_nothing_is_missing(engine: Engine) -> None:
    """Before any expiry: every artifact of the named jobs, in the order they were kept; none is
    gone, and a job that kept no artifacts is no reason to fail."""
    run_id = _built(engine)
    assert _inputs(engine, run_id, 30) == ArtifactInputs((("dist/app", "a" * 64), ("keep/lib", "b" * 64)), ())


def test_an_expired_artifact_is_never_an_input_and_its_job_is_named(engine: Engine) -> None:
    """Once ``short``'s artifacts have expired they are no input, before the sweeper removes their
    rows and after; either way ``short`` is named as the dependency whose artifacts are gone."""
    run_id = _built(engine)
    expected = ArtifactInputs((("keep/lib", "b" * 64),), ("short",))
    assert _inputs(engine, run_id, 63) == expected
    with session_scope(engine) as session:
        assert [item.path for item in expire_artifacts(session, at(64))] == ["dist/app"]
    assert _inputs(engine, run_id, 65) == expected


def test_a_retried_dependency_counts_by_its_new_attempt(engine: Engine) -> None:
    """A retry expires the old attempt's artifacts: while the job runs again it lists none, so it
    is not named; its new attempt's artifacts are the inputs; a new attempt that keeps none is
    no reason to fail either."""
    run_id = _built(engine)
    short = jobs(engine, run_id)["short"].id
    with session_scope(engine) as session:
        retry_job(session, short, at(10))
    assert _inputs(engine, run_id, 11) == ArtifactInputs((("keep/lib", "b" * 64),), ())
    run_job(engine, run_id, "short", record(artifacts=[_artifact("dist/app", "c")]), now=12)
    assert _inputs(engine, run_id, 20).files == (("keep/lib", "b" * 64), ("dist/app", "c" * 64))
    with session_scope(engine) as session:
        retry_job(session, short, at(30))
    run_job(engine, run_id, "short", now=31)
    assert _inputs(engine, run_id, 40) == ArtifactInputs((("keep/lib", "b" * 64),), ())


def test_no_named_jobs_read_nothing(engine: Engine) -> None:
    """``dependencies: []`` names no job: no artifacts, nothing gone, and no query."""
    run_id = _built(engine)
    with session_scope(engine) as session:
        assert artifact_inputs(session, run_id, (), at(100)) == ArtifactInputs()
