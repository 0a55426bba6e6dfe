"""plan(): each construct of the dialect, as tables of (pipeline text, inputs) -> expected plan."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from pipelines.language.model import (
    AllowFailure,
    Artifacts,
    Cache,
    Image,
    Need,
    PipelineInputs,
    Plan,
    Retry,
    SandboxPolicy,
    SandboxSpec,
)
from pipelines.language.planner import plan
from pipelines.language.problems import Problems


def ok(text: str, inputs: PipelineInputs | None = None, **files: str) -> Plan:
    result = plan({".gitlab-ci.yml": text, **files}, inputs)
    assert isinstance(result, Plan), "\n".join(p.render() for p in result.items)
    return result


def bad(
    text: str, inputs: PipelineInputs | None = None, policy: SandboxPolicy | None = None, **files: str
) -> Problems:
    result = plan({".gitlab-ci.yml": text, **files}, inputs, policy=policy)
    assert isinstance(result, Problems), f"expected problems, planned {result.names()}"
    return result


@dataclass(frozen=True)
class NamesCase:
    doc: str
    text: str
    names: list[str]
    inputs: PipelineInputs = field(default_factory=PipelineInputs)


NAMES_CASES = [
    NamesCase(
        "parallel: N names jobs `name i/N`", "t: {script: [x], parallel: 3}", ["t 1/3", "t 2/3", "t 3/3"]
    ),
    NamesCase(
        "parallel:matrix names jobs by their values, in key order, product of each entry",
        "t:\n  script: [x]\n  parallel:\n    matrix:\n      - PY: ['3.11', '3.12']\n        OS: debian\n"
        "      - PY: '3.13'\n",
        ["t: [3.11, debian]", "t: [3.12, debian]", "t: [3.13]"],
    ),
    NamesCase("hidden jobs are not planned", ".tmpl: {script: [x]}\nreal: {script: [y]}", ["real"]),
    NamesCase(
        "rules: the first matching rule decides; no match leaves the job out",
        "a: {script: [x], rules: [{if: '$CI_COMMIT_BRANCH == \"main\"'}]}\n"
        "b: {script: [x], rules: [{if: '$CI_COMMIT_TAG'}]}",
        ["a"],
    ),
    NamesCase(
        "rules: when: never excludes even if a later rule would match",
        "a: {script: [x], rules: [{if: '$CI', when: never}, {when: always}]}\nb: {script: [y]}",
        ["b"],
    ),
    NamesCase(
        "rules:changes evaluated against the changed files (** spans folders)",
        "a: {script: [x], rules: [{changes: ['src/**/*.py']}]}\n"
        "b: {script: [x], rules: [{changes: [docs/*]}]}",
        ["a"],
        PipelineInputs(changed_files=("src/pkg/mod.py",)),
    ),
    NamesCase(
        "rules:changes is true when the changed files are unknown, as GitLab does for new refs",
        "a: {script: [x], rules: [{changes: [docs/*]}]}",
        ["a"],
    ),
    NamesCase(
        "rules:exists checks the given existing files",
        "a: {script: [x], rules: [{exists: [Dockerfile]}]}\nb: {script: [x], rules: [{exists: [go.mod]}]}",
        ["a"],
        PipelineInputs(existing_files=frozenset({"Dockerfile"})),
    ),
    NamesCase(
        "only: refs by name and /regex/; except wins",
        "a: {script: [x], only: [main]}\nb: {script: [x], only: ['/^rel-/']}\n"
        "c: {script: [x], except: [main]}\nd: {script: [x]}",
        ["a", "d"],
    ),
    NamesCase(
        "only: merge_requests, and jobs without rules skip merge request pipelines",
        "a: {script: [x], only: [merge_requests]}\nb: {script: [x]}",
        ["a"],
        PipelineInputs(trigger="merge_request"),
    ),
    NamesCase(
        "only: tags matches tag pipelines",
        "a: {script: [x], only: [tags]}\nb: {script: [x], only: [branches]}",
        ["a"],
        PipelineInputs(ref="v1.0", ref_kind="tag"),
    ),
    NamesCase(
        "only: variables — any expression true keeps the job",
        "a: {script: [x], only: {variables: ['$DEPLOY == \"yes\"']}}\n"
        "b: {script: [x], only: {variables: ['$NOPE']}}",
        ["a"],
        PipelineInputs(variables={"DEPLOY": "yes"}),
    ),
    NamesCase(
        "rules can use the job's and the matrix's variables",
        "t:\n  script: [x]\n  variables: {KIND: unit}\n  parallel: {matrix: [{PY: ['3.11', '3.12']}]}\n"
        '  rules: [{if: \'$PY == "3.12" && $KIND == "unit"\'}]',
        ["t: [3.12]"],
    ),
    NamesCase(
        "jobs are ordered by stage, then by file order",
        "stages: [a, b]\nlate: {stage: b, script: [x]}\nearly: {stage: a, script: [x]}",
        ["early", "late"],
    ),
]


@pytest.mark.parametrize("case", NAMES_CASES, ids=lambda c: c.doc)
def test_planned_job_names(case: NamesCase) -> None:
    """Job names after hidden jobs, parallel, matrix, rules and only/except are exactly GitLab's."""
    assert ok(case.text, case.inputs).names() == case.names


