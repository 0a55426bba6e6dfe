"""The network package reads bottom-up: its import graph, read from the source (``ast``, nothing is
imported), has no cycle and no module importing from a layer above its own; and pyroute2 is imported
by ``netlink.py`` alone, in the whole tree.

Every import counts: at the top of a file, inside a function (an import put there for start-up cost is
still a dependency) and under ``TYPE_CHECKING``.
"""

from __future__ import annotations

import ast
import graphlib
import os
from pathlib import Path

import pytest

REPO = Path(__file__).parents[3]
PACKAGE = "worker.sandbox.network"
PACKAGE_DIR = REPO / "worker" / "sandbox" / "network"

#: the layer of each module of the package (names relative to it; "" is the package's façade); a
#: module may import from its own layer and those below, never from one above
LAYERS: dict[str, int] = {
    # values every layer shares: errors, pure rules, settings, the pool's files (import-light)
    "errors": 0, "addresses": 0, "policy": 0, "ruleset": 0, "hint": 0, "settings": 0,
    "pool": 0, "pool.layout": 0,
    # network namespaces by system calls, held by fds
    "namespace": 1,
    # pyroute2: sockets confined to threads, namespaces made with a socket inside
    "netlink": 2,
    # the host side: address leases, the jobs' DNS forwarder, bridge and nft ruleset
    "leases": 3, "forwarder": 3, "host": 3,
    # the job side
    "job": 4,
    # what dead owners left, and the judging of pool entries (a fill reaps before it fills)
    "reaper": 5,
    # the pool: claiming an entry, starting a refill, making and draining entries
    "pool.claim": 6, "pool.refill": 6, "pool.fill": 6,
    # the host's teardown and reload, the DNS check, the engine's seam
    "lifecycle": 7, "doctor": 7, "egress": 7,
    # the façade: names for callers outside the package, loaded on first use
    "": 8,
}

