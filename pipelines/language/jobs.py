"""One job definition (after extends, references and defaults) read into a typed value (pure).

A :class:`JobDef` is still a template: ``parallel`` has not been expanded, rules not decided and
variables not resolved; :mod:`pipelines.language.planner` does that per run.

>>> from pipelines.language.yamltree import parse_yaml
>>> sink = ProblemSink()
>>> tree = parse_yaml("script: [make]\\nstage: build\\nretry: 1\\n", "ci", sink)
>>> job = read_job("build", tree, Loc("ci", 1, 1), READ_OPTIONS, sink)  # type: ignore[arg-type]
>>> job.stage, job.script, job.retry.max
('build', ('make',), 1)
"""

from __future__ import annotations

from dataclasses import dataclass

from pipelines.language.fields import (
    read_allow_failure,
    read_artifacts,
    read_caches,
    read_image,
    read_retry,
    read_sandbox,
    read_timeout,
)
from pipelines.language.model import AllowFailure, Artifacts, Cache, Image, Retry, SandboxPolicy, SandboxSpec
from pipelines.language.parallel import read_parallel
from pipelines.language.problems import Loc, ProblemSink
from pipelines.language.reader import (
    check_name,
    flatten_items,
    kind_of,
    read_bool,
    read_map,
    read_script,
    read_str,
    read_str_list,
    wrong_type,
)
from pipelines.language.rules import RefPolicy, Rule, read_duration, read_policy, read_rules
from pipelines.language.schema import check_keys
from pipelines.language.services import ServiceDef, read_services
from pipelines.language.yamltree import YMap, YNode, YScalar, YSeq, bad_character

JOB_WHENS = ("on_success", "on_failure", "always", "manual", "delayed")
Matrix = tuple[tuple[tuple[str, str], ...], ...]


@dataclass(frozen=True, slots=True)
class ReadOptions:
    policy: SandboxPolicy
    cause: Loc | None  # an include that was not loaded: what it would define may be "missing"


READ_OPTIONS = ReadOptions(SandboxPolicy(), None)


@dataclass(frozen=True, slots=True)
class NeedSpec:
    job: str
    loc: Loc
    artifacts: bool = True
    optional: bool = False
    matrix: Matrix | None = None  # needs:parallel:matrix filter, values may hold $[[ matrix.X ]]


@dataclass(frozen=True, slots=True)
class VariableDef:
    name: str
    value: str
    expand: bool = True


@dataclass(frozen=True, slots=True)
class JobDef:
    name: str
    loc: Loc
    stage: str = "test"
    stage_loc: Loc | None = None
    image: Image | None = None
    services: tuple[ServiceDef, ...] = ()
    script: tuple[str, ...] = ()
    after_script: tuple[str, ...] = ()
    variables: tuple[VariableDef, ...] = ()
    needs: tuple[NeedSpec, ...] | None = None
    dependencies: tuple[str, ...] | None = None
    dependencies_loc: Loc | None = None
    when: str = "on_success"
    when_set: bool = False
    start_in_seconds: int | None = None
    allow_failure: AllowFailure | None = None
    retry: Retry = Retry()  # noqa: RUF009 - frozen, so sharing one default is safe
    timeout_seconds: int | None = None
    interruptible: bool = False
    artifacts: Artifacts | None = None
    caches: tuple[Cache, ...] = ()
    sandbox: SandboxSpec = SandboxSpec()  # noqa: RUF009 - frozen, so sharing one default is safe
    parallel_total: int | None = None
    matrix: Matrix | None = None
    rules: tuple[Rule, ...] | None = None
    only: RefPolicy | None = None
    except_: RefPolicy | None = None