@dataclass(frozen=True)
class EdgeCase:
    doc: str
    text: str
    edges: dict[str, list[str]]


EDGE_CASES = [
    EdgeCase(
        "without needs a job waits for every job of every earlier stage",
        "b1: {stage: build, script: [x]}\nb2: {stage: build, script: [x]}\nt: {script: [x]}\n"
        "d: {stage: deploy, script: [x]}",
        {"b1": [], "b2": [], "t": ["b1", "b2"], "d": ["b1", "b2", "t"]},
    ),
    EdgeCase(
        "needs: [] starts at once; needs: [x] waits for x only",
        "b: {stage: build, script: [x]}\nt: {script: [x], needs: []}\n"
        "d: {stage: deploy, script: [x], needs: [b]}",
        {"b": [], "t": [], "d": ["b"]},
    ),
    EdgeCase(
        "a need on a parallel job means all its instances",
        "b: {stage: build, script: [x], parallel: 2}\nt: {script: [x], needs: [b]}",
        {"b 1/2": [], "b 2/2": [], "t": ["b 1/2", "b 2/2"]},
    ),
    EdgeCase(
        "needs:parallel:matrix picks instances, $[[ matrix.X ]] takes the needing job's value",
        "b:\n  stage: build\n  script: [x]\n  parallel: {matrix: [{ARCH: [amd64, arm64]}]}\n"
        "t:\n  script: [x]\n  parallel: {matrix: [{ARCH: [amd64, arm64]}]}\n"
        "  needs: [{job: b, parallel: {matrix: [{ARCH: '$[[ matrix.ARCH ]]'}]}}]",
        {"b: [amd64]": [], "b: [arm64]": [], "t: [amd64]": ["b: [amd64]"], "t: [arm64]": ["b: [arm64]"]},
    ),
    EdgeCase(
        "an optional need on a job left out by rules is dropped",
        "b: {stage: build, script: [x], rules: [{if: '$NOPE'}]}\n"
        "t: {script: [x], needs: [{job: b, optional: true}]}",
        {"t": []},
    ),
    EdgeCase(
        ".pre runs before every stage and .post after",
        "p: {stage: .pre, script: [x]}\nt: {script: [x]}\nz: {stage: .post, script: [x]}",
        {"p": [], "t": ["p"], "z": ["p", "t"]},
    ),
]


@pytest.mark.parametrize("case", EDGE_CASES, ids=lambda c: c.doc)
def test_dag_edges(case: EdgeCase) -> None:
    """DAG edges come from needs when present, else from stage order, as GitLab schedules them."""
    result = ok(case.text)
    assert {job.name: list(job.depends_on) for job in result.jobs} == case.edges


def test_needs_flags_are_kept() -> None:
    """A need keeps its artifacts and optional flags for the executor."""
    job = ok(
        "b: {stage: build, script: [x]}\nc: {stage: build, script: [x]}\n"
        "t: {script: [x], needs: [{job: b, artifacts: false}, {job: c, optional: true}]}"
    ).job("t")
    assert job.needs == (Need("b", artifacts=False), Need("c", optional=True))


