"""`sandpit lint`: compiler-style problems, the plan, JSON, and exit codes."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import pytest

from pipelines.language.cli import lint_main
from pipelines.language.problems import CODES
from pipelines.language.schema import KEYS
from pipelines.language.variables import PREDEFINED

from .conftest import REPO_ROOT


def run(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = lint_main(argv, out, err)
    return code, out.getvalue(), err.getvalue()


def write(tmp_path: Path, text: str, name: str = ".gitlab-ci.yml") -> Path:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_lint_prints_plan_and_exits_zero_with_warnings(tmp_path: Path) -> None:
    """A plannable file exits 0 even with warnings, and prints stages and jobs."""
    path = write(tmp_path, "build: {stage: build, script: [make], tags: [x]}\ntest: {script: [make check]}\n")
    code, out, _ = run([str(path)])
    assert code == 0
    assert "warning[unsupported-ignored]" in out and "stages: .pre, build, test, deploy, .post" in out
    assert re.search(r"test \| test \(after 1 job", out) and out.rstrip().endswith("0 errors, 1 warning")


def test_lint_reports_errors_like_a_compiler(tmp_path: Path) -> None:
    """Errors print as file:line:col: error[code]: message, with a hint, and exit 1."""
    path = write(tmp_path, "t:\n  scrpit: [x]\n  script: [x]\n")
    code, out, _ = run([str(path)])
    assert code == 1
    assert out.startswith(".gitlab-ci.yml:2:3: error[unknown-key]: unknown key `scrpit` in a job\n  hint: ")


def test_lint_vars_and_json(tmp_path: Path) -> None:
    """--var feeds rules; --json prints one document with problems and plan."""
    path = write(tmp_path, "t: {script: [x], rules: [{if: '$DEPLOY == \"1\"'}]}\nu: {script: [y]}\n")
    code, out, _ = run([str(path), "--var", "DEPLOY=1", "--json"])
    document = json.loads(out)
    assert code == 0 and document["ok"] is True
    assert [job["name"] for job in document["plan"]["jobs"]] == ["t", "u"]
    code, out, _ = run([str(path), "--json"])
    assert [job["name"] for job in json.loads(out)["plan"]["jobs"]] == ["u"]


def test_lint_follows_local_includes_from_disk(tmp_path: Path) -> None:
    """The loader reads local includes (and globs) inside the repository, never outside it."""
    (tmp_path / ".git").mkdir()
    write(tmp_path, ".t: {script: [from include]}\n", "ci/base.yml")
    write(tmp_path, "x: {script: [x]}\n", "ci/more/a.yml")
    write(tmp_path.parent, "secret: {script: [x]}\n", "outside.yml")
    path = write(tmp_path, "include: [/ci/base.yml, 'ci/more/*.yml', ../outside.yml]\nj: {extends: .t}\n")
    code, out, _ = run([str(path), "--json"])
    document = json.loads(out)
    assert code == 1
    assert [p["code"] for p in document["problems"]] == ["include-outside-repo"]


def test_lint_usage_errors_exit_two(tmp_path: Path) -> None:
    """A missing file or a malformed --var exits 2 with a message on stderr."""
    code, _, err = run([str(tmp_path / "nope.yml")])
    assert code == 2 and "cannot read" in err
    code, _, err = run([str(write(tmp_path, "t: {script: [x]}")), "--var", "novalue"])
    assert code == 2 and "NAME=VALUE" in err


DOC = REPO_ROOT / "docs" / "pipeline-language.md"


@pytest.mark.parametrize("code", sorted(CODES))
def test_every_problem_code_is_documented(code: str) -> None:
    """docs/pipeline-language.md lists every problem code sandpit emits."""
    assert f"`{code}`" in DOC.read_text()


def test_predefined_variables_and_unsupported_keys_are_documented() -> None:
    """The docs name every CI_* variable provided and every ignored/refused key."""
    text = DOC.read_text()
    missing = [name for name in PREDEFINED if f"`{name}`" not in text]
    for table in KEYS.values():
        missing += [key for key in [*table.ignored, *table.refused] if f"`{key}`" not in text]
    assert not missing
