"""``workflow:auto_cancel``, ``workflow:rules:auto_cancel`` and ``rules:interruptible`` (pure planner)."""

from __future__ import annotations

import pytest

from pipelines.language.model import AutoCancel, PipelineInputs, Plan
from pipelines.language.planner import plan
from pipelines.language.problems import Problems

CI = ".gitlab-ci.yml"
JOB = "t: {script: [x]}\n"
MAIN = PipelineInputs(ref="main")
FEATURE = PipelineInputs(ref="feature")


@pytest.mark.parametrize(("doc", "text", "inputs", "expected"), [
    ("no workflow: GitLab's defaults", JOB, MAIN, AutoCancel("conservative", "none")),
    ("a workflow without auto_cancel", "workflow: {rules: [{when: always}]}\n" + JOB, MAIN, AutoCancel()),
    ("on_new_commit alone", "workflow: {auto_cancel: {on_new_commit: interruptible}}\n" + JOB, MAIN,
     AutoCancel("interruptible", "none")),
    ("none", "workflow: {auto_cancel: {on_new_commit: none}}\n" + JOB, MAIN, AutoCancel("none", "none")),
    ("on_job_failure alone", "workflow: {auto_cancel: {on_job_failure: all}}\n" + JOB, MAIN,
     AutoCancel("conservative", "all")),
    ("both", "workflow: {auto_cancel: {on_new_commit: interruptible, on_job_failure: all}}\n" + JOB, MAIN,
     AutoCancel("interruptible", "all")),
    ("the deciding rule's setting wins, key by key (the other key stays the workflow's)",
     "workflow:\n  auto_cancel: {on_new_commit: interruptible, on_job_failure: all}\n  rules:\n"
     "    - if: $CI_COMMIT_BRANCH == 'main'\n      auto_cancel: {on_new_commit: none}\n    - when: always\n" + JOB,
     MAIN, AutoCancel("none", "all")),
    ("a rule that does not decide gives nothing",
     "workflow:\n  auto_cancel: {on_new_commit: interruptible, on_job_failure: all}\n  rules:\n"
     "    - if: $CI_COMMIT_BRANCH == 'main'\n      auto_cancel: {on_new_commit: none}\n    - when: always\n" + JOB,
     FEATURE, AutoCancel("interruptible", "all")),
    ("a rule's setting without a workflow one", "workflow:\n  rules:\n    - auto_cancel: {on_job_failure: all}\n" + JOB,
     MAIN, AutoCancel("conservative", "all")),
])
def test_auto_cancel_settings_reach_the_plan(doc: str, text: str, inputs: PipelineInputs, expected: AutoCancel
                                             ) -> None:
    """The plan carries the run's auto-cancel settings, with no warning about them."""
    result = plan({CI: text}, inputs)
    assert isinstance(result, Plan), result
    assert result.auto_cancel == expected, doc
    assert not [w for w in result.warnings if "auto_cancel" in w.message], doc


def test_a_workflow_that_creates_no_pipeline_still_parses_its_settings() -> None:
    """`when: never` in the workflow: no pipeline, and the settings' problems are still reported."""
    result = plan({CI: "workflow:\n  auto_cancel: {on_new_commit: none}\n  rules: [{when: never}]\n" + JOB})
    assert isinstance(result, Plan) and not result.created and result.auto_cancel == AutoCancel("none")


@pytest.mark.parametrize(("text", "interruptible"), [
    ("t: {script: [x], interruptible: true, rules: [{interruptible: false}]}", False),
    ("t: {script: [x], rules: [{interruptible: true}]}", True),
    ("default: {interruptible: true}\nt: {script: [x], rules: [{if: $CI_COMMIT_TAG, interruptible: false}, "
     "{when: on_success}]}", True),
    ("default: {interruptible: true}\nt: {script: [x], rules: [{if: $CI_COMMIT_BRANCH, interruptible: false}]}",
     False),
    ("t: {script: [x], interruptible: true, rules: [{when: on_success}]}", True),
])
def test_the_deciding_rule_sets_interruptible(text: str, interruptible: bool) -> None:
    """`rules:interruptible` of the deciding rule overrides the job's (and `default:`'s); a rule
    without it leaves the job's own."""
    result = plan({CI: text}, MAIN)
    assert isinstance(result, Plan), result
    assert result.job("t").interruptible is interruptible
    assert not result.warnings