def test_default_stages_and_declared_stages() -> None:
    """Without `stages` GitLab's defaults apply; declared stages get .pre first and .post last."""
    assert ok("t: {script: [x]}").stages == (".pre", "build", "test", "deploy", ".post")
    assert ok("stages: [lint, .post, ship]\nt: {stage: lint, script: [x]}").stages == (
        ".pre",
        "lint",
        "ship",
        ".post",
    )


def test_every_field_resolved() -> None:
    """The concrete job carries everything the executor needs, resolved."""
    text = """
variables:
  GLOBAL: g
  REF: ${CI_COMMIT_REF_SLUG}-$GLOBAL
  RAW: {value: "$GLOBAL", expand: false, description: not expanded}
default:
  image: {name: "registry/img:$GLOBAL", entrypoint: [""]}
  before_script: [echo before]
  sandbox: {memory: 512Mi, cpus: 1.5}
build:
  stage: build
  script:
    - make
    - [make check, [make install]]
  after_script: echo done
  variables: {JOB: j}
  timeout: 1h 30m
  retry: {max: 2, when: [script_failure], exit_codes: [137]}
  allow_failure: {exit_codes: [42]}
  artifacts:
    paths: [dist/$JOB]
    exclude: [dist/*.tmp]
    expire_in: 1 week
    when: always
    name: art-$CI_COMMIT_REF_SLUG
    reports: {junit: report.xml}
  cache:
    key: {files: [poetry.lock], prefix: $JOB}
    paths: [.cache/]
    policy: pull
    when: always
  sandbox: {pids: 256, disk: 2G, network: egress, runtime: runsc, profile: strict, memory: 1G}
"""
    job = ok(text, PipelineInputs(ref="Feature/X")).job("build")
    env = job.env()
    assert job.image == Image("registry/img:g", ("",))
    assert job.script == ("echo before", "make", "make check", "make install")
    assert job.after_script == ("echo done",)
    assert (env["REF"], env["RAW"], env["JOB"], env["CI_JOB_NAME"]) == (
        "feature-x-g",
        "$GLOBAL",
        "j",
        "build",
    )
    assert job.timeout_seconds == 5400
    assert job.retry == Retry(2, ("script_failure",), (137,))
    assert job.allow_failure == AllowFailure(False, (42,))
    assert job.artifacts == Artifacts(
        ("dist/j",), ("dist/*.tmp",), 7 * 86400, False, "always", "art-feature-x", ("report.xml",)
    )
    assert job.caches == (Cache("default", ("poetry.lock",), "j", (".cache/",), "pull", "always"),)
    assert job.sandbox == SandboxSpec(1024**3, None, 256, 2 * 1024**3, "egress", "runsc", "strict")


@dataclass(frozen=True)
class JobFieldCase:
    doc: str
    text: str
    check: str  # attribute of the job "t"
    expected: object
    inputs: PipelineInputs = field(default_factory=PipelineInputs)


