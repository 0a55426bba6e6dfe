"""``image: {name, pull_policy}`` as GitLab writes it: read in order, refused when unknown (pure),
and kept through the stored job spec to the worker that pulls."""

from __future__ import annotations

import pytest

from pipelines.language.planner import plan
from pipelines.language.problems import Problems
from pipelines.store.spec import job_from_spec, job_to_spec


@pytest.mark.parametrize("written, policy", [
    ("always", ("always",)), ("[always, if-not-present]", ("always", "if-not-present")), ("never", ("never",)),
])
def test_pull_policy_is_read_in_order_and_survives_the_spec(written, policy):
    result = plan({"ci.yml": f"t:\n  image: {{name: 'reg.example/x:1', pull_policy: {written}}}\n  script: [x]\n"})
    assert not isinstance(result, Problems)
    (job,) = result.jobs
    assert job.image is not None and job.image.pull_policy == policy
    assert job_from_spec(job_to_spec(job)).image.pull_policy == policy


def test_without_pull_policy_the_worker_decides():
    result = plan({"ci.yml": "t:\n  image: {name: debian}\n  script: [x]\n"})
    assert not isinstance(result, Problems)
    assert result.jobs[0].image.pull_policy is None


@pytest.mark.parametrize("written", ["sometimes", "[always, later]", "[]"])
def test_an_unknown_pull_policy_is_an_error_at_its_location(written):
    result = plan({"ci.yml": f"t:\n  image: {{name: debian, pull_policy: {written}}}\n  script: [x]\n"})
    assert isinstance(result, Problems)
    assert any("pull_policy" in p.message and p.loc.line == 2 for p in result.errors)
