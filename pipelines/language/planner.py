"""``plan()``: pipeline files and run inputs in, a :class:`Plan` or every :class:`Problem` out (pure).

The stages, in order: YAML → includes → extends and ``!reference`` → top-level checks → workflow
rules → each visible job read (defaults applied) → parallel/matrix instances → rules or
only/except → variables resolved → the needs/stage DAG. Problems from all of them are gathered
before deciding, so one run of ``sandpit lint`` shows them all.

>>> result = plan({"ci.yml": "build: {stage: build, script: [make]}\\ntest: {script: [make check]}\\n"})
>>> isinstance(result, Plan), result.names(), list(result.edges())  # type: ignore[union-attr]
(True, ['build', 'test'], [('build', 'test')])
"""

from __future__ import annotations

from collections.abc import Mapping

from pipelines.language.auto_cancel import merge_auto_cancel, read_auto_cancel
from pipelines.language.extends import RESERVED, resolve_extends
from pipelines.language.graph import GraphNode, build_graph
from pipelines.language.includes import compose_sources
from pipelines.language.instances import JobContext, JobDraft, expand_job
from pipelines.language.jobs import ReadOptions, VariableDef, apply_defaults, read_job, read_variables
from pipelines.language.model import (
    GITLAB_DEFAULT_STAGES,
    AutoCancel,
    Job,
    Need,
    PipelineInputs,
    Plan,
    SandboxPolicy,
)
from pipelines.language.problems import Loc, Problems, ProblemSink
from pipelines.language.reader import check_name, flatten_items, read_map, read_str, wrong_type
from pipelines.language.rules import RuleContext, first_match, read_rules
from pipelines.language.schema import KEYS, check_keys
from pipelines.language.variables import pipeline_variables, resolve_variables
from pipelines.language.yamltree import YItem, YMap, YNode, YSeq

_LEGACY_DEFAULTS = ("image", "services", "before_script", "after_script", "cache")


def plan(
    source_files: Mapping[str, str],
    inputs: PipelineInputs | None = None,
    *,
    entry: str | None = None,
    policy: SandboxPolicy | None = None,
) -> Plan | Problems:
    """Plan the pipeline whose entry file is ``entry`` (default: the first of ``source_files``).

    ``source_files`` maps repository-relative paths to text: the entry file and every file its
    ``include: local`` may name. Nothing is read from disk here.
    """
    inputs = inputs or PipelineInputs()
    policy = policy or SandboxPolicy()
    sink = ProblemSink()
    if not source_files:
        sink.error(
            Loc(entry or "<none>", 1, 1), "no-jobs", "no pipeline file was given", "pass the file's text"
        )
        return Problems(sink.problems())
    entry = entry if entry is not None else next(iter(source_files))
    base_vars = {**pipeline_variables(inputs), **inputs.variables}
    existing = inputs.existing_files if inputs.existing_files is not None else frozenset(source_files)
    ctx = RuleContext(base_vars, inputs.changed_files, existing, inputs.trigger, inputs.ref, inputs.ref_kind)
    composed = compose_sources(source_files, entry, ctx, sink)
    if composed is None:
        return Problems(sink.problems())
    cause = composed.unresolved[0] if composed.unresolved else None
    config = resolve_extends(composed.config, RESERVED, composed.unresolved, sink)
    top = YMap({k: i for k, i in config.entries.items() if k in RESERVED}, config.loc)
    check_keys(
        YMap({k: i for k, i in top.entries.items() if k not in ("spec", "include")}, top.loc), "top", sink
    )
    stages = _read_stages(config.get("stages"), sink)
    variables_node = config.get("variables")
    global_vars = () if variables_node is None else read_variables(variables_node, "variables", sink)
    defaults = _read_defaults(config, sink)
    created, workflow_vars, auto_cancel = _workflow(config.get("workflow"), ctx, inputs, global_vars, sink)
    global_vars = _override(global_vars, workflow_vars)

    options = ReadOptions(policy, cause)
    job_ctx = JobContext(inputs, ctx, base_vars, global_vars, sink)
    stage_index = {name: index for index, name in enumerate(stages)}
    drafts: list[JobDraft] = []
    defined: dict[str, list[str]] = {}
    graph_nodes: list[GraphNode] = []
    visible = 0
    for name, item in config.entries.items():
        if name in RESERVED or name.startswith("."):
            continue
        if not isinstance(item.value, YMap):
            wrong_type(item.value, f"job `{name}`", "a mapping", sink, f"{name}: {{script: [make]}}")
            continue
        visible += 1
        node = apply_defaults(item.value, defaults, item.value.get("inherit"), sink)
        job_def = read_job(name, node, item.key_loc, options, sink)
        if job_def.stage not in stage_index:
            sink.error(
                job_def.stage_loc or item.key_loc,
                "unknown-stage",
                f"job `{name}` is in stage `{job_def.stage}`, which `stages` does not list",
                f"add it to stages ({', '.join(stages)}) or fix the name",
                cause,
            )
            continue
        inherit = item.value.get("inherit")
        for draft, graph_node in expand_job(job_def, stage_index[job_def.stage], inherit, job_ctx, defined):
            check_name(graph_node.name, "job name", graph_node.loc, sink)  # matrix values are in names
            drafts.append(draft)
            graph_nodes.append(graph_node)
    if visible == 0:
        sink.error(
            config.loc,
            "no-jobs",
            "the pipeline defines no job",
            "add a job: a top-level key with a `script:` (keys starting with `.` are hidden templates)",
            cause,
        )
    if sink.has_errors():
        return Problems(sink.problems())
    if not created:
        return Plan(stages, (), sink.problems(), created=False, auto_cancel=auto_cancel)
    edges = build_graph(graph_nodes, defined, sink, cause)
    if sink.has_errors():
        return Problems(sink.problems())
    final = [
        _with_edges(draft, node, edges[node.name]) for draft, node in zip(drafts, graph_nodes, strict=True)
    ]
    final.sort(key=lambda job: stage_index[job.stage])
    globals_resolved = resolve_variables({v.name: (v.value, v.expand) for v in global_vars})
    return Plan(stages, tuple(final), sink.problems(), True, tuple(globals_resolved.items()), auto_cancel)