FIELD_CASES = [
    JobFieldCase(
        "job-level when: manual may fail by default",
        "t: {script: [x], when: manual}",
        "allow_failure",
        AllowFailure(True),
    ),
    JobFieldCase(
        "a manual rule may not fail by default",
        "t: {script: [x], rules: [{when: manual}]}",
        "allow_failure",
        AllowFailure(False),
    ),
    JobFieldCase(
        "rules:allow_failure overrides",
        "t: {script: [x], rules: [{when: manual, allow_failure: true}]}",
        "allow_failure",
        AllowFailure(True),
    ),
    JobFieldCase(
        "a rule without when takes the job's when",
        "t: {script: [x], when: always, rules: [{if: $CI}]}",
        "when",
        "always",
    ),
    JobFieldCase(
        "delayed jobs keep start_in seconds",
        "t: {script: [x], when: delayed, start_in: 5 minutes}",
        "start_in_seconds",
        300,
    ),
    JobFieldCase(
        "rules:start_in",
        "t: {script: [x], rules: [{when: delayed, start_in: 1 hour}]}",
        "start_in_seconds",
        3600,
    ),
    JobFieldCase("retry as a number", "t: {script: [x], retry: 1}", "retry", Retry(1)),
    JobFieldCase(
        "timeout in GitLab's words", "t: {script: [x], timeout: 3 hours 30 minutes}", "timeout_seconds", 12600
    ),
    JobFieldCase("image as a string", "t: {script: [x], image: 'alpine:3'}", "image", Image("alpine:3")),
    JobFieldCase("script as a single string", "t: {script: make}", "script", ("make",)),
    JobFieldCase(
        "expire_in: never",
        "t: {script: [x], artifacts: {paths: [a], expire_in: never}}",
        "artifacts",
        Artifacts(("a",), expire_never=True),
    ),
    JobFieldCase(
        "cache: [] overrides a default cache",
        "default: {cache: {paths: [c]}}\nt: {script: [x], cache: []}",
        "caches",
        (),
    ),
    JobFieldCase("parallel jobs know their index", "t: {script: [x], parallel: 2}", "node_total", None),
    JobFieldCase(
        "matrix variables are carried",
        "t: {script: [x], parallel: {matrix: [{A: '1', B: two}]}}",
        "matrix",
        None,
    ),
    JobFieldCase("sandbox unset means None everywhere", "t: {script: [x]}", "sandbox", SandboxSpec()),
    JobFieldCase(
        "dependencies: [] downloads nothing", "t: {script: [x], dependencies: []}", "dependencies", ()
    ),
]


@pytest.mark.parametrize("case", FIELD_CASES, ids=lambda c: c.doc)
def test_job_fields(case: JobFieldCase) -> None:
    """Single fields of a job resolve as GitLab documents them."""
    result = ok(case.text, case.inputs)
    if case.expected is None:  # parallel / matrix cases: check on the first instance
        job = result.jobs[0]
        assert (job.node_index, job.node_total) == (1, len(result.jobs))
        if job.matrix:
            assert job.matrix == (("A", "1"), ("B", "two")) and job.env()["B"] == "two"
        return
    assert getattr(result.job("t"), case.check) == case.expected


@dataclass(frozen=True)
class VariableCase:
    doc: str
    text: str
    expected: dict[str, str]
    inputs: PipelineInputs = field(default_factory=PipelineInputs)


VARIABLE_CASES = [
    VariableCase(
        "job variables override global ones",
        "variables: {A: g, B: g}\nt: {script: [x], variables: {A: j}}",
        {"A": "j", "B": "g"},
    ),
    VariableCase(
        "rules variables override job ones",
        "t: {script: [x], variables: {A: j}, rules: [{if: $CI, variables: {A: r}}]}",
        {"A": "r"},
    ),
    VariableCase(
        "run variables (--var) override everything",
        "variables: {A: g}\nt: {script: [x], variables: {A: j}}",
        {"A": "cli"},
        PipelineInputs(variables={"A": "cli"}),
    ),
    VariableCase(
        "workflow:rules:variables become global",
        "workflow: {rules: [{if: $CI, variables: {W: w}}]}\nt: {script: [x]}",
        {"W": "w"},
    ),
    VariableCase(
        "inherit: variables: false drops globals",
        "variables: {A: g}\nt: {script: [x], inherit: {variables: false}}",
        {"CI": "true"},
    ),
    VariableCase(
        "inherit: variables: [list] keeps only those",
        "variables: {A: g, B: g}\nt: {script: [x], inherit: {variables: [B]}}",
        {"B": "g"},
    ),
    VariableCase(
        "predefined CI_* variables for a merge request",
        "t: {script: [x], rules: [{if: $CI_MERGE_REQUEST_TARGET_BRANCH_NAME}]}",
        {
            "CI_PIPELINE_SOURCE": "merge_request_event",
            "CI_MERGE_REQUEST_SOURCE_BRANCH_NAME": "feat",
            "CI_COMMIT_REF_NAME": "feat",
        },
        PipelineInputs(trigger="merge_request", ref="feat", merge_request_target="main"),
    ),
    VariableCase(
        "numbers become strings as Ruby prints them",
        "variables: {V: 3.10, N: 42}\nt: {script: [x]}",
        {"V": "3.1", "N": "42"},
    ),
    VariableCase("$$ escapes a dollar", "variables: {A: 'x$$y'}\nt: {script: [x]}", {"A": "x$y"}),
]


