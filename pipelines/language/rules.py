"""``rules``, ``workflow: rules``, include rules and ``only``/``except``: reading and deciding (pure).

The first rule whose ``if``, ``changes`` and ``exists`` all hold decides; a rule with none of them
always holds; when no rule holds the job is left out. ``only``/``except`` follow GitLab's policy
reading: every kind given under ``only`` must match, any kind given under ``except`` excludes.

>>> ctx = RuleContext({"X": "1"}, None, frozenset(), "push", "main", "branch")
>>> first_match((Rule(L, compile_expression("$X")),), ctx).when
'on_success'
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from pipelines.language.auto_cancel import Given, read_auto_cancel
from pipelines.language.expressions import (
    Expression,
    ExpressionError,
    compile_expression,
    compile_regex,
    evaluate,
)
from pipelines.language.globs import any_match
from pipelines.language.problems import Loc, ProblemSink
from pipelines.language.quantities import parse_duration
from pipelines.language.reader import flatten_items, read_bool, read_map, read_str, read_str_list, wrong_type
from pipelines.language.schema import check_keys
from pipelines.language.variables import expand
from pipelines.language.yamltree import YMap, YNode, YScalar, YSeq

L = Loc("<doc>", 1, 1)

RULE_WHENS = ("on_success", "on_failure", "always", "manual", "delayed", "never")
WORKFLOW_WHENS = ("always", "never")
_REF_KEYWORDS = {
    "branches",
    "tags",
    "merge_requests",
    "pushes",
    "schedules",
    "web",
    "api",
    "triggers",
    "pipelines",
    "external",
    "chat",
    "external_pull_requests",
}


@dataclass(frozen=True, slots=True)
class RuleContext:
    variables: Mapping[str, str]
    changed_files: tuple[str, ...] | None
    existing_files: frozenset[str]
    trigger: str
    ref: str
    ref_kind: str


@dataclass(frozen=True, slots=True)
class Rule:
    loc: Loc
    condition: Expression | None = None
    changes: tuple[str, ...] | None = None
    exists: tuple[str, ...] | None = None
    when: str | None = None
    allow_failure: bool | None = None
    variables: tuple[tuple[str, str], ...] = ()
    start_in_seconds: int | None = None
    #: a job rule's ``interruptible`` (GitLab 16.10): None leaves the job's own
    interruptible: bool | None = None
    #: a workflow rule's ``auto_cancel`` settings, merged over ``workflow:auto_cancel``
    auto_cancel: Given = ()


@dataclass(frozen=True, slots=True)
class RuleOutcome:
    """What the deciding rule says; ``when`` "never" means the job is left out."""

    when: str
    allow_failure: bool | None = None
    variables: tuple[tuple[str, str], ...] = ()
    start_in_seconds: int | None = None
    from_rule: bool = True
    interruptible: bool | None = None
    auto_cancel: Given = ()


NEVER = RuleOutcome("never")


def read_expression(node: YNode, what: str, sink: ProblemSink) -> Expression | None:
    text = read_str(node, what, sink, allow_number=False)
    if text is None:
        return None
    try:
        return compile_expression(text)
    except ExpressionError as exc:
        sink.error(
            node.loc,
            "invalid-expression",
            f"{what}: {exc}",
            'write e.g. $CI_COMMIT_BRANCH == "main" && $VAR =~ /^v\\d+/',
        )
        return None


def read_rules(node: YNode, what: str, sink: ProblemSink, table: str) -> tuple[Rule, ...]:
    """Rules from a list (nested lists from ``!reference`` are spliced in)."""
    if not isinstance(node, YSeq):
        wrong_type(node, what, "a list of rules", sink, f'{what}: [{{if: "$CI_COMMIT_TAG"}}]')
        return ()
    if not node.items:
        # GitLab: "rules config can't be blank"; an empty list is a mistake, not "never run"
        sink.error(node.loc, "blank-rules", f"{what} config can't be blank",
                   f"remove `{what}:`, or give it a rule such as {what}: [{{if: '$CI_COMMIT_TAG'}}]")
        return ()
    rules: list[Rule] = []
    for item in flatten_items(node, what, sink):
        rule_map = read_map(item, f"a rule in {what}", sink, "- if: $CI_COMMIT_TAG\n  when: manual")
        if rule_map is not None:
            rules.append(_read_rule(rule_map, what, sink, table))
    return tuple(rules)


def _read_rule(node: YMap, what: str, sink: ProblemSink, table: str) -> Rule:
    check_keys(node, table, sink)
    allowed_whens = WORKFLOW_WHENS if table == "workflow_rule" else RULE_WHENS
    condition = changes = exists = when = allow_failure = start_in = interruptible = None
    variables: tuple[tuple[str, str], ...] = ()
    auto_cancel: Given = ()
    for key, value in node.items():
        if key == "if":
            condition = read_expression(value, f"{what}:if", sink)
        elif key == "changes":
            changes = _read_paths(value, f"{what}:changes", "changes", sink)
        elif key == "exists":
            exists = _read_paths(value, f"{what}:exists", "exists", sink)
        elif key == "when":
            when = read_str(value, f"{what}:when", sink)
            if when is not None and when not in allowed_whens:
                sink.error(
                    value.loc,
                    "invalid-value",
                    f"`when: {when}` is not allowed in {what}",
                    f"use one of: {', '.join(allowed_whens)}",
                )
                when = None
        elif key == "allow_failure":
            allow_failure = read_bool(value, f"{what}:allow_failure", sink)
        elif key == "variables":
            variables = read_simple_variables(value, f"{what}:variables", sink)
        elif key == "start_in":
            start_in = read_duration(value, f"{what}:start_in", sink)
        elif key == "interruptible" and table == "rule":
            interruptible = read_bool(value, f"{what}:interruptible", sink)
        elif key == "auto_cancel" and table == "workflow_rule":
            auto_cancel = read_auto_cancel(value, what, sink)
    return Rule(node.loc, condition, changes, exists, when, allow_failure, variables, start_in, interruptible,
                auto_cancel)


def read_duration(node: YNode, what: str, sink: ProblemSink) -> int | None:
    text = read_str(node, what, sink)
    if text is None:
        return None
    try:
        return parse_duration(text)
    except ValueError as exc:
        sink.error(node.loc, "invalid-duration", f"{what}: {exc}", "write e.g. 30 minutes, 1h 30m or 3600")
        return None


def read_simple_variables(node: YNode, what: str, sink: ProblemSink) -> tuple[tuple[str, str], ...]:
    mapping = read_map(node, what, sink, "variables: {NAME: value}")
    if mapping is None:
        return ()
    out: list[tuple[str, str]] = []
    for name, value in mapping.items():
        text = read_str(value, f"{what}:{name}", sink)
        if text is not None:
            out.append((name, text))
    return tuple(out)


def _read_paths(node: YNode, what: str, table: str, sink: ProblemSink) -> tuple[str, ...] | None:
    if isinstance(node, YMap):
        check_keys(node, table, sink)
        paths = node.get("paths")
        if paths is None:
            sink.error(
                node.loc, "invalid-value", f"{what} needs `paths:`", f"write {what}: {{paths: [src/**/*]}}"
            )
            return None
        node = paths
    return read_str_list(node, what, sink)


def rule_holds(rule: Rule, ctx: RuleContext) -> bool:
    if rule.condition is not None and not evaluate(rule.condition, ctx.variables):
        return False
    if rule.changes is not None and ctx.changed_files is not None:
        patterns = [expand(p, ctx.variables) for p in rule.changes]
        if not any_match(patterns, ctx.changed_files):
            return False
    if rule.exists is not None:
        patterns = [expand(p, ctx.variables) for p in rule.exists]
        if not any_match(patterns, ctx.existing_files):
            return False
    return True


def first_match(rules: tuple[Rule, ...], ctx: RuleContext, default_when: str = "on_success") -> RuleOutcome:
    """The outcome of the first rule that holds; NEVER when none does."""
    for rule in rules:
        if rule_holds(rule, ctx):
            return RuleOutcome(rule.when or default_when, rule.allow_failure, rule.variables, rule.start_in_seconds,
                               interruptible=rule.interruptible, auto_cancel=rule.auto_cancel)
    return NEVER


@dataclass(frozen=True, slots=True)
class RefPolicy:
    """One ``only`` or ``except`` block."""

    loc: Loc
    refs: tuple[str, ...] | None = None
    variables: tuple[Expression, ...] | None = None
    changes: tuple[str, ...] | None = None


def read_policy(node: YNode, what: str, sink: ProblemSink) -> RefPolicy | None:
    if isinstance(node, YMap):
        check_keys(node, "only", sink)
        refs = variables = changes = None
        if (refs_node := node.get("refs")) is not None:
            refs = _read_refs(refs_node, f"{what}:refs", sink)
        if (vars_node := node.get("variables")) is not None:
            texts = read_str_list(vars_node, f"{what}:variables", sink) or ()
            exprs = [read_expression(YScalar(t, vars_node.loc), f"{what}:variables", sink) for t in texts]
            variables = tuple(e for e in exprs if e is not None)
        if (changes_node := node.get("changes")) is not None:
            changes = _read_paths(changes_node, f"{what}:changes", "changes", sink)
        return RefPolicy(node.loc, refs, variables, changes)
    refs = _read_refs(node, what, sink)
    return None if refs is None else RefPolicy(node.loc, refs)


def _read_refs(node: YNode, what: str, sink: ProblemSink) -> tuple[str, ...] | None:
    refs = read_str_list(node, what, sink)
    for ref in refs or ():
        if ref.startswith("/") and ref.rfind("/") > 0:
            pattern = ref.split("@", 1)[0] if ref.rfind("/") < ref.find("@") else ref
            try:
                compile_regex(pattern)
            except ExpressionError as exc:
                sink.error(node.loc, "invalid-regex", f"{what}: {exc}", "fix the /regex/ in the ref list")
    return refs


def _ref_matches(pattern: str, ctx: RuleContext) -> bool:
    if pattern in _REF_KEYWORDS:
        return {
            "branches": ctx.ref_kind == "branch" and ctx.trigger != "merge_request",
            "tags": ctx.ref_kind == "tag",
            "merge_requests": ctx.trigger == "merge_request",
            "pushes": ctx.trigger == "push",
            "schedules": ctx.trigger == "schedule",
            "web": ctx.trigger == "web",
            "api": ctx.trigger == "api",
        }.get(pattern, False)
    if pattern.startswith("/") and pattern.rfind("/") > 0:
        regex_text = pattern.split("@", 1)[0] if pattern.rfind("/") < pattern.find("@") else pattern
        try:
            return compile_regex(regex_text).search(ctx.ref) is not None
        except ExpressionError:
            return False
    return pattern.split("@", 1)[0] == ctx.ref


def _policy_matches(policy: RefPolicy, ctx: RuleContext, *, every: bool) -> bool:
    checks: list[bool] = []
    if policy.refs is not None:
        checks.append(any(_ref_matches(ref, ctx) for ref in policy.refs))
    if policy.variables is not None:
        checks.append(any(evaluate(expr, ctx.variables) for expr in policy.variables))
    if policy.changes is not None:
        changed = ctx.changed_files
        checks.append(changed is None or any_match(policy.changes, changed))
    if not checks:
        return every
    return all(checks) if every else any(checks)


def policy_allows(only: RefPolicy | None, except_: RefPolicy | None, ctx: RuleContext) -> bool:
    """GitLab's default when neither is given is ``only: [branches, tags]``."""
    if only is None:
        only = RefPolicy(L, ("branches", "tags"))
    if not _policy_matches(only, ctx, every=True):
        return False
    return except_ is None or not _policy_matches(except_, ctx, every=False)