def _with_edges(draft: JobDraft, node: GraphNode, edges: tuple[Need, ...] | tuple[str, ...]) -> Job:
    if node.needs is None:
        return draft(None, edges)  # type: ignore[arg-type]
    needs = tuple(e for e in edges if isinstance(e, Need))
    return draft(needs, tuple(n.job for n in needs))


def _read_stages(node: YNode | None, sink: ProblemSink) -> tuple[str, ...]:
    if node is None:
        return GITLAB_DEFAULT_STAGES
    if not isinstance(node, YSeq):
        wrong_type(node, "stages", "a list", sink, "stages: [build, test, deploy]")
        return GITLAB_DEFAULT_STAGES
    names: list[str] = []
    for item in flatten_items(node, "stages", sink):
        name = read_str(item, "stages", sink)
        if name is not None and name not in names and name not in (".pre", ".post"):
            names.append(name)
    return (".pre", *names, ".post")


def _read_defaults(config: YMap, sink: ProblemSink) -> YMap:
    """``default:`` plus the deprecated top-level image/services/before_script/after_script/cache."""
    entries: dict[str, YItem] = {k: config.entries[k] for k in _LEGACY_DEFAULTS if k in config.entries}
    node = config.get("default")
    if node is not None:
        mapping = read_map(node, "default", sink, "default: {image: debian}")
        if mapping is not None:
            check_keys(mapping, "default", sink)
            entries.update(
                {k: i for k, i in mapping.entries.items() if KEYS["default"].status(k) != "ignored"}
            )
    return YMap(entries, config.loc)


def _workflow(
    node: YNode | None,
    ctx: RuleContext,
    inputs: PipelineInputs,
    global_vars: tuple[VariableDef, ...],
    sink: ProblemSink,
) -> tuple[bool, tuple[tuple[str, str], ...], AutoCancel]:
    """Whether the pipeline is created, the deciding rule's variables, and the run's auto-cancel
    settings (``workflow:auto_cancel`` with the deciding rule's merged over it)."""
    if node is None:
        return True, (), AutoCancel()
    mapping = read_map(node, "workflow", sink, "workflow: {rules: [...]}")
    if mapping is None:
        return True, (), AutoCancel()
    check_keys(mapping, "workflow", sink)
    auto_cancel_node = mapping.get("auto_cancel")
    auto_cancel = () if auto_cancel_node is None else read_auto_cancel(auto_cancel_node, "workflow", sink)
    rules_node = mapping.get("rules")
    if rules_node is None:
        return True, (), merge_auto_cancel(auto_cancel, ())
    rules = read_rules(rules_node, "workflow:rules", sink, "workflow_rule")
    resolved = resolve_variables(
        {
            **{k: (v, False) for k, v in pipeline_variables(inputs).items()},
            **{v.name: (v.value, v.expand) for v in global_vars},
            **{k: (v, True) for k, v in inputs.variables.items()},
        }
    )
    wf_ctx = RuleContext(resolved, ctx.changed_files, ctx.existing_files, ctx.trigger, ctx.ref, ctx.ref_kind)
    outcome = first_match(rules, wf_ctx, default_when="always")
    return outcome.when != "never", outcome.variables, merge_auto_cancel(auto_cancel, outcome.auto_cancel)


def _override(
    variables: tuple[VariableDef, ...], overrides: tuple[tuple[str, str], ...]
) -> tuple[VariableDef, ...]:
    if not overrides:
        return variables
    merged = {v.name: v for v in variables}
    for name, value in overrides:
        merged[name] = VariableDef(name, value)
    return tuple(merged.values())