@pytest.mark.parametrize("case", VARIABLE_CASES, ids=lambda c: c.doc)
def test_variables(case: VariableCase) -> None:
    """Variables layer with GitLab's precedence and expand like the runner."""
    env = ok(case.text, case.inputs).jobs[0].env()
    for name, value in case.expected.items():
        assert env.get(name) == value, name
    if "inherit: {variables: false}" in case.text:
        assert "A" not in env
    if "inherit: {variables: [B]}" in case.text:
        assert "A" not in env


def test_extends_deep_merge_multilevel() -> None:
    """extends: multi-level; mappings merge, lists and scalars are replaced; later parents win."""
    text = """
.base: {image: base, variables: {A: base, B: base}, script: [base], tags: [t]}
.mid: {extends: .base, variables: {B: mid}, before_script: [mid]}
.other: {image: other, script: [other]}
job: {extends: [.mid, .other], variables: {C: job}}
"""
    job = ok(text).job("job")
    env = job.env()
    assert (env["A"], env["B"], env["C"]) == ("base", "mid", "job")
    assert job.image == Image("other")
    assert job.script == ("mid", "other")


def test_default_applies_only_to_unset_keys_and_respects_inherit() -> None:
    """default: fills keys a job (after extends) does not set; inherit: default: false opts out."""
    text = """
default: {image: d, retry: 2, before_script: [setup]}
.t: {image: from-template}
a: {extends: .t, script: [x]}
b: {script: [x], inherit: {default: false}}
c: {script: [x], inherit: {default: [retry]}}
"""
    result = ok(text)
    assert result.job("a").image == Image("from-template") and result.job("a").retry == Retry(2)
    assert result.job("b").image is None and result.job("b").script == ("x",)
    assert result.job("c").image is None and result.job("c").retry == Retry(2)


def test_yaml_anchors_merge_keys_and_reference() -> None:
    """Anchors, `<<:` merge keys and !reference all work together."""
    text = """
.setup: {script: [setup one, setup two]}
.common: &common {image: alpine, variables: {A: a}}
job:
  <<: *common
  script:
    - !reference [.setup, script]
    - run
  variables: {B: b}
"""
    job = ok(text).job("job")
    assert job.script == ("setup one", "setup two", "run")
    assert job.image == Image("alpine") and job.env()["B"] == "b" and "A" not in job.env()


def test_include_local_merges_and_main_file_wins() -> None:
    """include: local merges the included file; the including file's keys win; globs work."""
    result = ok(
        "include: [{local: /ci/base.yml}, 'ci/extra/*.yml']\nvariables: {A: main}\njob: {extends: .t}",
        **{
            "ci/base.yml": "variables: {A: base, B: base}\n.t: {script: [from include]}",
            "ci/extra/one.yml": "extra: {script: [x]}",
        },
    )
    assert result.names() == ["extra", "job"]  # included keys come first, as in GitLab's merge
    assert result.job("job").script == ("from include",)
    assert (result.job("job").env()["A"], result.job("job").env()["B"]) == ("main", "base")


def test_workflow_rules_can_cancel_the_pipeline() -> None:
    """workflow:rules deciding `never` (or matching nothing) plans no pipeline at all."""
    text = "workflow: {rules: [{if: $CI_COMMIT_TAG}]}\nt: {script: [x]}"
    assert ok(text).created is False
    assert ok(text, PipelineInputs(ref="v1", ref_kind="tag")).names() == ["t"]


@dataclass(frozen=True)
class ProblemCase:
    doc: str
    text: str
    codes: list[str]
    where: list[tuple[int, int]] | None = None
    files: dict[str, str] = field(default_factory=dict)


