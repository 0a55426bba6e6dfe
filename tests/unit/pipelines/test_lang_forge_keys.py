"""``include: project`` (files given under project keys) and ``interruptible`` (pure planner)."""

from __future__ import annotations

import pytest

from pipelines.language.includes import project_includes, project_key, split_project_key
from pipelines.language.model import Plan
from pipelines.language.planner import plan
from pipelines.language.problems import Problems

CI = ".gitlab-ci.yml"


@pytest.mark.parametrize(("doc", "entry", "given", "jobs"), [
    ("one file of a project at a ref",
     "include: {project: acme/ci, ref: v1, file: /build.yml}\nt: {extends: .build}",
     {project_key("acme/ci", "v1", "build.yml"): ".build: {script: [make]}"}, {"t": ("make",)}),
    ("a list of files, no ref (the project's default branch)",
     "include: {project: acme/ci, file: [a.yml, b.yml]}",
     {project_key("acme/ci", "", "a.yml"): "a: {script: [x]}", project_key("acme/ci", "", "b.yml"): "b: {script: [y]}"},
     {"a": ("x",), "b": ("y",)}),
    ("a local include inside a project file is that project's file, not this repository's",
     "include: {project: acme/ci, ref: main, file: top.yml}",
     {project_key("acme/ci", "main", "top.yml"): "include: lib.yml\n",
      project_key("acme/ci", "main", "lib.yml"): "from-project: {script: [p]}",
      "lib.yml": "from-here: {script: [h]}"},
     {"from-project": ("p",)}),
    ("predefined variables in the ref are expanded (not the file's own, as on GitLab)",
     "include: {project: acme/ci, ref: $CI_COMMIT_REF_NAME, file: a.yml}",
     {project_key("acme/ci", "main", "a.yml"): "a: {script: [x]}"}, {"a": ("x",)}),
])
def test_project_includes_are_merged(doc: str, entry: str, given: dict[str, str], jobs: dict[str, tuple[str, ...]]
                                     ) -> None:
    """A project include given by the caller under its project key merges like a local one."""
    result = plan({CI: entry, **given})
    assert isinstance(result, Plan), result
    assert {job.name: job.script for job in result.jobs} == jobs, doc


@pytest.mark.parametrize(("entry", "codes"), [
    ("include: {project: acme/ci, file: missing.yml}\nt: {script: [x]}", ["include-not-found"]),
    ("include: {project: acme/ci}\nt: {script: [x]}", ["invalid-value"]),
    ("include: {project: acme/ci, file: ../../etc/passwd}\nt: {script: [x]}", ["include-outside-repo"]),
    ("include: {remote: 'https://x/ci.yml'}\nt: {script: [x]}", ["unsupported"]),
])
def test_project_include_problems(entry: str, codes: list[str]) -> None:
    """A project file not given, a project without `file`, a path leaving the project, and a
    remote include are each an error with its own code."""
    result = plan({CI: entry})
    assert isinstance(result, Problems)
    assert sorted(p.code for p in result.errors) == codes


def test_project_include_listing_and_keys() -> None:
    """The loader's view: which project files a pipeline names, and the keys round-trip."""
    text = ("include:\n  - {project: acme/ci, ref: v1, file: [a.yml, /d/b.yml]}\n  - local: x.yml\n"
            "  - {project: o/p, file: c.yml}")
    assert [(i.project, i.ref, i.files) for i in project_includes(text, CI)] == [
        ("acme/ci", "v1", ("a.yml", "d/b.yml")), ("o/p", "", ("c.yml",))]
    assert split_project_key(project_key("g/sub/p", "release/1", "a/b.yml")) == ("g/sub/p", "release/1", "a/b.yml")


@pytest.mark.parametrize(("text", "expected"), [
    ("t: {script: [x], interruptible: true}", True),
    ("t: {script: [x]}", False),
    ("default: {interruptible: true}\nt: {script: [x]}", True),
    ("default: {interruptible: true}\nt: {script: [x], interruptible: false}", False),
])
def test_interruptible_is_read_from_the_job_or_default(text: str, expected: bool) -> None:
    """`interruptible` (job or default:) reaches the planned job, with no warning."""
    result = plan({CI: text})
    assert isinstance(result, Plan)
    assert result.job("t").interruptible is expected
    assert not [w for w in result.warnings if "interruptible" in w.message]
