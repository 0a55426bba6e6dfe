"""The planned job survives the trip through JSON."""

from __future__ import annotations

import json

import pytest

from pipelines.language.model import Job, Plan
from pipelines.language.planner import plan
from pipelines.store.spec import job_from_spec, job_to_spec

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