@pytest.mark.parametrize(("text", "problems"), [
    ("workflow: {auto_cancel: {on_new_commit: disabled}}\n" + JOB,
     [(1, 41, "invalid-value", "`on_new_commit: disabled` is not allowed in workflow:auto_cancel",
       "use one of: conservative, interruptible, none")]),
    ("workflow: {auto_cancel: {on_job_failure: some}}\n" + JOB,
     [(1, 42, "invalid-value", "`on_job_failure: some` is not allowed in workflow:auto_cancel",
       "use one of: all, none")]),
    ("workflow: {auto_cancel: {on_job_failure: true}}\n" + JOB,
     [(1, 42, "invalid-type", "workflow:auto_cancel:on_job_failure must be a string, not a boolean",
       "write it like: on_job_failure: all")]),
    ("workflow: {auto_cancel: {on_new_comit: none}}\n" + JOB,
     [(1, 26, "unknown-key", "unknown key `on_new_comit` in auto_cancel", "did you mean `on_new_commit`?")]),
    ("workflow: {auto_cancel: interruptible}\n" + JOB,
     [(1, 25, "invalid-type", "workflow:auto_cancel must be a mapping, not a string",
       "write it like: auto_cancel: {on_new_commit: interruptible}")]),
    ("workflow:\n  rules:\n    - auto_cancel: {on_new_commit: aggressive}\n" + JOB,
     [(3, 36, "invalid-value", "`on_new_commit: aggressive` is not allowed in workflow:rules:auto_cancel",
       "use one of: conservative, interruptible, none")]),
    ("t: {script: [x], rules: [{interruptible: yes please}]}",
     [(1, 42, "invalid-type", "rules:interruptible must be true or false, not a string",
       "write it like: interruptible: true")]),
    ("t: {script: [x], rules: [{auto_cancel: {on_new_commit: none}}]}",
     [(1, 27, "unknown-key", "unknown key `auto_cancel` in a rule", "a rule accepts: allow_failure, changes, "
       "exists, if, interruptible, needs, start_in, variables, when")]),
    ("workflow:\n  rules:\n    - interruptible: true\n" + JOB,
     [(3, 7, "unknown-key", "unknown key `interruptible` in a workflow rule",
       "a workflow rule accepts: auto_cancel, changes, exists, if, variables, when")]),
])
def test_bad_settings_are_errors_at_their_place(text: str, problems: list[tuple[int, int, str, str, str]]) -> None:
    """A bad key or value is an error with its line, column, code and a hint; nothing is planned."""
    result = plan({CI: text}, MAIN)
    assert isinstance(result, Problems), result
    assert [(p.loc.file, p.loc.line, p.loc.col, p.code, p.message, p.hint) for p in result.errors] == [
        (CI, *problem) for problem in problems]


def test_every_problem_is_reported_at_once() -> None:
    """The workflow's, its rules' and a job rule's mistakes come back together."""
    text = ("workflow:\n  auto_cancel: {on_new_commit: x, on_job_failure: y}\n  rules:\n"
            "    - auto_cancel: {on_job_failure: z}\n"
            "t: {script: [x], rules: [{interruptible: 1}]}\n")
    result = plan({CI: text}, MAIN)
    assert isinstance(result, Problems)
    assert [(p.loc.line, p.code) for p in result.errors] == [
        (2, "invalid-value"), (2, "invalid-value"), (4, "invalid-value"), (5, "invalid-type")]
