"""`sandpit`'s arguments as a user types them: options in any position, `--help` on every
sub-command, every option's help naming its default; the real process where it matters."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest

from worker.cli.commands import build_parser, parse_exec_fast
from worker.cli.remote import try_line
from worker.local.run import _unglued, only_jobs, script_echoes
from worker.terminal import Paint, colour_wanted, split_sections, strip_colour

REPO = Path(__file__).resolve().parents[2]
PIPELINE = "t: {script: [x], rules: [{if: '$DEPLOY == \"1\"'}]}\nu: {script: [y]}\n"


def sandpit(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SANDPIT_")}
    return subprocess.run([sys.executable, "-m", "worker", *args], env={**clean, **(env or {})}, cwd=REPO,
                          capture_output=True, text=True, timeout=60)


def test_lint_help_shows_lint_options_and_exits_zero() -> None:
    p = sandpit("lint", "--help")
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("usage: sandpit lint")
    for option in ("--trigger", "--source", "--ref", "--tag", "--sha", "--changed", "--var", "--json", "--policy"):
        assert option in p.stdout, option


@pytest.mark.parametrize("order", [
    ["--json", "--var", "DEPLOY=1", "{file}"],
    ["--var", "DEPLOY=1", "{file}", "--json"],
    ["-v", "{file}", "--json", "--var=DEPLOY=1"],
])
def test_lint_options_in_any_position(tmp_path: Path, order: list[str]) -> None:
    path = tmp_path / "p.yml"
    path.write_text(PIPELINE)
    p = sandpit("lint", *[a.replace("{file}", str(path)) for a in order])
    assert p.returncode == 0, p.stderr
    import json

    assert [job["name"] for job in json.loads(p.stdout)["plan"]["jobs"]] == ["t", "u"]


def test_lint_source_takes_gitlabs_words(tmp_path: Path) -> None:
    path = tmp_path / "p.yml"
    path.write_text("mr: {script: [x], rules: [{if: '$CI_PIPELINE_SOURCE == \"merge_request_event\"'}]}\n"
                    "tag: {script: [x], rules: [{if: $CI_COMMIT_TAG}]}\nany: {script: [x]}\n")
    plain = sandpit("lint", str(path))
    assert " mr " not in plain.stdout and "| tag " not in plain.stdout
    mr = sandpit("lint", str(path), "--source", "merge_request_event")
    assert "| mr (" in mr.stdout, mr.stdout
    tagged = sandpit("lint", "--tag", "--ref", "v1.0", str(path))
    assert "| tag (" in tagged.stdout, tagged.stdout
    bad = sandpit("lint", str(path), "--source", "cron")
    assert bad.returncode == 2 and "not a pipeline source" in bad.stderr and "Traceback" not in bad.stderr


def test_run_accepts_verbose_after_the_sub_command() -> None:
    args = build_parser().parse_args(["run", "-v", "p.yml", "--job", "a", "--source", "merge_request_event",
                                      "--tag", "--ref", "v1", "-t", "--color=never"])
    assert (args.verbose, args.file, args.job, args.trigger, args.tag, args.ref) == (
        True, "p.yml", ["a"], "merge_request", True, "v1")
    assert (args.timestamps, args.color) == (True, "never")
    assert build_parser().parse_args(["-v", "run", "p.yml"]).verbose is True
    assert getattr(build_parser().parse_args(["run", "p.yml"]), "verbose", False) is False


def _subparsers(parser: argparse.ArgumentParser):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield name, sub
                yield from ((f"{name} {n}", s) for n, s in _subparsers(sub))


def test_every_option_of_every_sub_command_has_help_with_its_default() -> None:
    missing = []
    for name, sub in _subparsers(build_parser()):
        for action in sub._actions:
            if not action.option_strings or isinstance(action, argparse._HelpAction) or action.required:
                continue  # a required option has no default to tell
            text = action.help or ""
            if "default" not in text:
                missing.append(f"{name} {action.option_strings[0]}: {text!r}")
    assert not missing, "\n".join(missing)


def test_options_name_the_environment_that_sets_them() -> None:
    parser = build_parser()
    helps = {name: sub.format_help() for name, sub in _subparsers(parser)}
    assert "SANDPIT_RUNTIME" in helps["exec"]
    assert "SANDPIT_POLICY_" in helps["run"] and "NO_COLOR" in helps["run"]
    assert "SANDPIT_STATE_DIR" in helps["up"] and "SANDPIT_API_URL" in helps["submit"]


def test_exec_fast_path_is_unchanged_and_imports_no_argparse() -> None:
    ns = parse_exec_fast(["--memory", "64M", "--", "true"])
    assert ns is not None and ns.memory == "64M" and ns.argv == ["--", "true"]
    probe = ("import sys; from worker.cli.commands import parse_exec_fast; parse_exec_fast(['--', 'true']); "
             "print('argparse' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_verbose_shows_sandpits_steps_not_alembics(tmp_path: Path) -> None:
    """`-v` after the sub-command turns on sandpit's INFO lines; alembic's go to WARNING."""
    probe = ("import logging, sys; from worker.cli.commands import _verbose_logging; _verbose_logging(); "
             "from pipelines.store.db import migrate; migrate(sys.argv[1]); "
             "logging.getLogger('sandpit.run').info('a step of sandpit')")
    p = subprocess.run([sys.executable, "-c", probe, f"sqlite:///{tmp_path / 'db'}"], cwd=REPO,
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert "sandpit: a step of sandpit" in p.stderr
    assert "alembic" not in p.stderr.lower() and "Context impl" not in p.stderr and "Running upgrade" not in p.stderr


def test_try_line_names_the_api_it_started() -> None:
    line = try_line("0.0.0.0", 8123, "tok", False)  # noqa: S104 - a wildcard the line must turn into 127.0.0.1
    assert line.startswith("SANDPIT_API_URL=http://127.0.0.1:8123 SANDPIT_TOKEN=tok ")
    assert str(REPO / "pipelines" / "examples" / "demo.yml") in line and line.endswith("--follow")
    assert "SANDPIT_TOKEN=<one of SANDPIT_API_TOKENS>" in try_line("127.0.0.1", 1, "label", True)


# --- what sandpit run draws (pure parts; the whole run is in tests/sandbox/test_local_run_log.py) ---

def test_sections_are_cut_out_of_a_sanitized_line() -> None:
    assert split_sections("section_start:1:a.b-c_d[collapsed=true]\r\x1b[1mTitle") == [
        ("start", "a.b-c_d", "\x1b[1mTitle")]
    assert split_sections("x section_end:1:a\r section_start:2:b\rB") == [
        ("text", "", "x "), ("end", "a", ""), ("text", "", " "), ("start", "b", "B")]
    assert split_sections("section_start:1:a no CR") == [("text", "", "section_start:1:a no CR")]


def test_unglued_cuts_only_the_scripts_own_echo() -> None:
    echoes = frozenset({"$ python3 -c 'x'", "$ b"})
    assert _unglued("{\"python\": \"3.11.2\"}$ python3 -c 'x'", echoes) == [
        "{\"python\": \"3.11.2\"}", "$ python3 -c 'x'"]
    assert _unglued("pay $ b now", echoes) == ["pay $ b now"]
    assert _unglued("$ b", echoes) == ["$ b"]


def test_script_echoes_match_the_script() -> None:
    from pipelines.language.model import Job, Loc

    job = Job(name="j", stage="s", loc=Loc("f", 1, 1), script=("echo 'it''s'", "make\nmore"), after_script=("x",))
    assert script_echoes(job) == {"$ echo 'it''s'", "$ make # collapsed multi-line command", "$ x",
                                  "Running after_script"}


def test_only_jobs_keeps_what_the_job_needs(tmp_path: Path) -> None:
    from pipelines.language.loader import load_pipeline
    from pipelines.language.model import PipelineInputs, Plan
    from pipelines.language.planner import plan

    path = tmp_path / "p.yml"
    path.write_text("stages: [a, b, c]\nlint: {stage: a, script: [x]}\nbuild: {stage: a, script: [x]}\n"
                    "test: {stage: b, needs: [build], script: [x], parallel: 2}\n"
                    "deploy: {stage: c, needs: [test], script: [x]}\nlate: {stage: c, script: [x]}\n")
    loaded = load_pipeline(path)
    planned = plan(loaded.files, PipelineInputs(), entry=loaded.entry)
    assert isinstance(planned, Plan)
    cut = only_jobs(planned, ("deploy",))
    assert isinstance(cut, Plan)
    assert cut.names() == ["build", "test 1/2", "test 2/2", "deploy"]
    late = only_jobs(planned, ("late",))
    # stage order: every job of the earlier stages, not its own stage's others
    assert isinstance(late, Plan) and late.names() == ["lint", "build", "test 1/2", "test 2/2", "late"]
    assert only_jobs(planned, ("test",)).names() == ["build", "test 1/2", "test 2/2"]  # type: ignore[union-attr]
    missing = only_jobs(planned, ("nope",))
    assert isinstance(missing, str) and "no job nope" in missing and "deploy" in missing


def test_colour_only_where_asked() -> None:
    class Tty:
        def isatty(self) -> bool:
            return True

    assert colour_wanted("auto", Tty(), {}) is True
    assert colour_wanted("auto", Tty(), {"NO_COLOR": "1"}) is False
    assert colour_wanted("auto", object(), {}) is False
    assert colour_wanted("always", object(), {"NO_COLOR": "1"}) is True
    assert colour_wanted("never", Tty(), {}) is False
    assert Paint(False)("red", "x") == "x" and Paint(True)("red", "x") == "\x1b[31mx\x1b[0m"
    assert strip_colour("\x1b[1;31mred\x1b[0m plain") == "red plain"
