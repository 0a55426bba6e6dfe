"""The import graph of ``worker/``, ``api/`` and ``pipelines/``, read with ``ast`` (every module,
imported or not): no import cycle anywhere, and the three rooms keep their walls — the API and the
worker never import each other, and ``pipelines`` (the language, the store, the forges: what both
share) imports neither.

Every ``import`` counts, at module level and inside functions (a function-level import that only
breaks a cycle still is one), except those under ``if TYPE_CHECKING:``, which never run. An edge
goes to the module named (``from a.b import c`` is an edge to ``a.b.c`` when that is a module of
the tree, else to ``a.b``); the packages a dotted name passes through are not edges of their own.

Inside ``worker/`` the arrows point down (docs/architecture.md): ``cli`` above ``local`` and
``service`` (which never import each other), those above the modules they share at ``worker/``'s
top, those above ``sandbox``, which uses only the values every room passes around.
"""

from __future__ import annotations

import ast
import itertools
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ROOMS = ("worker", "api", "pipelines")
WALLS = {"api": ("worker",), "worker": ("api",), "pipelines": ("worker", "api")}


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def tree_modules(root: Path = ROOT) -> dict[str, Path]:
    found = {}
    for room in ROOMS:
        for path in sorted((root / room).rglob("*.py")):
            if "migrations" not in path.parts:
                found[module_name(path, root)] = path
    return found


def _type_checking_only(tree: ast.Module) -> set[int]:
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            for inner in node.body:
                skipped |= {id(n) for n in ast.walk(inner)}
    return skipped


def imports_of(name: str, source: str, is_package: bool, known: set[str]) -> dict[str, int]:
    """The modules of ``known`` that module ``name`` imports, each with the line of its first import."""
    tree = ast.parse(source)
    skipped = _type_checking_only(tree)
    found: dict[str, int] = {}
    for node in ast.walk(tree):
        if id(node) in skipped or not isinstance(node, ast.Import | ast.ImportFrom):
            continue
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            if node.level:
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            named = [f"{module}.{alias.name}" for alias in node.names]
            targets = [t for t in named if t in known] or [module]
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.setdefault(target, node.lineno)
    return found


def import_graph(root: Path = ROOT) -> dict[str, dict[str, int]]:
    modules = tree_modules(root)
    known = set(modules)
    return {name: imports_of(name, path.read_text(), path.name == "__init__.py", known)
            for name, path in modules.items()}


def cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """One cycle (``a -> b -> ... -> a``) for each strongly connected set of modules (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(graph[start]))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, edges = work[-1]
            for nxt in edges:
                if nxt not in graph:
                    continue
                if nxt not in index:
                    index[nxt] = low[nxt] = len(index)
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(graph[nxt])))
                    break
                if nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        components.append(sorted(component))
    return [_a_cycle(graph, set(component)) for component in components]


def _a_cycle(graph: dict[str, dict[str, int]], members: set[str]) -> list[str]:
    """A shortest way from the first member back to itself, inside the component (breadth first)."""
    first = min(members)
    came_from: dict[str, str] = {}
    frontier = [first]
    while frontier:
        following = []
        for node in frontier:
            for nxt in sorted(graph[node]):
                if nxt == first:
                    path = [node]
                    while path[-1] != first:
                        path.append(came_from[path[-1]])
                    return [first, *reversed(path[:-1]), first] if node != first else [first, first]
                if nxt in members and nxt not in came_from:
                    came_from[nxt] = node
                    following.append(nxt)
        frontier = following
    return sorted(members)


def _shown(graph: dict[str, dict[str, int]], cycle: list[str]) -> str:
    return " -> ".join(f"{a} (line {graph[a][b]})" for a, b in itertools.pairwise(cycle)) + f" -> {cycle[-1]}"


def test_the_walker_sees_cycles_walls_and_skips_type_checking(tmp_path: Path) -> None:
    files = {
        "worker/__init__.py": "TYPE_CHECKING = False\n",
        "worker/a.py": "from worker import b\n",
        "worker/b.py": "def f():\n    from worker.c import x\n",
        "worker/c.py": "from . import a\nfrom worker import TYPE_CHECKING\nif TYPE_CHECKING:\n    import api.app\n",
        "worker/d.py": "from worker import TYPE_CHECKING\nif TYPE_CHECKING:\n    from worker import e\n",
        "worker/e.py": "import worker.d\n",
        "api/__init__.py": "", "api/app.py": "import worker.a\n",
        "pipelines/__init__.py": "",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    graph = import_graph(tmp_path)
    assert graph["worker.a"] == {"worker.b": 1} and graph["worker.b"] == {"worker.c": 2}
    assert graph["worker.c"] == {"worker.a": 1, "worker": 2} and graph["worker.d"] == {"worker": 1}
    assert cycles(graph) == [["worker.a", "worker.b", "worker.c", "worker.a"]]
    assert _shown(graph, cycles(graph)[0]) == (
        "worker.a (line 1) -> worker.b (line 2) -> worker.c (line 1) -> worker.a")
    assert wall_breaches(graph) == ["api.app imports worker.a (line 1)"]


def wall_breaches(graph: dict[str, dict[str, int]]) -> list[str]:
    return sorted(f"{module} imports {target} (line {line})" for module, targets in graph.items()
                  for target, line in targets.items()
                  if target.partition(".")[0] in WALLS.get(module.partition(".")[0], ()))


#: worker's rooms, top down; a room may import its own modules and those of lower ranks only
RANKS = {"cli": 3, "local": 2, "service": 2, "shared": 1, "sandbox": 0}
#: the shared modules the engine may use: the values every room passes around
SANDBOX_MAY_USE = {"worker", "worker.settings", "pipelines.record", "worker.errors", "pipelines.job_record"}


def worker_room(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "worker" or module == "worker.__main__":  # the entry point stands above every room
        return None
    return parts[1] if len(parts) > 1 and parts[1] in RANKS else "shared"


def room_breaches(graph: dict[str, dict[str, int]]) -> list[str]:
    found = []
    for module, targets in graph.items():
        room = worker_room(module)
        for target, line in targets.items():
            other = worker_room(target)
            if room is None or other is None or other == room:
                continue
            allowed = target in SANDBOX_MAY_USE if room == "sandbox" else RANKS[other] < RANKS[room]
            if not allowed:
                found.append(f"{module} ({room}) imports {target} ({other}), line {line}")
    return sorted(found)


def test_the_room_rule_sees_an_arrow_upward() -> None:
    graph = {"worker.local.run": {"worker.cli.terminal": 3, "worker.executor": 4},
             "worker.service.context": {"worker.local.records": 5}, "worker.executor": {"worker.sandbox.engine": 1},
             "worker.sandbox.engine": {"worker.settings": 2, "worker.jobs": 7}, "worker.__main__": {"worker.cli": 1}}
    assert room_breaches(graph) == [
        "worker.local.run (local) imports worker.cli.terminal (cli), line 3",
        "worker.sandbox.engine (sandbox) imports worker.jobs (shared), line 7",
        "worker.service.context (service) imports worker.local.records (local), line 5"]


@pytest.fixture(scope="module")
def graph() -> dict[str, dict[str, int]]:
    return import_graph()


def test_the_tree_is_read(graph: dict[str, dict[str, int]]) -> None:
    assert {"worker.cli", "worker.sandbox.engine", "api.app", "pipelines.store.db"} <= set(graph)
    assert "worker.settings" in graph["worker.cli.commands"]


def test_no_import_cycle(graph: dict[str, dict[str, int]]) -> None:
    found = cycles(graph)
    assert not found, "import cycles:\n" + "\n".join(_shown(graph, cycle) for cycle in found)


def test_api_and_worker_never_import_each_other_and_pipelines_neither(graph: dict[str, dict[str, int]]) -> None:
    assert wall_breaches(graph) == []


def test_worker_rooms_import_downward_only(graph: dict[str, dict[str, int]]) -> None:
    assert {"worker.cli.exec", "worker.local.run", "worker.service.context"} <= set(graph)
    assert room_breaches(graph) == []
