"""From a job definition to the concrete jobs of one run: parallel instances, rules, variables (pure).

For each instance (``test 1/3``, ``test: [3.12, debian]`` or just ``test``) the variables are
layered from lowest to highest precedence — predefined ``CI_*``, global (``inherit: variables``
permitting), job, matrix, the deciding rule's, then the run's own ``--var`` values — and resolved;
the rules (or only/except) then decide whether and how the instance runs.

>>> sink = ProblemSink()
>>> rule_ctx = RuleContext({}, None, frozenset(), "push", "main", "branch")
>>> ctx = JobContext(PipelineInputs(), rule_ctx, {}, (), sink)
>>> job = JobDef("t", L, parallel_total=2, script=("x",))
>>> [node.name for _draft, node in expand_job(job, 2, None, ctx, {})]
['t 1/2', 't 2/2']
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace

from pipelines.language.graph import GraphNode
from pipelines.language.jobs import JobDef, VariableDef, inherited_variable_names
from pipelines.language.model import AllowFailure, Artifacts, Cache, Image, Job, Need, PipelineInputs
from pipelines.language.parallel import Combo, matrix_name, parallel_name
from pipelines.language.problems import Loc, ProblemSink
from pipelines.language.rules import RuleContext, RuleOutcome, first_match, policy_allows
from pipelines.language.services import expand_service
from pipelines.language.variables import expand, job_variables, pipeline_variables, resolve_variables
from pipelines.language.yamltree import YNode

L = Loc("<doc>", 1, 1)
# A job waiting for its DAG edges: called once the graph of the whole run is known.
JobDraft = Callable[[tuple[Need, ...] | None, tuple[str, ...]], Job]


@dataclass
class JobContext:
    """What every job of the run shares; built once per ``plan()`` call."""

    inputs: PipelineInputs
    rule_context: RuleContext
    base_variables: Mapping[str, str]
    global_variables: tuple[VariableDef, ...]
    sink: ProblemSink
    predefined: dict[str, str] = field(default_factory=dict)
    names: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.predefined = pipeline_variables(self.inputs)


def _instances(job: JobDef) -> list[tuple[str, Combo, int | None, int | None]]:
    if job.matrix:
        total = len(job.matrix)
        return [(matrix_name(job.name, combo), combo, i, total) for i, combo in enumerate(job.matrix, 1)]
    if job.parallel_total:
        total = job.parallel_total
        return [(parallel_name(job.name, i, total), (), i, total) for i in range(1, total + 1)]
    return [(job.name, (), None, None)]


def expand_job(
    job: JobDef, stage_index: int, inherit: YNode | None, ctx: JobContext, defined: dict[str, list[str]]
) -> Iterator[tuple[JobDraft, GraphNode]]:
    """The planned instances of ``job`` with their graph nodes; ``defined`` records every name."""
    sink = ctx.sink
    allowed = inherited_variable_names(inherit, sink)
    base_raw: dict[str, tuple[str, bool]] = {k: (v, False) for k, v in ctx.predefined.items()}
    for var in ctx.global_variables:
        if allowed is True or (allowed is not False and var.name in allowed):
            base_raw[var.name] = (var.value, var.expand)
    for var in job.variables:
        base_raw[var.name] = (var.value, var.expand)
    run_vars = ctx.inputs.variables
    defined.setdefault(job.name, [])
    for name, combo, index, total in _instances(job):
        if name in ctx.names:
            sink.error(
                job.loc,
                "duplicate-job",
                f"two jobs are named `{name}`",
                "rename one job, or change the matrix values so the names differ",
            )
            continue
        ctx.names.add(name)
        defined[job.name].append(name)
        if name != job.name:
            defined[name] = [name]
        raw = dict(base_raw)
        for key, value in job_variables(name, job.stage, index, total).items():
            if key not in raw or key in ctx.predefined:
                raw[key] = (value, False)
        for key, value in combo:
            raw[key] = (value, True)
        for key, value in run_vars.items():
            raw[key] = (value, True)
        resolved = resolve_variables(raw)
        outcome = _decide(job, resolved, ctx.rule_context)
        if outcome.when == "never":
            continue
        if outcome.variables:
            resolved = _with_rule_variables(raw, resolved, outcome.variables, run_vars)
        draft = _draft(job, name, combo, index, total, outcome, resolved, sink)
        yield (
            draft,
            GraphNode(name, stage_index, job.needs, combo, job.loc, job.dependencies, job.dependencies_loc),
        )


def _with_rule_variables(
    raw: dict[str, tuple[str, bool]],
    resolved: dict[str, str],
    rule_vars: tuple[tuple[str, str], ...],
    run_vars: Mapping[str, str],
) -> dict[str, str]:
    """Layer the deciding rule's variables under the run's own; re-resolve only when some value
    refers to another variable (the common case, plain values, is a dict update)."""
    new = {k: v for k, v in rule_vars if k not in run_vars}
    simple = all("$" not in v for v in new.values()) and not any(
        exp and "$" in value and any(name in value for name in new) for value, exp in raw.values()
    )
    if simple:
        return {**resolved, **new}
    for key, value in new.items():
        raw[key] = (value, True)
    return resolve_variables(raw)


def _decide(job: JobDef, variables: Mapping[str, str], base: RuleContext) -> RuleOutcome:
    ctx = RuleContext(
        variables, base.changed_files, base.existing_files, base.trigger, base.ref, base.ref_kind
    )
    if job.rules is not None:
        return first_match(job.rules, ctx, default_when=job.when)
    if policy_allows(job.only, job.except_, ctx):
        return RuleOutcome(job.when, from_rule=False)
    return RuleOutcome("never", from_rule=False)


def _draft(
    job: JobDef,
    name: str,
    combo: Combo,
    index: int | None,
    total: int | None,
    outcome: RuleOutcome,
    variables: Mapping[str, str],
    sink: ProblemSink,
) -> JobDraft:
    when = outcome.when
    if outcome.allow_failure is not None:
        allow = AllowFailure(outcome.allow_failure)
    elif job.allow_failure is not None:
        allow = job.allow_failure
    else:
        # GitLab: a job-level `when: manual` may fail by default; a manual rule may not.
        allow = AllowFailure(when == "manual" and not outcome.from_rule)
    start_in = outcome.start_in_seconds or job.start_in_seconds
    if when == "delayed" and start_in is None:
        sink.error(
            job.loc,
            "invalid-value",
            f"job `{name}` is delayed but has no `start_in`",
            "add start_in: 30 minutes to the job or the rule",
        )
    image = None if job.image is None else Image(expand(job.image.name, variables), job.image.entrypoint,
                                                 job.image.pull_policy)
    services = tuple(expand_service(service, variables) for service in job.services)
    artifacts = _artifacts(job.artifacts, variables, name, job.loc, sink)
    caches = tuple(_cache(c, variables) for c in job.caches)
    env = tuple(variables.items())

    def build(needs: tuple[Need, ...] | None, depends_on: tuple[str, ...]) -> Job:
        return Job(
            name=name,
            stage=job.stage,
            loc=job.loc,
            base_name=job.name,
            image=image,
            services=services,
            script=job.script,
            after_script=job.after_script,
            variables=env,
            needs=needs,
            depends_on=depends_on,
            dependencies=job.dependencies,
            when=when,  # type: ignore[arg-type]
            start_in_seconds=start_in if when == "delayed" else None,
            allow_failure=allow,
            retry=job.retry,
            timeout_seconds=job.timeout_seconds,
            interruptible=job.interruptible if outcome.interruptible is None else outcome.interruptible,
            artifacts=artifacts,
            caches=caches,
            sandbox=job.sandbox,
            matrix=combo,
            node_index=index,
            node_total=total,
        )

    return build


def _artifacts(artifacts: Artifacts | None, variables: Mapping[str, str], name: str, loc: Loc,
               sink: ProblemSink) -> Artifacts | None:
    """The job's artifacts with variables expanded and every path relative to the project directory
    (``$CI_PROJECT_DIR/dist`` is the common idiom, and absolute paths under it are what GitLab Runner
    accepts); a path outside it is an error here, so ``lint`` and the run agree."""
    if artifacts is None:
        return None
    if "$" in "".join((*artifacts.paths, *artifacts.exclude, artifacts.name or "")):
        artifacts = replace(
            artifacts,
            paths=tuple(expand(p, variables) for p in artifacts.paths),
            exclude=tuple(expand(p, variables) for p in artifacts.exclude),
            name=None if artifacts.name is None else expand(artifacts.name, variables),
        )
    project_dir = variables.get("CI_PROJECT_DIR", "/workspace")
    paths: list[str] = []
    exclude: list[str] = []
    for kind, given, out in (("paths", artifacts.paths, paths), ("exclude", artifacts.exclude, exclude)):
        for path in given:
            relative = project_relative(path, project_dir)
            if relative is None:
                sink.error(loc, "artifact-outside-project",
                           f"job `{name}`: artifacts:{kind} `{path}` is outside the project directory ({project_dir})",
                           f"name files under {project_dir}, relative to it (dist/app.tar) or absolute "
                           "($CI_PROJECT_DIR/dist/app.tar)")
            else:
                out.append(relative)
    if tuple(paths) == artifacts.paths and tuple(exclude) == artifacts.exclude:
        return artifacts
    return replace(artifacts, paths=tuple(paths), exclude=tuple(exclude))


def project_relative(path: str, project_dir: str) -> str | None:
    """``path`` relative to the project directory, or None when it leaves it.

    >>> project_relative("/workspace/dist/*.whl", "/workspace"), project_relative("dist/", "/workspace")
    ('dist/*.whl', 'dist/')
    >>> project_relative("/etc/passwd", "/workspace"), project_relative("../up", "/workspace")
    (None, None)
    """
    if "\0" in path:
        return None
    if path.startswith("/"):
        base = project_dir.rstrip("/") + "/"
        normal = posixpath.normpath(path)
        if normal == project_dir.rstrip("/"):
            return "."
        if not normal.startswith(base):
            return None
        path = path[len(base):] if path.startswith(base) else normal[len(base):]
    trailing = "/" if path.endswith("/") else ""
    normal = posixpath.normpath(path) if path else path
    if normal == ".." or normal.startswith("../") or normal.startswith("/"):
        return None
    return (normal + trailing) if normal not in (".", "") else path


def _cache(cache: Cache, variables: Mapping[str, str]) -> Cache:
    if not any("$" in text for text in (cache.key, cache.key_prefix or "", cache.policy, *cache.paths)):
        return cache
    return replace(
        cache,
        key=expand(cache.key, variables),
        key_prefix=None if cache.key_prefix is None else expand(cache.key_prefix, variables),
        paths=tuple(expand(p, variables) for p in cache.paths),
        policy=expand(cache.policy, variables),
    )
