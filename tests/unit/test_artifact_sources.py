"""Which jobs' artifacts a job starts with, as GitLab documents it (pure, through plan + artifact_sources)."""

from __future__ import annotations

import pytest

from pipelines.language.model import PipelineInputs, Plan
from pipelines.language.planner import plan
from worker.executor import artifact_sources

BASE = """
stages: [build, test]
b:
  stage: build
  script: [echo]
  artifacts: {paths: [out]}
m:
  stage: build
  script: [echo]
  parallel:
    matrix:
      - V: ['1', '2']
c:
  stage: build
  script: [echo]
"""


@pytest.mark.parametrize(("job", "expected"), [
    ("  script: [echo]\n", ["b", "c", "m: [1]", "m: [2]"]),                  # stage order: every earlier job
    ("  script: [echo]\n  dependencies: [b]\n", ["b"]),
    ("  script: [echo]\n  dependencies: []\n", []),
    ("  script: [echo]\n  dependencies: [m]\n", ["m: [1]", "m: [2]"]),          # a matrix job by its base name
    ("  script: [echo]\n  needs: [b, c]\n", ["b", "c"]),
    ("  script: [echo]\n  needs: []\n  dependencies: [b]\n", []),              # needs: [] downloads nothing
    ("  script: [echo]\n  needs: [{job: b, artifacts: false}]\n  dependencies: [b]\n", []),
    ("  script: [echo]\n  needs: [{job: b, artifacts: false}, c]\n", ["c"]),
    ("  script: [echo]\n  needs: [b, c]\n  dependencies: [c]\n", ["c"]),      # dependencies narrow needs
    ("  script: [echo]\n  needs:\n    - job: m\n      parallel: {matrix: [{V: '2'}]}\n", ["m: [2]"]),
    ("  script: [echo]\n  needs:\n    - job: m\n      parallel: {matrix: [{V: '9'}]}\n      optional: true\n", []),
])
def test_artifact_sources(job: str, expected: list[str]) -> None:
    """needs with artifacts: true, narrowed by dependencies; else dependencies; else earlier stages."""
    result = plan({".gitlab-ci.yml": BASE + "t:\n  stage: test\n" + job}, PipelineInputs())
    assert isinstance(result, Plan), result
    assert sorted(artifact_sources(result.job("t"))) == expected


NAMES = """
stages: [build, test]
b:
  stage: build
  script: [echo]
bx:
  stage: build
  script: [echo]
p:
  stage: build
  script: [echo]
  parallel: 2
"""


@pytest.mark.parametrize(("job", "expected"), [
    ("  dependencies: [b]\n", ["b"]),  # "bx" starts with "b" but is another job
    ("  dependencies: [p]\n", ["p 1/2", "p 2/2"]),  # a parallel job by its base name
    ("  dependencies: [p, bx]\n", ["bx", "p 1/2", "p 2/2"]),
    ("  needs: [p]\n", ["p 1/2", "p 2/2"]),
])
def test_a_base_name_takes_its_instances_and_nothing_else(job: str, expected: list[str]) -> None:
    """``name`` names itself and its ``name N/M`` / ``name: [..]`` instances, never a longer name."""
    result = plan({".gitlab-ci.yml": NAMES + "t:\n  stage: test\n  script: [echo]\n" + job}, PipelineInputs())
    assert isinstance(result, Plan), result
    assert sorted(artifact_sources(result.job("t"))) == expected