def read_variables(node: YNode, what: str, sink: ProblemSink) -> tuple[VariableDef, ...]:
    """``variables:`` with plain values or ``{value, description, expand, options}``."""
    mapping = read_map(node, what, sink, "variables: {NAME: value}")
    if mapping is None:
        return ()
    out: list[VariableDef] = []
    for name, value in mapping.items():
        expand = True
        if isinstance(value, YMap):
            check_keys(value, "variable", sink)
            if (expand_node := value.get("expand")) is not None:
                expand = read_bool(expand_node, f"{what}:{name}:expand", sink) is not False
            inner = value.get("value")
            if inner is None:
                out.append(VariableDef(name, "", expand))
                continue
            value = inner
        if isinstance(value, YScalar) and (value.value is None or isinstance(value.value, bool)):
            sink.warning(
                value.loc,
                "variable-type",
                f"variable {name} is {kind_of(value)}; it becomes '{value.text()}'",
                f'quote it: {name}: "{value.text()}"',
            )
            out.append(VariableDef(name, value.text(), expand))
            continue
        text = read_str(value, f"{what}:{name}", sink)
        problem = None if text is None else bad_character(text, multiline=True)
        if text is not None and problem is not None:
            if bad_character(text, controls=False) is None:  # a NUL: the YAML reader reported it already
                sink.error(value.loc, "invalid-character", f"variable {name} holds {problem}",
                           "variable values may hold TAB and newlines, no other control character")
        elif text is not None:
            out.append(VariableDef(name, text, expand))
    return tuple(out)


def _script_missing(node: YNode | None) -> bool:
    """No script was written at all: absent, or lists with no line. A script whose lines all
    failed to read (``script: [true]``) is not missing: its type errors say what is wrong."""
    if node is None:
        return True
    if isinstance(node, YSeq):
        return all(_script_missing(item) if isinstance(item, YSeq) else False for item in node.items)
    return False


def _read_needs(node: YNode, sink: ProblemSink) -> tuple[NeedSpec, ...]:
    if not isinstance(node, YSeq):
        wrong_type(node, "needs", "a list", sink, "needs: [build]")
        return ()
    out: list[NeedSpec] = []
    for item in flatten_items(node, "needs", sink):
        if isinstance(item, YMap):
            check_keys(item, "need", sink)
            if any(item.get(k) is not None for k in ("pipeline", "project")):
                continue
            job_node = item.get("job")
            if job_node is None:
                sink.error(item.loc, "invalid-value", "a need needs `job:`", "write - job: build")
                continue
            name = read_str(job_node, "needs:job", sink)
            artifacts = optional = None
            if (art := item.get("artifacts")) is not None:
                artifacts = read_bool(art, "needs:artifacts", sink)
            if (opt := item.get("optional")) is not None:
                optional = read_bool(opt, "needs:optional", sink)
            matrix = None
            if (par := item.get("parallel")) is not None:
                _total, matrix = read_parallel(par, sink, needs=True)
            if name is not None:
                out.append(NeedSpec(name, job_node.loc, artifacts is not False, optional is True, matrix))
        else:
            name = read_str(item, "needs", sink)
            if name is not None:
                out.append(NeedSpec(name, item.loc))
    return tuple(out)


