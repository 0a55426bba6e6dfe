"""``sandpit exec``'s hand-rolled argument parser agrees with its argparse parser, or defers to it."""

from __future__ import annotations

import pytest

import worker.cli
from worker.cli import build_parser, parse_exec_fast

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
