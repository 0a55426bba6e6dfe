"""``sandpit exec``'s options, written once: one table (:data:`EXEC_OPTIONS`) from which both the
hand-rolled fast parser (:func:`parse_exec_fast`) and the argparse parser (:func:`add_exec_parser`)
are made, so a name, a default, a set of choices or a help text cannot differ between them.

Two parsers because ``exec`` is the hot path: importing argparse and building its parser cost about
8 ms of a 50 ms command, so the usual arguments are parsed by hand and anything unusual (help, an
abbreviation, a bad or missing value) goes to argparse, which says what is wrong in its own words.
This module imports only ``pipelines.record`` (itself import-light) on the way.
"""

from __future__ import annotations

from types import SimpleNamespace

from pipelines.record import record
from worker import TYPE_CHECKING

if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable, Sequence
    from typing import Any, Literal

#: the exit status of ``sandpit exec`` when the sandbox itself could not be made
SANDBOX_FAILED = 125


@record(frozen=True)
class ExecOption:
    """One option of ``sandpit exec``: ``value`` takes one value (checked against ``choices``),
    ``append`` collects its values into a list (``pairs``: each ``K=V``, kept as ``(K, V)``),
    ``flag`` takes none. ``shown`` is the default as the help tells it; ``env``, the environment
    variable that sets it, when one does."""

    name: str
    attr: str
    help: str
    default: str | None = None
    choices: tuple[str, ...] | None = None
    kind: Literal["value", "append", "flag"] = "value"
    pairs: bool = False
    metavar: str | None = None
    shown: str | None = None
    env: str | None = None


EXEC_OPTIONS: tuple[ExecOption, ...] = (
    ExecOption("--image", "image", "the image (a recipe in images/ or a reference one provides)", "debian"),
    ExecOption("--memory", "memory", "memory limit (K/M/G)", "256M"),
    ExecOption("--cpus", "cpus", "CPU limit, in cores", "1"),
    ExecOption("--pids", "pids", "most processes and threads at once", "128"),
    ExecOption("--disk", "disk", "size of the job's own disk (/workspace, /tmp)", "1G"),
    ExecOption("--timeout", "timeout", "wall-clock limit (s/m/h)", "30s"),
    ExecOption("--log-limit", "log_limit", "stop the job once its output exceeds this", "4M"),
    ExecOption("--network", "network", "none: loopback only; egress: the internet through sandpit's policy",
               "none", ("none", "egress")),
    ExecOption("--runtime", "runtime", "the OCI runtime", None, ("crun", "runc", "runsc"),
               shown="the first that works here", env="SANDPIT_RUNTIME"),
    ExecOption("--profile", "profile", "strict: no new privileges beyond the default, a smaller syscall set",
               "default", ("default", "strict")),
    ExecOption("--workdir", "workdir", "the command's working directory in the sandbox", "/workspace"),
    ExecOption("--env", "env", "an environment variable of the command; may be repeated", kind="append",
               pairs=True, metavar="K=V", shown="none"),
    ExecOption("--artifact", "artifact", "keep the files matching GLOB (under the workdir); may be repeated",
               kind="append", metavar="GLOB", shown="none"),
    ExecOption("--json", "json", "print the job result record on stdout", kind="flag", shown="off"),
)
_BY_NAME = {option.name: option for option in EXEC_OPTIONS}


def _initial(option: ExecOption) -> object:
    return [] if option.kind == "append" else False if option.kind == "flag" else option.default


def parse_exec_fast(rest: Sequence[str]) -> SimpleNamespace | None:
    """``sandpit exec``'s arguments (after ``exec``) without argparse. Anything unusual (help, an
    unknown or abbreviated option, a bad value, a missing one) returns None: argparse then parses
    it and says what is wrong.

    >>> ns = parse_exec_fast(["--memory=64M", "--env", "A=1", "--", "sh", "-c", "true"])
    >>> ns.memory, ns.env, ns.argv, ns.cpus
    ('64M', [('A', '1')], ['--', 'sh', '-c', 'true'], '1')
    >>> parse_exec_fast(["--mem", "64M", "true"]) is None
    True
    """
    ns = SimpleNamespace(command="exec", verbose=False, argv=[],
                         **{option.attr: _initial(option) for option in EXEC_OPTIONS})
    i = 0
    while i < len(rest):
        word = rest[i]
        if word == "--" or not word.startswith("-"):
            ns.argv = list(rest[i:])
            return ns
        name, eq, value = word.partition("=")
        option = _BY_NAME.get(name)
        if option is None:
            return None
        if option.kind == "flag":
            if eq:
                return None  # argparse refuses a value for a flag
            setattr(ns, option.attr, True)
            i += 1
            continue
        if not eq:
            if i + 1 >= len(rest) or rest[i + 1].startswith("-"):
                return None
            value = rest[i + 1]
            i += 1
        i += 1
        if option.kind == "append":
            if option.pairs:
                key, sep, val = value.partition("=")
                if not sep or not key:
                    return None
                getattr(ns, option.attr).append((key, val))
            else:
                getattr(ns, option.attr).append(value)
            continue
        if option.choices is not None and value not in option.choices:
            return None
        setattr(ns, option.attr, value)
    return ns


def env_pair(text: str) -> tuple[str, str]:
    """argparse's type for a ``K=V`` value."""
    name, sep, value = text.partition("=")
    if not sep or not name:
        import argparse

        raise argparse.ArgumentTypeError(f"{text!r} is not K=V")
    return name, value


def add_exec_parser(sub: Any, common: argparse.ArgumentParser,
                    helped: Callable[[str, object, str | None], str]) -> None:
    """The ``exec`` sub-parser, from the same table (``helped`` words an option's help with its
    default and environment variable, as every other command's)."""
    import argparse

    ex = sub.add_parser("exec", parents=[common], help="run one command in a fresh sandbox (like docker run --rm)",
                        description="Run one command in a fresh sandbox; its output is passed through raw.")
    for option in EXEC_OPTIONS:
        text = helped(option.help, option.shown or option.default, option.env)
        if option.kind == "flag":
            ex.add_argument(option.name, dest=option.attr, action="store_true", help=text)
        elif option.kind == "append":
            ex.add_argument(option.name, dest=option.attr, action="append", default=[], metavar=option.metavar,
                            type=env_pair if option.pairs else None, help=text)
        else:
            ex.add_argument(option.name, dest=option.attr, default=option.default, choices=option.choices,
                            metavar=option.metavar, help=text)
    ex.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- CMD [ARG...]")
