"""The job DAG: ``needs`` resolved to concrete jobs, ``dependencies`` checked, cycles named (pure).

A job with ``needs`` waits for exactly those jobs (``needs: []``: for nothing); a job without waits
for every planned job of every earlier stage, as in GitLab. A need on a parallel job's base name
means all of its instances; ``parallel: matrix`` under a need picks instances by their values.

>>> nodes = [GraphNode("a", 0, None), GraphNode("b", 1, None), GraphNode("c", 1, (NeedSpec("a", L),))]
>>> edges = build_graph(nodes, {"a": ["a"], "b": ["b"], "c": ["c"]}, ProblemSink())
>>> edges["b"], edges["c"][0]
(('a',), Need(job='a', artifacts=True, optional=False))
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from pipelines.language.jobs import NeedSpec
from pipelines.language.model import Need
from pipelines.language.parallel import Combo, matrix_name, substitute_matrix
from pipelines.language.problems import Loc, ProblemSink

L = Loc("<doc>", 1, 1)


@dataclass(frozen=True, slots=True)
class GraphNode:
    name: str
    stage_index: int
    needs: tuple[NeedSpec, ...] | None
    matrix: Combo = ()
    loc: Loc = L
    dependencies: tuple[str, ...] | None = None
    dependencies_loc: Loc | None = None


def build_graph(
    nodes: Sequence[GraphNode],
    defined: Mapping[str, list[str]],
    sink: ProblemSink,
    cause: Loc | None = None,
) -> dict[str, tuple[Need, ...] | tuple[str, ...]]:
    """For each planned job: its resolved ``needs`` (tuple of Need) when it has ``needs``, else the
    names it waits for by stage order. ``defined`` maps every base and full job name of the file
    (planned or not) to its instance names, to tell "does not exist" from "not in this run"."""
    planned = {node.name: node for node in nodes}
    by_stage: dict[int, list[str]] = {}
    for node in nodes:
        by_stage.setdefault(node.stage_index, []).append(node.name)
    earlier: dict[int, tuple[str, ...]] = {}
    accumulated: list[str] = []
    for index in sorted(by_stage):
        earlier[index] = tuple(accumulated)
        accumulated.extend(by_stage[index])
    result: dict[str, tuple[Need, ...] | tuple[str, ...]] = {}
    # Instances of one definition share their needs unless a matrix filter refers to their values.
    shared: dict[tuple[int, Combo], tuple[Need, ...]] = {}
    for node in nodes:
        if node.needs is None:
            result[node.name] = earlier[node.stage_index]
            continue
        key = (id(node.needs), node.matrix if any(n.matrix for n in node.needs) else ())
        if key not in shared:
            shared[key] = _resolve_needs(node, planned, defined, sink, cause)
        result[node.name] = shared[key]
    for node in nodes:
        _check_dependencies(node, result[node.name], planned, defined, sink)
    _report_cycles(nodes, result, sink)
    return result


def _resolve_needs(
    node: GraphNode,
    planned: Mapping[str, GraphNode],
    defined: Mapping[str, list[str]],
    sink: ProblemSink,
    cause: Loc | None,
) -> tuple[Need, ...]:
    out: dict[str, Need] = {}
    for need in node.needs or ():
        if need.matrix is not None:
            targets = [matrix_name(need.job, substitute_matrix(combo, node.matrix)) for combo in need.matrix]
            missing = [t for t in targets if t not in defined]
            if missing and need.optional:
                targets = [t for t in targets if t in defined]  # GitLab ignores an optional need that matches nothing
            elif missing:
                sink.error(
                    need.loc,
                    "unknown-need",
                    f"`{node.name}` needs `{missing[0]}`, which is not a job of `{need.job}`'s matrix",
                    "check the matrix values under needs:parallel",
                    cause,
                )
                continue
        elif need.job in defined:
            targets = defined[need.job]
        else:
            if not need.optional:
                sink.error(
                    need.loc,
                    "unknown-need",
                    f"`{node.name}` needs `{need.job}`, which is not defined",
                    "fix the job name, or mark the need `optional: true`",
                    cause,
                )
            continue
        for target in targets:
            if target in planned and planned[target].stage_index > node.stage_index:
                # GitLab: a need must be "defined in current or prior stages"
                sink.error(
                    need.loc,
                    "need-later-stage",
                    f"`{node.name}` needs `{target}`, which is not defined in current or prior stages",
                    f"move `{target}` to this stage or an earlier one, or move `{node.name}` later",
                    cause,
                )
            elif target in planned:
                out[target] = Need(target, need.artifacts, need.optional)
            elif not need.optional:
                sink.error(
                    need.loc,
                    "need-not-planned",
                    f"`{node.name}` needs `{target}`, which its rules or only/except leave out of this run",
                    "give both jobs matching rules, or mark the need `optional: true`",
                )
    return tuple(out.values())


def _check_dependencies(
    node: GraphNode,
    edges: tuple[Need, ...] | tuple[str, ...],
    planned: Mapping[str, GraphNode],
    defined: Mapping[str, list[str]],
    sink: ProblemSink,
) -> None:
    if not node.dependencies:
        return
    loc = node.dependencies_loc or node.loc
    waits_for = {edge.job if isinstance(edge, Need) else edge for edge in edges}
    for dependency in node.dependencies:
        targets = [t for t in defined.get(dependency, []) if t in planned]
        if not targets:
            sink.error(
                loc,
                "unknown-dependency",
                f"`{node.name}` depends on `{dependency}`, which is not defined or not in this run",
                "list only jobs that run before this one",
            )
            continue
        for target in targets:
            if target in waits_for:
                continue
            if node.needs == ():
                continue  # `needs: []` beside `dependencies`: accepted, and nothing is downloaded
            if node.needs is not None:
                sink.error(
                    loc,
                    "dependency-not-needed",
                    f"`{node.name}` lists `{target}` in dependencies but not in needs",
                    f"add `{target}` to needs",
                )
            else:
                sink.error(
                    loc,
                    "dependency-later-stage",
                    f"`{node.name}` depends on `{target}`, which is not in an earlier stage",
                    "move the dependency to an earlier stage, or use needs",
                )


def _report_cycles(
    nodes: Sequence[GraphNode], edges: Mapping[str, tuple[Need, ...] | tuple[str, ...]], sink: ProblemSink
) -> None:
    """Iterative DFS over ``needs`` edges (stage-order edges cannot loop); each cycle named once."""
    needs_of = {
        n.name: [e.job for e in edges[n.name] if isinstance(e, Need)] for n in nodes if n.needs is not None
    }
    state: dict[str, int] = {}  # 1 = on the current path, 2 = finished
    locs = {n.name: n.loc for n in nodes}
    for root in needs_of:
        if state.get(root):
            continue
        path: list[str] = [root]
        iterators = [iter(needs_of.get(root, []))]
        state[root] = 1
        while iterators:
            following = next(iterators[-1], None)
            if following is None:
                state[path.pop()] = 2
                iterators.pop()
                continue
            mark = state.get(following)
            if mark == 1:
                cycle = [*path[path.index(following) :], following]
                sink.error(
                    locs[following],
                    "needs-cycle",
                    f"`needs` form a cycle: {' -> '.join(cycle)}",
                    "remove one of these needs so the jobs can start in some order",
                )
            elif mark is None:
                state[following] = 1
                path.append(following)
                iterators.append(iter(needs_of.get(following, [])))
