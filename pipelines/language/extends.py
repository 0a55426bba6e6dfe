"""``extends`` (multi-level, GitLab's deep merge) and then ``!reference`` tags (pure).

GitLab resolves ``extends`` first: parents merge in the order listed, later parents win, the job's
own keys win over all; mappings merge key by key, lists and scalars are replaced. Then every
``!reference [name, key, ...]`` is replaced by that value of the extended configuration; inside a
list, a referenced list is spliced in (which is how ``script`` and ``rules`` use it).

>>> from pipelines.language.yamltree import parse_yaml
>>> sink = ProblemSink()
>>> text = ".a: {variables: {X: 1}, script: [a]}\\nb: {extends: .a, variables: {Y: 2}}\\n"
>>> tree = parse_yaml(text, "ci", sink)
>>> out = resolve_extends(tree, RESERVED, (), sink)  # type: ignore[arg-type]
>>> sorted(out.get("b").entries), sorted(out.get("b").get("variables").entries)  # type: ignore[union-attr]
(['script', 'variables'], ['X', 'Y'])
"""

from __future__ import annotations

from pipelines.language.includes import deep_merge
from pipelines.language.problems import Loc, ProblemSink
from pipelines.language.reader import read_str_list
from pipelines.language.yamltree import YItem, YMap, YNode, YScalar, YSeq

RESERVED = frozenset(
    (
        "stages variables default include workflow image services before_script after_script cache types spec"
    ).split()
)
_MAX_EXTENDS_DEPTH = 11
_MAX_REFERENCE_DEPTH = 10


class _Extender:
    def __init__(
        self, config: YMap, reserved: frozenset[str], unresolved: tuple[Loc, ...], sink: ProblemSink
    ) -> None:
        self.config = config
        self.reserved = reserved
        self.cause = unresolved[0] if unresolved else None
        self.sink = sink
        self.done: dict[str, YMap] = {}
        self.stack: list[str] = []

    def resolve(self, name: str, node: YMap) -> YMap:
        cached = self.done.get(name)
        if cached is not None:
            return cached
        extends_node = node.get("extends")
        if extends_node is None:
            self.done[name] = node
            return node
        if name in self.stack:
            cycle = " -> ".join([*self.stack[self.stack.index(name) :], name])
            self.sink.error(
                extends_node.loc,
                "extends-cycle",
                f"`extends` loops: {cycle}",
                "remove one `extends` so the chain ends at a template without one",
            )
            return node
        if len(self.stack) >= _MAX_EXTENDS_DEPTH:
            self.sink.error(
                extends_node.loc,
                "extends-too-deep",
                f"`extends` of `{name}` nests more than {_MAX_EXTENDS_DEPTH} levels",
                "flatten the chain of templates",
            )
            return node
        self.stack.append(name)
        merged = YMap({}, node.loc)
        for parent in read_str_list(extends_node, f"{name}:extends", self.sink) or ():
            parent_node = self.config.get(parent)
            if parent_node is None or parent in self.reserved:
                self.sink.error(
                    extends_node.loc,
                    "unknown-extends",
                    f"`{name}` extends `{parent}`, which is not defined",
                    "define the template (e.g. a hidden job `.name:`) or fix the name",
                    self.cause,
                )
                continue
            if not isinstance(parent_node, YMap):
                self.sink.error(
                    extends_node.loc,
                    "invalid-type",
                    f"`{parent}` is not a mapping, so it cannot be extended",
                    "extend a job or a hidden job (a mapping)",
                )
                continue
            merged = deep_merge(merged, self.resolve(parent, parent_node))
        self.stack.pop()
        own = YMap({k: v for k, v in node.entries.items() if k != "extends"}, node.loc)
        result = deep_merge(merged, own)
        self.done[name] = result
        return result


def resolve_extends(
    config: YMap, reserved: frozenset[str], unresolved: tuple[Loc, ...], sink: ProblemSink
) -> YMap:
    """The configuration with every job's ``extends`` merged in and every ``!reference`` replaced."""
    extender = _Extender(config, reserved, unresolved, sink)
    entries: dict[str, YItem] = {}
    for key, item in config.entries.items():
        if key not in reserved and isinstance(item.value, YMap):
            entries[key] = YItem(item.key_loc, extender.resolve(key, item.value))
        else:
            entries[key] = item
    extended = YMap(entries, config.loc)
    resolver = _References(extended, extender.cause, sink)
    walked: dict[str, YItem] = {}
    for key, item in entries.items():
        value = resolver.walk(item.value, 0)
        if value is not None:
            walked[key] = YItem(item.key_loc, value)
    return YMap(walked, config.loc)


class _References:
    """Replaces ``!reference`` nodes; a reference that names nothing is reported and its key dropped,
    so later stages do not pile a second, misleading problem on the same spot."""

    def __init__(self, config: YMap, cause: Loc | None, sink: ProblemSink) -> None:
        self.config = config
        self.cause = cause
        self.sink = sink
        self.following: list[tuple[str, ...]] = []  # the references being resolved, outermost first

    def walk(self, node: YNode, depth: int) -> YNode | None:
        if isinstance(node, YScalar):
            return node
        if isinstance(node, YSeq):
            if node.is_reference:
                return self._follow(node, depth)
            items: list[YNode] = []
            changed = False
            for item in node.items:
                new = self.walk(item, depth)
                changed = changed or new is not item
                if new is None:
                    continue
                if isinstance(item, YSeq) and item.is_reference and isinstance(new, YSeq):
                    items.extend(new.items)  # splice, as GitLab flattens referenced lists
                else:
                    items.append(new)
            return YSeq(tuple(items), node.loc) if changed else node
        entries: dict[str, YItem] = {}
        map_changed = False
        for key, entry in node.entries.items():
            new_value = self.walk(entry.value, depth)
            map_changed = map_changed or new_value is not entry.value
            if new_value is not None:
                entries[key] = YItem(entry.key_loc, new_value)
        return YMap(entries, node.loc) if map_changed else node

    def _follow(self, node: YSeq, depth: int) -> YNode | None:
        path: list[str] = []
        for part in node.items:
            if not isinstance(part, YScalar) or part.value is None or isinstance(part.value, bool):
                self.sink.error(
                    node.loc,
                    "unknown-reference",
                    "`!reference` takes a list of names",
                    "write !reference [.job, script]",
                )
                return None
            path.append(part.text())
        if not path:
            self.sink.error(
                node.loc, "unknown-reference", "`!reference` is empty", "write !reference [.job, key]"
            )
            return None
        if tuple(path) in self.following:
            loop = [*self.following[self.following.index(tuple(path)):], tuple(path)]
            self.sink.error(
                node.loc,
                "reference-cycle",
                "`!reference` is circular: " + " → ".join(f"[{', '.join(p)}]" for p in loop),
                "break the cycle: one of these values must not reference the others",
            )
            return None
        if depth >= _MAX_REFERENCE_DEPTH:
            self.sink.error(
                node.loc,
                "unknown-reference",
                "`!reference` nests more than 10 levels",
                "reference the value directly",
            )
            return None
        target: YNode | None = self.config
        for name in path:
            target = target.get(name) if isinstance(target, YMap) else None
            if target is None:
                self.sink.error(
                    node.loc,
                    "unknown-reference",
                    f"`!reference [{', '.join(path)}]` names nothing: `{name}` is not defined",
                    "fix the job or key name",
                    self.cause,
                )
                return None
        if target is None:
            return None
        self.following.append(tuple(path))
        try:
            return self.walk(target, depth + 1)
        finally:
            self.following.pop()
