"""Cases where GitLab's documented semantics decide, each written here as its own small pipeline."""

from __future__ import annotations

from pipelines.language.model import PipelineInputs, Plan
from pipelines.language.planner import plan
from pipelines.language.problems import Problems


def planned(text: str, **inputs: object) -> Plan | Problems:
    return plan({".gitlab-ci.yml": text}, PipelineInputs(**inputs))  # type: ignore[arg-type]


def codes(result: Plan | Problems) -> list[str]:
    assert isinstance(result, Problems), result
    return [p.code for p in result.items if p.severity == "error"]


def test_blank_rules_is_an_error() -> None:
    """`rules: []` is refused ("rules config can't be blank"), not read as "never run"."""
    result = planned("a:\n  script: [echo]\n  rules: []\n")
    assert codes(result) == ["blank-rules"]
    assert "can't be blank" in result.items[0].message  # type: ignore[union-attr]


def test_need_on_a_later_stage_is_an_error() -> None:
    """A need must be defined in the current or a prior stage; the same stage is fine."""
    later = planned("stages: [a, b]\nx:\n  stage: a\n  needs: [y]\n  script: [echo]\n"
                    "y:\n  stage: b\n  script: [echo]\n")
    assert codes(later) == ["need-later-stage"]
    same = planned("x:\n  needs: [y]\n  script: [echo]\ny:\n  script: [echo]\n")
    assert isinstance(same, Plan) and [n.job for n in same.job("x").needs or ()] == ["y"]


def test_parallel_one_is_an_instance_named_1_of_1() -> None:
    """`parallel: 1` names the job `a 1/1` and sets CI_NODE_INDEX=1, CI_NODE_TOTAL=1."""
    result = planned("a:\n  script: [echo]\n  parallel: 1\n")
    assert isinstance(result, Plan) and result.names() == ["a 1/1"]
    env = dict(result.job("a 1/1").variables)
    assert (env["CI_NODE_INDEX"], env["CI_NODE_TOTAL"]) == ("1", "1")


def test_hyphenated_matrix_identifier_in_needs() -> None:
    """`$[[ matrix.MY-VAR ]]` in needs:parallel:matrix takes the needing job's value."""
    text = """
build:
  script: [echo]
  parallel:
    matrix:
      - MY-VAR: [x, y]
test:
  script: [echo]
  parallel:
    matrix:
      - MY-VAR: [x, y]
  needs:
    - job: build
      parallel:
        matrix:
          - MY-VAR: ['$[[ matrix.MY-VAR ]]']
"""
    result = planned(text)
    assert isinstance(result, Plan), result
    assert [n.job for n in result.job("test: [y]").needs or ()] == ["build: [y]"]


def test_every_job_excluded_by_rules_says_so() -> None:
    """When job rules leave nothing, the reason names the jobs' rules, not workflow rules."""
    result = planned("a:\n  script: [echo]\n  rules:\n    - if: $NOPE\n")
    assert isinstance(result, Plan) and result.jobs == ()
    why = result.nothing_to_run()
    assert why is not None and "every job" in why and "workflow" not in why
    workflow = planned("workflow:\n  rules:\n    - if: $NOPE\na:\n  script: [echo]\n")
    assert isinstance(workflow, Plan) and "workflow:rules" in (workflow.nothing_to_run() or "")