#: the only files that may import pyroute2: the netlink module, and its own test, which raises
#: pyroute2's error to check that the module translates it
PYROUTE2_ALLOWED = {"worker/sandbox/network/netlink.py", "tests/unit/network/test_netlink.py"}


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(tree: ast.AST, module: str, is_package: bool, known: set[str]) -> set[str]:
    """Every module of ``known`` that ``tree`` (the source of ``module``) imports, wherever the import
    statement is. ``from a import b`` counts as importing ``a.b`` when that is a module, else ``a``."""
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                name = alias.name
                while name and name not in known:  # import a.b.c also runs a and a.b
                    name = name.rpartition(".")[0]
                if name:
                    found.add(name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                base = base[: len(base) - node.level + (1 if is_package else 0)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            for alias in node.names:
                child = f"{source}.{alias.name}"
                if child in known:
                    found.add(child)
                elif source in known:
                    found.add(source)
    return found


def import_graph(package_dir: Path, package: str) -> dict[str, set[str]]:
    """Module (relative to ``package``; "" for the package itself) → the package's modules it imports."""
    root = package_dir.parent
    for _ in package.split(".")[1:]:
        root = root.parent
    files = {module_name(path, root): path for path in sorted(package_dir.rglob("*.py"))}
    known = set(files)
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        tree = ast.parse(path.read_text(), str(path))
        targets = imported_modules(tree, name, path.name == "__init__.py", known) - {name}
        graph[_relative(name, package)] = {_relative(target, package) for target in targets}
    return graph


def _relative(name: str, package: str) -> str:
    return "" if name == package else name.removeprefix(f"{package}.")


def layer_problems(graph: dict[str, set[str]], layers: dict[str, int]) -> list[str]:
    """What is wrong with ``graph`` under ``layers``: an import cycle, a module without a layer, an
    import from a layer above."""
    problems: list[str] = []
    try:
        graphlib.TopologicalSorter(graph).prepare()
    except graphlib.CycleError as exc:
        problems.append(f"import cycle: {' -> '.join(exc.args[1])}")
    for module in sorted(graph):
        if module not in layers:
            problems.append(f"{module or '(the package)'} has no layer: give it one in LAYERS")
            continue
        for target in sorted(graph[module]):
            if target in layers and layers[target] > layers[module]:
                problems.append(f"{module or '(the package)'} (layer {layers[module]}) imports "
                                f"{target or '(the package)'} (layer {layers[target]}), a layer above")
    return problems


@pytest.mark.parametrize(("graph", "expected"), [
    ({"a": {"b"}, "b": set()}, []),
    ({"a": {"b"}, "b": {"a"}}, ["import cycle", "a layer above"]),
    ({"b": {"a"}, "a": set()}, ["b (layer 1) imports a (layer 2), a layer above"]),
    ({"a": set(), "c": set()}, ["c has no layer"]),
], ids=["downward", "cycle", "upward", "unplaced"])
def test_the_checker_finds_cycles_and_upward_imports(graph: dict[str, set[str]], expected: list[str]) -> None:
    """The check itself: a downward import passes; a cycle, an import from above and a module of no
    layer are each named."""
    problems = layer_problems(graph, {"a": 2, "b": 1})
    assert len(problems) == len(expected), problems
    for problem, words in zip(problems, expected, strict=True):
        assert words in problem


def test_the_walk_sees_imports_inside_functions_and_type_checking(tmp_path: Path) -> None:
    """An import inside a function or under TYPE_CHECKING, absolute or relative, is an edge."""
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sub" / "__init__.py").write_text("")
    (package / "low.py").write_text("")
    (package / "mid.py").write_text("TYPE_CHECKING = False\nif TYPE_CHECKING:\n    from pkg.low import x\n")
    (package / "sub" / "high.py").write_text("def f():\n    from ..mid import y\n    import pkg.low\n")
    graph = import_graph(package, "pkg")
    assert graph == {"": set(), "low": set(), "mid": {"low"}, "sub": set(), "sub.high": {"mid", "low"}}


def test_the_network_package_reads_bottom_up() -> None:
    """No import cycle in worker/sandbox/network, and no module imports from a layer above its own."""
    graph = import_graph(PACKAGE_DIR, PACKAGE)
    assert graph["pool.claim"], "the walk found no import of the claim: it reads nothing"
    assert layer_problems(graph, LAYERS) == []


def python_files(root: Path) -> list[Path]:
    found = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if not d.startswith(".") and d not in ("__pycache__", "node_modules")]
        found += [Path(folder) / name for name in files if name.endswith(".py")]
    return sorted(found)


def pyroute2_importers(root: Path) -> set[str]:
    """Files under ``root`` (repository paths) that import pyroute2, statically or by name."""
    found = set()
    for path in python_files(root):
        text = path.read_text(errors="replace")
        if "pyroute2" not in text:
            continue
        for node in ast.walk(ast.parse(text, str(path))):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                names = [node.module or ""]
            elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
                called = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
                if called in ("__import__", "import_module"):
                    names = [str(node.args[0].value)]
            if any(name == "pyroute2" or name.startswith("pyroute2.") for name in names):
                found.add(path.relative_to(root).as_posix())
    return found


def test_the_pyroute2_finder_sees_every_spelling(tmp_path: Path) -> None:
    """``import``, ``from ... import`` and ``importlib.import_module`` of pyroute2 are all found."""
    (tmp_path / "a.py").write_text("def f():\n    import pyroute2\n")
    (tmp_path / "b.py").write_text("from pyroute2.netlink import exceptions\n")
    (tmp_path / "c.py").write_text("import importlib\nimportlib.import_module('pyroute2')\n")
    (tmp_path / "d.py").write_text("# pyroute2 is only named here\nimport os\n")
    assert pyroute2_importers(tmp_path) == {"a.py", "b.py", "c.py"}


def test_only_netlink_imports_pyroute2() -> None:
    """Nothing in the tree but worker/sandbox/network/netlink.py (and its own test) imports pyroute2."""
    importers = pyroute2_importers(REPO)
    assert "worker/sandbox/network/netlink.py" in importers
    assert importers <= PYROUTE2_ALLOWED, importers - PYROUTE2_ALLOWED