PROBLEM_CASES = [
    ProblemCase(
        "a typo is an unknown key, with a suggestion",
        "t:\n  scrpit: [x]\n  script: [x]",
        ["unknown-key"],
        [(2, 3)],
    ),
    ProblemCase(
        "every problem at once, sorted by place",
        "t:\n  script: [x]\n  timeout: soon\n  retry: 5\n  when: sometimes\nu: {stage: nope, script: [x]}",
        ["invalid-duration", "invalid-value", "invalid-value", "unknown-stage"],
        [(3, 12), (4, 10), (5, 9), (6, 12)],
    ),
    ProblemCase("YAML syntax errors have a place", "t: {script: [x]\n", ["yaml-syntax"]),
    ProblemCase("refused keys are errors", "t: {script: [x], secrets: {A: {vault: x}}}", ["unsupported"]),
    ProblemCase(
        "remote include is refused by name",
        "include: 'https://example.com/ci.yml'\nt: {script: [x]}",
        ["unsupported"],
        [(1, 10)],
    ),
    ProblemCase(
        "template/component includes are refused; a project include not given is not found",
        "include: [{project: a/b, file: x.yml}, {template: Auto-DevOps.gitlab-ci.yml}, {component: c@1}]\n"
        "t: {script: [x]}",
        ["include-not-found", "unsupported", "unsupported"],
    ),
    ProblemCase(
        "ref and file without project are named",
        "include: {local: a.yml, ref: main}\nt: {script: [x]}",
        ["invalid-value"],
        files={"a.yml": "u: {script: [y]}"},
    ),
    ProblemCase(
        "include traversal is refused",
        "include: {local: ../../etc/passwd}\nt: {script: [x]}",
        ["include-outside-repo"],
    ),
    ProblemCase(
        "a missing local include is named", "include: nope.yml\nt: {script: [x]}", ["include-not-found"]
    ),
    ProblemCase("extends of an unknown template", "t: {extends: .nope, script: [x]}", ["unknown-extends"]),
    ProblemCase(
        "extends loops are named",
        ".a: {extends: .b}\n.b: {extends: .a}\nt: {extends: .a, script: [x]}",
        ["extends-cycle"],
    ),
    ProblemCase("unknown !reference", "t: {script: [a, !reference [.nope, script]]}", ["unknown-reference"]),
    ProblemCase("needs on an unknown job", "t: {script: [x], needs: [ghost]}", ["unknown-need"]),
    ProblemCase(
        "needs on a job rules left out",
        "b: {script: [x], rules: [{if: $NOPE}]}\nt: {script: [x], needs: [b]}",
        ["need-not-planned"],
    ),
    ProblemCase(
        "needs cycles name the cycle",
        "a: {script: [x], needs: [b]}\nb: {script: [x], needs: [a]}",
        ["needs-cycle"],
    ),
    ProblemCase(
        "dependencies must be in needs",
        "b: {stage: build, script: [x]}\nc: {stage: build, script: [x]}\n"
        "t: {script: [x], needs: [b], dependencies: [c]}",
        ["dependency-not-needed"],
    ),
    ProblemCase(
        "dependencies must be in an earlier stage",
        "a: {script: [x]}\nt: {script: [x], dependencies: [a]}",
        ["dependency-later-stage"],
    ),
    ProblemCase(
        "rules with only is a conflict",
        "t: {script: [x], rules: [{when: always}], only: [main]}",
        ["conflicting-keys"],
    ),
    ProblemCase("a bad expression", "t: {script: [x], rules: [{if: '$A == '}]}", ["invalid-expression"]),
    ProblemCase("a bad regex", "t: {script: [x], rules: [{if: '$A =~ /(/'}]}", ["invalid-expression"]),
    ProblemCase("a job without script", "t: {stage: test}", ["missing-script"]),
    ProblemCase("no visible job", ".hidden: {script: [x]}", ["no-jobs"]),
    ProblemCase(
        "matrix over 200 jobs",
        "t: {script: [x], parallel: {matrix: [{A: "
        + str(list(range(15)))
        + ", B: "
        + str(list(range(15)))
        + "}]}}",
        ["invalid-parallel"],
    ),
    ProblemCase(
        "duplicate matrix names", "t: {script: [x], parallel: {matrix: [{A: [x, x]}]}}", ["duplicate-job"]
    ),
    ProblemCase(
        "sandbox units are validated",
        "t: {script: [x], sandbox: {memory: lots, cpus: -1, pids: 0, network: host, runtime: docker}}",
        ["invalid-size", "invalid-size", "invalid-size", "invalid-value", "invalid-value"],
    ),
    ProblemCase("a job that is not a mapping", "t: [x]", ["invalid-type", "no-jobs"]),
    ProblemCase("when: never is for rules only", "t: {script: [x], when: never}", ["invalid-value"]),
]


