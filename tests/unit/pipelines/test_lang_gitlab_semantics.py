"""Cases where GitLab's documented semantics decide, each written here as its own small pipeline."""

from __future__ import annotations

import pytest

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


def plan_files(files: dict[str, str], **inputs: object) -> Plan | Problems:
    return plan(files, PipelineInputs(**inputs))  # type: ignore[arg-type]


JOB = "{name}:\n  script: [echo]\n"


@pytest.mark.parametrize(("pattern", "expected"), [
    ("ci/*.yml", ["top"]),                    # one segment: ci/ itself only
    ("ci/**.yml", ["deep", "mid", "top"]),    # any depth, none included
    ("ci/**/*.yml", ["deep", "mid"]),         # subfolders only
    ("ci/x/**.yml", ["deep", "mid"]),
    ("/ci/{x,y}/*.yml", ["mid"]),
])
def test_include_local_wildcards(pattern: str, expected: list[str]) -> None:
    """`*` is one path segment, `**` any depth (none included), `**/` at least one folder."""
    files = {
        ".gitlab-ci.yml": f"include: '{pattern}'\n",
        "ci/top.yml": JOB.format(name="top"),
        "ci/x/mid.yml": JOB.format(name="mid"),
        "ci/x/z/deep.yml": JOB.format(name="deep"),
        "other/no.yml": JOB.format(name="no"),
    }
    result = plan_files(files)
    assert isinstance(result, Plan), result
    assert sorted(result.names()) == expected


def test_include_path_expands_pipeline_and_predefined_variables() -> None:
    """`include: ci/$TARGET.yml` takes the pipeline variable; `$CI_COMMIT_REF_NAME` the ref."""
    files = {
        ".gitlab-ci.yml": "include:\n  - local: ci/$TARGET.yml\n  - local: 'refs/${CI_COMMIT_REF_NAME}.yml'\n",
        "ci/arm.yml": JOB.format(name="arm"), "ci/x86.yml": JOB.format(name="x86"),
        "refs/main.yml": JOB.format(name="on-main"), "refs/dev.yml": JOB.format(name="on-dev"),
    }
    result = plan_files(files, variables={"TARGET": "arm"}, ref="main")
    assert isinstance(result, Plan), result
    assert sorted(result.names()) == ["arm", "on-main"]


def test_more_than_150_includes_is_an_error() -> None:
    """GitLab's limit of 150 included files holds."""
    files = {".gitlab-ci.yml": "include: 'ci/*.yml'\n"}
    files.update({f"ci/j{i:03}.yml": JOB.format(name=f"j{i}") for i in range(151)})
    result = plan_files(files)
    assert isinstance(result, Problems) and "150" in result.items[0].message


def test_circular_reference_is_named_a_cycle() -> None:
    """Two scripts referencing each other are reported as a cycle, not as nesting too deep."""
    result = planned("a:\n  script: !reference [b, script]\nb:\n  script: !reference [a, script]\n")
    assert "reference-cycle" in codes(result)
    assert all("10 levels" not in p.message for p in result.items)  # type: ignore[union-attr]


def test_reference_nesting_limit_is_ten() -> None:
    """A chain of 11 `!reference`s is refused; 10 are fine."""
    def chain(n: int) -> str:
        lines = [".r0:\n  script: [echo]\n"]
        lines += [f".r{i}:\n  script: [!reference [.r{i - 1}, script]]\n" for i in range(1, n + 1)]
        return "".join(lines) + f"job:\n  script: [!reference [.r{n}, script]]\n"
    assert isinstance(planned(chain(9)), Plan)
    assert "unknown-reference" in codes(planned(chain(11)))


def test_artifact_paths_under_the_project_dir_are_made_relative() -> None:
    """`$CI_PROJECT_DIR/dist/` and `/workspace/out.txt` are the project's files; lint and run agree."""
    text = ("a:\n  script: [echo]\n  artifacts:\n    paths: [$CI_PROJECT_DIR/dist/, /workspace/out.txt, rel/x]\n"
            "    exclude: ['${CI_PROJECT_DIR}/dist/*.tmp']\n")
    result = planned(text)
    assert isinstance(result, Plan), result
    artifacts = result.job("a").artifacts
    assert artifacts is not None
    assert artifacts.paths == ("dist/", "out.txt", "rel/x") and artifacts.exclude == ("dist/*.tmp",)


@pytest.mark.parametrize("path", ["/etc/passwd", "../outside", "/workspace/../etc/shadow", "$HOME/x"])
def test_artifact_paths_outside_the_project_dir_are_errors(path: str) -> None:
    """A path outside the project directory is refused when planning, with the job named."""
    result = planned(f"a:\n  script: [echo]\n  variables: {{HOME: /root}}\n  artifacts:\n    paths: ['{path}']\n")
    assert codes(result) == ["artifact-outside-project"]
