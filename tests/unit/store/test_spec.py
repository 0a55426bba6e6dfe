"""The planned job survives the trip through JSON."""

from __future__ import annotations

import json

import pytest

from pipelines.language.model import Job, Plan
from pipelines.language.planner import plan
from pipelines.store.spec import (
    job_from_spec,
    job_to_spec,
    restore_spec,
    shared_variables,
    spec_field,
    stored_spec_json,
)

PIPELINE = """
stages: [build, test]
build:
  stage: build
  image: {name: debian, entrypoint: [""]}
  script: [make]
  artifacts: {paths: [dist], expire_in: 1 week}
  retry: {max: 2, when: script_failure, exit_codes: [1]}
  timeout: 10m
  sandbox: {memory: 256M, network: egress}
test:
  stage: test
  needs: [{job: build, artifacts: true}]
  parallel: {matrix: [{PY: ["3.11", "3.12"]}]}
  script: [pytest]
  allow_failure: {exit_codes: [3]}
  cache: {key: deps, paths: [.cache]}
  when: manual
"""


def _jobs() -> list[Job]:
    result = plan({"ci.yml": PIPELINE})
    assert isinstance(result, Plan)
    return list(result.jobs)


@pytest.mark.parametrize("job", _jobs(), ids=lambda j: j.name)
def test_job_round_trips_through_json(job: Job) -> None:
    """job_from_spec(json(job_to_spec(job))) gives back an equal job, nested values included."""
    spec = json.loads(json.dumps(job_to_spec(job)))
    assert job_from_spec(spec) == job


def test_unknown_keys_from_a_newer_writer_are_ignored() -> None:
    """A spec with a field this version does not know still loads."""
    job = _jobs()[0]
    spec = {**job_to_spec(job), "future_field": 1}
    assert job_from_spec(spec) == job


STAGES = """
stages: [build, test, deploy]
variables: {GLOBAL: "1"}
build-a: {stage: build, script: [make]}
build-b: {stage: build, script: [make], variables: {OWN: x}}
test: {stage: test, script: [pytest], needs: [build-a], retry: 1, timeout: 5m}
lint: {stage: test, script: [ruff]}
deploy: {stage: deploy, script: [ship], when: manual, allow_failure: false}
"""


def _stored_round_trip(text: str) -> list[tuple[Job, dict[str, object], dict[str, object]]]:
    planned = plan({"ci.yml": text})
    assert isinstance(planned, Plan)
    shared = shared_variables(planned.jobs)
    names = [job.name for job in planned.jobs]
    out = []
    for job in planned.jobs:
        leading = job.needs is None and bool(job.depends_on) and list(job.depends_on) == names[: len(job.depends_on)]
        stored = json.loads(stored_spec_json(job, shared_variables=len(shared), leading_jobs=leading))
        out.append((job, stored, restore_spec(stored, [list(p) for p in shared], names)))
    return out


@pytest.mark.parametrize("text", [PIPELINE, STAGES], ids=["matrix", "stages"])
def test_a_stored_spec_restores_to_the_whole_spec(text: str) -> None:
    """What a run's row stores, put back with the run's shared variables and first job names,
    is exactly job_to_spec of the planned job, and rebuilds an equal job."""
    for job, _stored, restored in _stored_round_trip(text):
        assert restored == job_to_spec(job)
        assert job_from_spec(restored) == job


def test_a_stored_spec_holds_neither_the_shared_variables_nor_stage_order_names() -> None:
    """The predefined variables are stored once per run, and a stage-ordered job stores how many
    leading jobs it waits for, not their names; a job with needs keeps its names."""
    by_name = {job.name: stored for job, stored, _ in _stored_round_trip(STAGES)}
    assert by_name["deploy"]["depends_on"] == 4
    assert by_name["lint"]["depends_on"] == 2
    assert by_name["test"]["depends_on"] == ["build-a"]
    for name, stored in by_name.items():
        names = {pair[0] for pair in stored.get("variables", [])}  # type: ignore[attr-defined]
        assert "CI_COMMIT_SHA" not in names and "GLOBAL" not in names
        assert "sandbox" not in stored  # a default is left out
        assert ("retry" in stored) == (name == "test")
    assert [pair for pair in by_name["build-b"]["variables"] if pair[0] == "OWN"] == [["OWN", "x"]]  # type: ignore[index]


def test_a_stored_spec_is_refused_until_restored() -> None:
    """job_from_spec will not rebuild a job from a stored spec (its variables would be missing)."""
    _job, stored, _restored = _stored_round_trip(STAGES)[-1]
    with pytest.raises(ValueError, match="restore_spec"):
        job_from_spec(stored)


def test_restore_refuses_a_run_that_lacks_what_the_spec_counts_on() -> None:
    """Fewer shared variables or first names than the stored spec needs is an error, not a
    silently shorter job."""
    _job, stored, _restored = _stored_round_trip(STAGES)[-1]
    with pytest.raises(ValueError, match="job variables"):
        restore_spec(stored, [], ["a", "b", "c", "d"])
    with pytest.raises(ValueError, match="first 4 job names"):
        restore_spec(stored, [["x", "y"]] * 100, ["a"])


@pytest.mark.parametrize(("name", "expected"), [
    ("timeout_seconds", 300), ("when", "on_success"), ("sandbox", Job("x", "t", _jobs()[0].loc).sandbox),
])
def test_spec_field_reads_one_field_of_a_stored_spec(name: str, expected: object) -> None:
    """A transition reads one field (timeout, retry, ...) of a stored spec, defaults included."""
    stored = {job.name: s for job, s, _ in _stored_round_trip(STAGES)}["test"]
    assert spec_field(stored, name) == expected


def test_spec_field_will_not_read_what_a_stored_spec_leaves_out() -> None:
    """variables and depends_on come only from restore_spec."""
    with pytest.raises(ValueError, match="restore_spec"):
        spec_field({}, "variables")


def test_a_whole_spec_from_before_the_stored_form_restores_unchanged() -> None:
    """A run stored before revision 0006 has whole specs and no job_variables: nothing to do."""
    job = _jobs()[0]
    assert restore_spec(job_to_spec(job), [], []) == job_to_spec(job)