@pytest.mark.parametrize("case", PROBLEM_CASES, ids=lambda c: c.doc)
def test_problems(case: ProblemCase) -> None:
    """Mistakes are all reported at once, each with a stable code, a place and a fix hint."""
    problems = bad(case.text, **case.files)
    errors = problems.errors
    assert sorted(p.code for p in errors) == sorted(case.codes)
    assert all(p.hint and p.loc.line >= 1 and p.loc.col >= 1 for p in problems.items)
    if case.where is not None:
        assert [(p.loc.line, p.loc.col) for p in errors] == case.where


def test_unknown_key_suggests_the_right_key() -> None:
    """An unknown key's hint names the closest valid key."""
    problem = bad("t:\n  scrpit: [x]\n  script: [x]").errors[0]
    assert "`script`" in problem.hint and problem.render().startswith(
        ".gitlab-ci.yml:2:3: error[unknown-key]"
    )


def test_needs_cycle_message_names_the_cycle() -> None:
    """A cycle in needs is named job by job."""
    problem = bad(
        "a: {script: [x], needs: [c]}\nb: {script: [x], needs: [a]}\nc: {script: [x], needs: [b]}"
    ).errors[0]
    assert "a -> c -> b -> a" in problem.message


@pytest.mark.parametrize(
    ("key", "severity"),
    [
        ("tags: [docker]", "warning"),
        ("environment: prod", "warning"),
        ("coverage: '/x/'", "warning"),
        ("manual_confirmation: sure?", "warning"),
        ("resource_group: r", "warning"),
        ("trigger: {project: a/b}", "error"),
        ("secrets: {A: {vault: x}}", "error"),
        ("id_tokens: {T: {aud: x}}", "error"),
    ],
)
def test_unsupported_key_severity(key: str, severity: str) -> None:
    """Unsupported keys that do not change what runs warn; those that would change the result are errors."""
    result = plan({"ci.yml": f"t:\n  script: [x]\n  {key}\n"})
    problems = result.warnings if isinstance(result, Plan) else result.items
    assert [(p.severity, p.code.startswith("unsupported")) for p in problems] == [(severity, True)]


def test_policy_caps_sandbox_requests() -> None:
    """A request above the server policy is a problem, not a silent clamp."""
    policy = SandboxPolicy(max_memory_bytes=1024**3, max_cpus=2.0, max_pids=100, runtimes=("crun",))
    problems = bad(
        "t: {script: [x], sandbox: {memory: 2G, cpus: 4, pids: 50, runtime: runsc}}", policy=policy
    )
    assert [p.code for p in problems.errors] == ["over-policy", "over-policy", "over-policy"]
    assert ok("t: {script: [x], sandbox: {memory: 1Gi, cpus: 2}}").job("t").sandbox.cpus == 2.0


def test_consequences_of_unloaded_includes_point_at_the_include() -> None:
    """What an unsupported include would have defined is reported with caused_by = that include."""
    problems = bad("include: {template: Auto-DevOps.gitlab-ci.yml}\njob: {extends: .from-project}")
    consequences = [p for p in problems.errors if not p.code.startswith("unsupported")]
    assert consequences and all(p.caused_by is not None and p.caused_by.line == 1 for p in consequences)


def test_duplicate_keys_warn_and_last_wins() -> None:
    """Duplicate keys warn, and the last value wins as in GitLab."""
    result = ok("t:\n  script: [first]\n  script: [second]\n")
    assert result.job("t").script == ("second",) and [w.code for w in result.warnings] == ["duplicate-key"]
