"""`sandpit lint`: compiler-style problems, the plan, JSON, and exit codes."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
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


# --- `sandpit lint --policy`, as a real process ---------------------------------------------

OVER_CAPS = """\
build:
  script: [make]
ask-a-lot:
  script: [make]
  sandbox: {memory: 200G, cpus: 64, network: egress}
"""


def lint_process(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`sandpit lint ...` in a fresh interpreter (python -m worker, the console script's module)."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SANDPIT_POLICY_")}
    return subprocess.run([sys.executable, "-m", "worker", "lint", *args], env={**clean, **(env or {})},
                          capture_output=True, text=True, timeout=60, cwd=REPO_ROOT, check=False)


def test_lint_policy_shows_every_cap_with_its_location(tmp_path: Path) -> None:
    """--policy untrusted lists each cap the pipeline passes, at file:line:col, naming the setting."""
    path = write(tmp_path, OVER_CAPS)
    proc = lint_process([str(path), "--policy", "untrusted"])
    assert proc.returncode == 1, proc.stdout + proc.stderr
    lines = [line for line in proc.stdout.splitlines() if "error[over-policy]" in line]
    assert len(lines) == 3
    assert all(line.startswith(f"{path.name}:3:1: error[over-policy]: job `ask-a-lot` asks for") for line in lines)
    for setting in ("SANDPIT_POLICY_UNTRUSTED_MEMORY", "SANDPIT_POLICY_UNTRUSTED_CPUS",
                    "SANDPIT_POLICY_UNTRUSTED_EGRESS"):
        assert setting in proc.stdout
    assert proc.stdout.rstrip().endswith("3 errors, 0 warnings")


def test_lint_policy_json_and_settings_from_the_environment(tmp_path: Path) -> None:
    """--json carries the same problems; the caps come from SANDPIT_POLICY_* of the environment."""
    path = write(tmp_path, OVER_CAPS)
    proc = lint_process([str(path), "--policy", "trusted", "--json"],
                        {"SANDPIT_POLICY_TRUSTED_MEMORY": "none", "SANDPIT_POLICY_TRUSTED_CPUS": "none"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    document = json.loads(proc.stdout)
    assert document["ok"] is True and document["policy"]["level"] == "trusted"
    assert document["policy"]["max_memory_bytes"] is None and document["policy"]["max_jobs"] == 500
    proc = lint_process([str(path), "--policy", "trusted", "--json"],
                        {"SANDPIT_POLICY_TRUSTED_MEMORY": "none", "SANDPIT_POLICY_TRUSTED_EGRESS": "false"})
    document = json.loads(proc.stdout)
    assert proc.returncode == 1 and document["ok"] is False
    assert [(p["line"], p["col"], p["code"]) for p in document["problems"]] == [(3, 1, "over-policy")] * 2
    assert "SANDPIT_POLICY_TRUSTED_EGRESS" in document["problems"][1]["message"]


def test_lint_without_policy_does_not_check_caps(tmp_path: Path) -> None:
    """Plain lint checks the language only; the same file plans."""
    proc = lint_process([str(write(tmp_path, OVER_CAPS))])
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_lint_policy_jobs_per_run(tmp_path: Path) -> None:
    """A matrix past the jobs-per-run cap is refused, naming the cap."""
    path = write(tmp_path, "t:\n  script: [x]\n  parallel: 200\nu:\n  script: [x]\n  parallel: 200\n")
    proc = lint_process([str(path), "--policy", "untrusted"], {"SANDPIT_POLICY_UNTRUSTED_JOBS": "300"})
    assert proc.returncode == 1
    assert "plans 400 jobs; the untrusted policy allows at most 300 per run (SANDPIT_POLICY_UNTRUSTED_JOBS)" in (
        proc.stdout)


@pytest.mark.parametrize(
    ("env", "fragment"),
    [({"SANDPIT_POLICY_UNTRUSTED_CPUZ": "2"}, "did you mean SANDPIT_POLICY_UNTRUSTED_CPUS"),
     ({"SANDPIT_POLICY_UNTRUSTED_MEMORY": "big"}, "SANDPIT_POLICY_UNTRUSTED_MEMORY: 'big' is not a size")],
)
def test_lint_bad_policy_setting_exits_two(tmp_path: Path, env: dict[str, str], fragment: str) -> None:
    """A policy setting that cannot be used is a usage error (exit 2), one line, no traceback."""
    proc = lint_process([str(write(tmp_path, OVER_CAPS)), "--policy", "untrusted"], env)
    assert proc.returncode == 2 and fragment in proc.stderr and "Traceback" not in proc.stderr


def test_lint_refuses_a_control_character_in_var(tmp_path: Path) -> None:
    """--var with a control character is a usage error that shows it escaped."""
    proc = lint_process([str(write(tmp_path, "t: {script: [x]}")), "--var", "A=x\x1b[2Jy"])
    assert proc.returncode == 2 and "U+001B (ESC)" in proc.stderr and "\x1b" not in proc.stderr


def test_lint_source_words_and_option_order(tmp_path: Path) -> None:
    """`--source` takes CI_PIPELINE_SOURCE's words and the planner's (`--trigger`); options go before
    or after the file; a word that is no source is a usage error (exit 2) naming the good ones."""
    path = write(tmp_path, "mr: {script: [x], rules: [{if: '$CI_PIPELINE_SOURCE == \"merge_request_event\"'}]}\n"
                           "all: {script: [y]}\n")
    for argv in (["--source", "merge_request_event", str(path), "--json"],
                 ["--json", "--trigger", "merge_request", str(path)]):
        code, out, _ = run(argv)
        # a job without rules is not in a merge request pipeline (only's default: branches and tags)
        assert code == 0 and [j["name"] for j in json.loads(out)["plan"]["jobs"]] == ["mr"], argv
    code, out, _ = run(["--json", str(path)])
    assert [j["name"] for j in json.loads(out)["plan"]["jobs"]] == ["all"]
    code, _, err = run([str(path), "--source", "nightly"])
    assert code == 2 and "not a pipeline source" in err and "merge_request_event" in err
