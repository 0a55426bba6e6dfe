"""``sandpit lint FILE [--var K=V]... [--json] [--source S --ref R --tag --sha X --changed P]``: print
every problem like a compiler, and the plan.

Exit status: 0 when the pipeline plans (warnings allowed), 1 when it has errors, 2 when the file
cannot be read or the arguments are wrong. Runnable alone as ``python -m pipelines.language.cli``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TextIO

from pipelines.language.loader import load_pipeline
from pipelines.language.model import TRIGGERS, Job, PipelineInputs, Plan
from pipelines.language.planner import plan
from pipelines.language.problems import Problem, Problems
from pipelines.language.variables import PIPELINE_SOURCES
from pipelines.language.yamltree import bad_character
from pipelines.policy import TRUST_LEVELS, Policy, PolicyError, admit, describe
from pipelines.references import InvalidReference, honoured_by


class _LintArgumentParser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise _UsageError(message)


class _UsageError(Exception):
    pass


#: ``--source`` takes GitLab's ``CI_PIPELINE_SOURCE`` words as well as the planner's trigger names
_SOURCE_WORDS = {**{t: t for t in TRIGGERS}, **{v: k for k, v in PIPELINE_SOURCES.items()}}


def pipeline_source(text: str) -> str:
    """The planner's trigger for a ``--source``/``--trigger`` word (``merge_request_event`` or
    ``merge_request``, ``push``, ``web``, ...), so both GitLab's and sandpit's spellings work."""
    try:
        return _SOURCE_WORDS[text]
    except KeyError:
        words = ", ".join(sorted(set(PIPELINE_SOURCES.values())))
        raise argparse.ArgumentTypeError(f"{text!r} is not a pipeline source (one of {words})") from None


def add_pipeline_inputs(parser: argparse.ArgumentParser, *, ref: str, sha: str) -> None:
    """The options that say which pipeline to simulate, shared by ``sandpit lint`` and ``sandpit run``
    (``ref``/``sha``: how each command's default is described in ``--help``)."""
    parser.add_argument("--source", "--trigger", dest="trigger", type=pipeline_source, default="push",
                        metavar="SOURCE",
                        help="what started the pipeline, as CI_PIPELINE_SOURCE says it: push, "
                             "merge_request_event, web, api, schedule (default: push)")
    parser.add_argument("--ref", default=None, help=f"the branch (or tag, with --tag) being built (default: {ref})")
    parser.add_argument("--tag", action="store_true", help="the ref is a tag (CI_COMMIT_TAG; default: a branch)")
    parser.add_argument("--sha", default=None, help=f"the commit being built (default: {sha})")
    parser.add_argument("--changed", action="append", default=None, metavar="PATH",
                        help="a changed file, for rules:changes; may be repeated (default: unknown, so every "
                             "changes rule holds, as on GitLab)")


def add_lint_arguments(parser: argparse.ArgumentParser) -> None:
    """``sandpit lint``'s arguments, on ``sandpit``'s own sub-parser (so ``sandpit lint --help`` and
    options in any position work) or on the stand-alone parser below."""
    parser.add_argument("file", type=Path, help="the pipeline file (.gitlab-ci.yml)")
    parser.add_argument("--var", action="append", default=[], metavar="K=V",
                        help="a pipeline variable (as a trigger's variables); may be repeated (default: none)")
    parser.add_argument("--json", action="store_true", help="print one JSON document (default: text)")
    add_pipeline_inputs(parser, ref="main", sha="forty zeros")
    parser.add_argument("--policy", choices=TRUST_LEVELS, default=None,
                        help="also check the caps of this trust level, read from the SANDPIT_POLICY_* "
                             "environment variables (default: no caps checked)")


def _parser() -> _LintArgumentParser:
    parser = _LintArgumentParser(prog="sandpit lint", description="Validate a pipeline file and show its plan.")
    add_lint_arguments(parser)
    return parser


def lint_main(argv: list[str], stdout: TextIO, stderr: TextIO, images: dict[str, str] | None = None,
              env: Mapping[str, str] | None = None) -> int:
    """Entry point; ``argv`` excludes the word ``lint``. ``images`` (reference → recipe, from the
    image store's recipes) adds a warning for every planned job whose image would be refused.
    ``env`` (default: the process's environment) holds the ``SANDPIT_POLICY_*`` settings that
    ``--policy`` reads."""
    try:
        args = _parser().parse_args(argv)
    except _UsageError as exc:
        stderr.write(f"sandpit lint: {exc}\n")
        return 2
    return lint_parsed(args, stdout, stderr, images=images, env=env)


def lint_parsed(args: argparse.Namespace, stdout: TextIO, stderr: TextIO, images: dict[str, str] | None = None,
                env: Mapping[str, str] | None = None) -> int:
    """``sandpit lint`` with its arguments already parsed (by :func:`add_lint_arguments`'s options)."""
    try:
        variables = dict(split_var(text) for text in args.var)
    except _UsageError as exc:
        stderr.write(f"sandpit lint: {exc}\n")
        return 2
    level = None
    if args.policy is not None:
        try:
            level = Policy.from_env(os.environ if env is None else env).level(args.policy)
        except PolicyError as exc:
            stderr.write(f"sandpit lint: {exc}\n")
            return 2
    try:
        loaded = load_pipeline(args.file)
    except OSError as exc:
        stderr.write(f"sandpit lint: cannot read {args.file}: {exc.strerror or exc}\n")
        return 2
    inputs = PipelineInputs(
        trigger=args.trigger,
        ref=args.ref or "main",
        ref_kind="tag" if args.tag else "branch",
        sha=args.sha or "0" * 40,
        variables=variables,
        changed_files=None if args.changed is None else tuple(args.changed),
        existing_files=loaded.existing,
    )
    result: Plan | Problems = plan(loaded.files, inputs, entry=loaded.entry)
    if level is not None and isinstance(result, Plan):
        admitted = admit(result, level)  # the caps, as the server checks them at submission
        if not isinstance(admitted, Plan):
            result = Problems(tuple(sorted((*admitted, *result.warnings), key=lambda p: (p.loc, p.code))))
    problems = result.items if isinstance(result, Problems) else result.warnings
    if images is not None and isinstance(result, Plan):
        problems = tuple(sorted(problems + image_warnings(result, images), key=lambda p: (p.loc, p.code)))
    if args.json:
        document = {
            "ok": isinstance(result, Plan),
            "problems": [p.as_dict() for p in problems],
            "plan": plan_summary(result) if isinstance(result, Plan) else None,
        }
        if level is not None:
            document["policy"] = describe(level)  # the caps and defaults the check used
        stdout.write(json.dumps(document, indent=2) + "\n")
    else:
        for problem in problems:
            stdout.write(problem.render() + "\n")
        if isinstance(result, Plan):
            stdout.write(render_plan(result))
        stdout.write(_summary(problems) + "\n")
    return 0 if isinstance(result, Plan) else 1


def image_warnings(result: Plan, images: dict[str, str]) -> tuple[Problem, ...]:
    """A warning at each job whose image (variables expanded) no recipe honours, naming what exists;
    registry hosts and digests are already reported at the ``image:`` key itself."""
    found = []
    for job in result.jobs:
        if job.image is None:
            continue
        try:
            honoured_by(job.image.name, images)
        except InvalidReference as exc:
            if "registry" in str(exc) or "digest" in str(exc):
                continue
            found.append(Problem(job.loc, "warning", "image-unavailable", f"job {job.name}: {exc}",
                                 "use an image the recipes in images/ provide, or add it to a recipe's provides"))
    return tuple(found)


def split_var(text: str) -> tuple[str, str]:
    """``NAME=VALUE`` of a ``--var``; a usage error names what is wrong."""
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise _UsageError(f"--var wants NAME=VALUE, got {text!r}")
    problem = bad_character(name) or bad_character(value, multiline=True)
    if problem is not None:
        raise _UsageError(f"--var {ascii(name)[1:-1]}: holds {problem}")
    return name, value


def _summary(problems: tuple[Problem, ...]) -> str:
    errors = sum(1 for p in problems if p.severity == "error")
    warnings = len(problems) - errors
    return f"{errors} error{'s' * (errors != 1)}, {warnings} warning{'s' * (warnings != 1)}"


def render_plan(result: Plan) -> str:
    """The planned stages and jobs, one line per job with what it waits for."""
    why = result.nothing_to_run()
    if why is not None:
        return why + "\n"
    lines = [f"stages: {', '.join(result.stages)}", f"jobs ({len(result.jobs)}):"]
    for job in result.jobs:
        waits = (
            "needs: " + (", ".join(n.job for n in job.needs) or "[]")
            if job.needs is not None
            else (
                f"after {len(job.depends_on)} job(s) of earlier stages"
                if job.depends_on
                else "starts at once"
            )
        )
        extra = "" if job.when == "on_success" else f" [{job.when}]"
        lines.append(f"  {job.stage:>12} | {job.name}{extra} ({waits})")
    return "\n".join(lines) + "\n"


def _job_summary(job: Job) -> dict[str, object]:
    return {
        "name": job.name,
        "stage": job.stage,
        "when": job.when,
        "image": None if job.image is None else job.image.name,
        "needs": None if job.needs is None else [n.job for n in job.needs],
        "depends_on": list(job.depends_on),
        "allow_failure": job.allow_failure.allowed,
        "timeout_seconds": job.timeout_seconds,
        "matrix": dict(job.matrix),
    }


def plan_summary(result: Plan) -> dict[str, object]:
    return {
        "created": result.created,
        "stages": list(result.stages),
        "jobs": [_job_summary(job) for job in result.jobs],
    }


if __name__ == "__main__":  # pragma: no cover
    sys.exit(lint_main(sys.argv[1:], sys.stdout, sys.stderr))