def read_job(name: str, node: YMap, loc: Loc, options: ReadOptions, sink: ProblemSink) -> JobDef:
    """A visible job's definition; ``node`` already has extends, references and defaults merged."""
    check_keys(node, "job", sink)
    fields: dict[str, object] = {}
    before: tuple[str, ...] = ()
    script: tuple[str, ...] | None = None
    for key, value in node.items():
        if key == "script":
            script = read_script(value, "script", sink)
        elif key == "before_script":
            before = read_script(value, "before_script", sink)
        elif key == "after_script":
            fields["after_script"] = read_script(value, "after_script", sink)
        elif key == "stage":
            stage = read_str(value, "stage", sink) or "test"
            fields["stage"] = stage if check_name(stage, "stage name", value.loc, sink) else "test"
            fields["stage_loc"] = value.loc
        elif key == "image":
            fields["image"] = read_image(value, sink)
        elif key == "services":
            fields["services"] = read_services(value, sink)
        elif key == "variables":
            fields["variables"] = read_variables(value, "variables", sink)
        elif key == "needs":
            fields["needs"] = _read_needs(value, sink)
        elif key == "dependencies":
            fields["dependencies"] = (
                read_str_list(value, "dependencies", sink)
                if not (isinstance(value, YSeq) and not value.items)
                else ()
            )
            fields["dependencies_loc"] = value.loc
        elif key == "when":
            when = read_str(value, "when", sink)
            if when is not None and when not in JOB_WHENS:
                hint = (
                    "use `rules:` with `when: never` to leave a job out"
                    if when == "never"
                    else (f"use one of: {', '.join(JOB_WHENS)}")
                )
                sink.error(value.loc, "invalid-value", f"`when: {when}` is not allowed on a job", hint)
            elif when is not None:
                fields["when"] = when
                fields["when_set"] = True
        elif key == "start_in":
            fields["start_in_seconds"] = read_duration(value, "start_in", sink)
        elif key == "allow_failure":
            fields["allow_failure"] = read_allow_failure(value, sink)
        elif key == "retry":
            fields["retry"] = read_retry(value, sink) or Retry()
        elif key == "timeout":
            fields["timeout_seconds"] = read_timeout(value, sink)
        elif key == "interruptible":
            fields["interruptible"] = bool(read_bool(value, "interruptible", sink))
        elif key == "artifacts":
            fields["artifacts"] = read_artifacts(value, sink)
        elif key == "cache":
            fields["caches"] = read_caches(value, sink)
        elif key == "sandbox":
            fields["sandbox"] = read_sandbox(value, options.policy, sink)
        elif key == "parallel":
            fields["parallel_total"], fields["matrix"] = read_parallel(value, sink, needs=False)
        elif key == "rules":
            fields["rules"] = read_rules(value, "rules", sink, "rule")
        elif key in ("only", "except"):
            fields["only" if key == "only" else "except_"] = read_policy(value, key, sink)
    if "rules" in fields and ("only" in node.entries or "except" in node.entries):
        sink.error(
            node.key_loc("rules"),
            "conflicting-keys",
            f"job `{name}` has both `rules` and only/except",
            "express the only/except conditions as rules and delete only/except",
        )
    if fields.get("when") == "delayed" and fields.get("start_in_seconds") is None:
        sink.error(
            node.key_loc("when"),
            "invalid-value",
            "`when: delayed` needs `start_in`",
            "add start_in: 30 minutes",
        )
    no_script = not script and _script_missing(node.get("script"))
    if no_script and "trigger" not in node.entries and "run" not in node.entries:
        sink.error(
            loc,
            "missing-script",
            f"job `{name}` has no `script`",
            "add script: [...] or make it a hidden template by naming it `.name`",
            options.cause,
        )
    fields["script"] = before + (script or ())
    return JobDef(name=name, loc=loc, **fields)  # type: ignore[arg-type]


def apply_defaults(job: YMap, defaults: YMap, inherit: YNode | None, sink: ProblemSink) -> YMap:
    """The job with every ``default:`` key it does not set itself (``inherit: default`` permitting)."""
    allowed = _inherit_filter(inherit, "default", sink)
    if allowed is False or not defaults.entries:
        return job
    entries = dict(job.entries)
    for key, item in defaults.entries.items():
        if key not in entries and (allowed is True or key in allowed):
            entries[key] = item
    return YMap(entries, job.loc)


def inherited_variable_names(inherit: YNode | None, sink: ProblemSink) -> bool | frozenset[str]:
    return _inherit_filter(inherit, "variables", sink)


def _inherit_filter(inherit: YNode | None, key: str, sink: ProblemSink) -> bool | frozenset[str]:
    if inherit is None:
        return True
    mapping = read_map(inherit, "inherit", sink, "inherit: {default: false}")
    if mapping is None:
        return True
    check_keys(mapping, "inherit", sink)
    node = mapping.get(key)
    if node is None:
        return True
    if isinstance(node, YScalar) and isinstance(node.value, bool):
        return node.value
    names = read_str_list(node, f"inherit:{key}", sink)
    return frozenset(names or ())
