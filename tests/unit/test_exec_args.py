"""``sandpit exec``'s hand-rolled argument parser agrees with its argparse parser, or defers to it."""

from __future__ import annotations

import pytest

import worker.cli
from worker.cli.commands import build_parser, parse_exec_fast
from worker.cli.exec_options import EXEC_OPTIONS, ExecOption

AGREE = [
    ["--", "/bin/true"],
    ["/bin/true"],
    ["sh", "-c", "echo --memory 1G"],
    ["--memory", "64M", "--cpus=0.5", "--pids", "32", "--", "true"],
    ["--disk", "2G", "--timeout", "5m", "--log-limit=1k", "true"],
    ["--network", "egress", "--runtime", "runc", "--profile=strict", "--", "id"],
    ["--env", "A=1", "--env=B=x=y", "--env", "C=", "--workdir", "/w", "true"],
    ["--artifact", "out/*.txt", "--artifact=b", "--json", "--image", "python", "--", "python3", "-V"],
    ["--json", "--", "--json"],
    [],
]

DEFER = [
    ["--help"],
    ["-h"],
    ["--mem", "64M", "true"],  # abbreviation: argparse accepts it
    ["--network", "host", "true"],  # not a choice
    ["--runtime=docker", "true"],
    ["--env", "NOEQUALS", "true"],
    ["--env", "=v", "true"],
    ["--memory"],  # missing value
    ["--memory", "--", "true"],
    ["--bogus", "1", "true"],
    ["--cpus", "-1", "true"],
]


@pytest.mark.parametrize("rest", AGREE, ids=lambda r: " ".join(r) or "empty")
def test_fast_parser_agrees_with_argparse(rest: list[str]) -> None:
    fast = parse_exec_fast(rest)
    assert fast is not None
    slow = build_parser("exec").parse_args(["exec", *rest])
    assert vars(fast) == vars(slow)


@pytest.mark.parametrize("rest", DEFER, ids=" ".join)
def test_fast_parser_defers_what_it_does_not_know(rest: list[str]) -> None:
    assert parse_exec_fast(rest) is None


def test_argparse_still_reports_bad_exec_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        worker.cli.main(["exec", "--network", "host", "true"])
    assert exc.value.code == 2
    assert "invalid choice: 'host'" in capsys.readouterr().err


def _uses(option: ExecOption) -> list[list[str]]:
    """Argument lists giving ``option`` each way it can be written (from the table itself, so a
    row added there is tried here)."""
    if option.kind == "flag":
        return [[option.name, "true"], [option.name, "--", option.name]]
    values = list(option.choices or ("1", "x y")) if not option.pairs else ["A=1", "B=x=y", "C="]
    spaced = [word for value in values for word in (option.name, value)]
    glued = [f"{option.name}={value}" for value in values]
    return [[*spaced, "true"], [*glued, "--", "true"], [option.name, values[-1], option.name, values[0], "x"]]


@pytest.mark.parametrize("rest", [rest for option in EXEC_OPTIONS for rest in _uses(option)], ids=" ".join)
def test_every_option_of_the_table_parses_the_same_both_ways(rest: list[str]) -> None:
    fast = parse_exec_fast(rest)
    assert fast is not None
    assert vars(fast) == vars(build_parser("exec").parse_args(["exec", *rest]))


def test_both_parsers_have_every_option_of_the_table_and_no_other() -> None:
    (exec_parser,) = [choice for action in build_parser("exec")._subparsers._group_actions  # type: ignore[union-attr]
                      for name, choice in action.choices.items() if name == "exec"]  # type: ignore[union-attr]
    names = {o for action in exec_parser._actions for o in action.option_strings} - {"-h", "--help", "-v", "--verbose"}
    assert names == {option.name for option in EXEC_OPTIONS}
    assert set(vars(parse_exec_fast([]))) == {option.attr for option in EXEC_OPTIONS} | {"command", "verbose", "argv"}
