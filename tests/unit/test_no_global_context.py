"""No module-level mutable context in ``worker/``: state a process builds (the service's database,
Redis, engine, sweeper) lives on an object the entry point owns (the Celery app's ``service``), and
is passed down; a module never keeps it in a global.

Two shapes are looked for, with ``ast`` (so the test reads every module, imported or not):
- a ``global`` statement anywhere (the only way a function rebinds a module-level name);
- a module-level name bound to a mutable container (a list, dict or set display or comprehension,
  or a call of ``dict``, ``list``, ``set``, ``defaultdict``, ...) that some function mutates
  (item assignment or deletion, augmented assignment of an item, or a mutating method call).

A few process-wide things are allowed by name, each for a reason: memos of facts about the host
that cannot change while the process lives, and operating-system resources held for the life of
the process. A new one must be added here with its reason; an entry that no longer occurs fails
too, so the list stays true.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

MUTABLE_CALLS = frozenset({"dict", "list", "set", "defaultdict", "OrderedDict", "deque", "Counter",
                           "WeakValueDictionary", "WeakKeyDictionary", "WeakSet"})
MUTATING_METHODS = frozenset({"append", "extend", "insert", "pop", "popitem", "remove", "clear", "update",
                              "setdefault", "add", "discard", "appendleft", "popleft"})

ALLOWED = {
    # host facts, probed once per process
    ("worker/sandbox/beneath.py", "_ctypes_state"): "libc's openat2 entry point, looked up once",
    ("worker/sandbox/beneath.py", "_have_openat2"): "whether this kernel has openat2",
    ("worker/sandbox/cgroups.py", "_hierarchy_cache"): "the host's cgroup hierarchies",
    ("worker/sandbox/runtime.py", "_runsc_problems"): "what this host's runsc can do",
    ("worker/sandbox/shell.py", "_cache"): "an image layer's shell (content-addressed: never changes)",
    ("worker/sandbox/userns.py", "_fds"): "user-namespace fds, one per uid range, reused by every job",
    # operating-system resources held for the life of the process
    ("worker/sandbox/instance.py", "_claimed"): "the flock on this process's instance entry",
    ("worker/sandbox/network/egress.py", "_pool"): "the threads that make job networks",
}


def module_state(source: str) -> set[tuple[str, int]]:
    """(name, line) of each ``global`` statement's names and of each mutation of a module-level
    mutable container in ``source``."""
    tree = ast.parse(source)
    found = {(name, node.lineno) for node in ast.walk(tree) if isinstance(node, ast.Global) for name in node.names}
    containers = set()
    for statement in tree.body:
        if isinstance(statement, ast.Assign):
            targets, value = statement.targets, statement.value
        elif isinstance(statement, ast.AnnAssign) and statement.value is not None:
            targets, value = [statement.target], statement.value
        else:
            continue
        if _mutable(value):
            containers |= {target.id for target in targets if isinstance(target, ast.Name)}
    for function in ast.walk(tree):
        if not isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        local = {a.arg for a in function.args.args + function.args.kwonlyargs + function.args.posonlyargs}
        for node in ast.walk(function):
            for name in _mutated(node):
                if name in containers and name not in local:
                    found.add((name, node.lineno))
    return found


def _mutable(value: ast.expr) -> bool:
    if isinstance(value, ast.List | ast.Dict | ast.Set | ast.ListComp | ast.DictComp | ast.SetComp):
        return True
    if isinstance(value, ast.Call):
        func = value.func
        name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
        return name in MUTABLE_CALLS
    return False


def _mutated(node: ast.AST) -> list[str]:
    targets: list[ast.expr] = []
    if isinstance(node, ast.Assign | ast.Delete):
        targets = list(node.targets)
    elif isinstance(node, ast.AugAssign | ast.AnnAssign):
        targets = [node.target]
    names = [t.value.id for t in targets if isinstance(t, ast.Subscript) and isinstance(t.value, ast.Name)]
    if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in MUTATING_METHODS
            and isinstance(node.func.value, ast.Name)):
        names.append(node.func.value.id)
    return names


def test_the_checker_finds_both_shapes() -> None:
    source = (
        "_ctx = None\n"
        "_jobs = {}\n"
        "_names: list[str] = []\n"
        "LIMITS = (1, 2)\n"
        "def start():\n"
        "    global _ctx\n"
        "    _ctx = object()\n"
        "def remember(job):\n"
        "    _jobs[job] = 1\n"
        "    _names.append(job)\n"
        "def fine(_jobs):\n"
        "    _jobs['x'] = 2\n"  # a parameter of the same name is not the module's
        "    local = {}\n"
        "    local['y'] = 3\n"
    )
    assert module_state(source) == {("_ctx", 6), ("_jobs", 9), ("_names", 10)}


def test_worker_keeps_no_module_level_mutable_context() -> None:
    found = {}
    for path in sorted((ROOT / "worker").rglob("*.py")):
        relative = path.relative_to(ROOT).as_posix()
        for name, line in module_state(path.read_text()):
            found.setdefault((relative, name), []).append(line)
    unexpected = {key: lines for key, lines in found.items() if key not in ALLOWED}
    assert not unexpected, "module-level mutable state (keep it on an object the entry point owns): " + ", ".join(
        f"{path}:{min(lines)} {name}" for (path, name), lines in sorted(unexpected.items()))
    stale = sorted(set(ALLOWED) - set(found))
    assert not stale, f"allowed but no longer there (drop them from ALLOWED): {stale}"
