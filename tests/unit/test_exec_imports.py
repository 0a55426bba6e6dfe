"""``sandpit exec``'s import chain stays light: a fresh interpreter imports what ``exec`` imports
(the CLI, its fast parser, the ``exec`` command, the engine, and what a plain run loads after the
job: the local record and the retention check) and none of the heavy modules may be among them.

Measured here (``python -X importtime``): ``typing`` about 5 ms (25 ms with what it pulls in),
``dataclasses`` about 15 ms (it brings ``inspect``), ``argparse`` with its parser about 8 ms, the
database and broker stacks hundreds; a whole ``sandpit exec -- true`` is about 50 ms. ``json`` is
allowed: the OCI spec and the log records are JSON.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

HEAVY = (
    "argparse", "typing", "dataclasses", "inspect", "ast", "asyncio", "logging", "subprocess", "tempfile",
    "sqlalchemy", "sqlmodel", "alembic", "pydantic", "celery", "kombu", "redis", "pyroute2", "httpx", "yaml",
    "jinja2", "re2", "cryptography", "uuid",
)
#: sandpit's own packages exec must not load: the service, the API, the store, the pipeline language
#: (except its quantities: sizes and durations), the network and registry layers (egress and pulls only)
HEAVY_OWN = ("api", "pipelines.store", "pipelines.language.", "worker.service.",
             "worker.sandbox.network.", "worker.sandbox.registry.", "worker.sandbox.services.")
#: allowed: the language's quantities (sizes and durations) and the pull settings' values (the engine's
#: image store is built with them; the modules that pull are imported only by a pull)
ALLOWED_OWN = ("pipelines.language.quantities", "worker.sandbox.registry.config")

PROBE = """
import json, sys
from worker.cli.commands import parse_exec_fast
ns = parse_exec_fast(["--memory", "64M", "--env", "A=1", "--", "true"])
assert ns is not None
import worker.cli.exec, worker.local.records, worker.local.retention
print(json.dumps(sorted(sys.modules)))
"""


def loaded() -> list[str]:
    out = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, capture_output=True, text=True, check=True)
    return list(json.loads(out.stdout))


def heavy_among(modules: list[str]) -> list[str]:
    """The modules of ``modules`` that ``exec`` must not import."""
    found = [m for m in modules if m.partition(".")[0] in HEAVY]
    found += [m for m in modules if m not in ALLOWED_OWN
              and any((m == own.rstrip(".") and not own.endswith(".")) or m.startswith(own) for own in HEAVY_OWN)]
    return sorted(set(found))


def test_the_check_sees_a_heavy_module() -> None:
    assert heavy_among(["os", "typing", "pipelines.language.model", "pipelines.language.quantities",
                        "worker.sandbox.network", "worker.sandbox.network.netlink", "api.app"]) == [
        "api.app", "pipelines.language.model", "typing", "worker.sandbox.network.netlink"]


def test_exec_imports_no_heavy_module() -> None:
    modules = loaded()
    assert "worker.sandbox.engine" in modules and "worker.cli.exec" in modules  # the probe did import exec
    assert heavy_among(modules) == []


def whole_exec_imports(tmp_path: Path) -> list[str]:
    """Every module a whole ``sandpit exec`` process imports up to a refusal by the engine's own
    check of the request (an artifact path out of the workspace): the CLI, the settings, the
    engine built (its image store and pull settings), its run begun."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "SANDPIT_STATE_DIR": str(tmp_path / "state"),
           "SANDPIT_RUN_DIR": str(tmp_path / "run"), "SANDPIT_GC_EVERY": "0"}
    out = subprocess.run([sys.executable, "-X", "importtime", "-P", "-m", "worker", "exec", "--artifact", "../x",
                          "--", "true"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 125 and "\nsandpit: " in out.stderr, out.stderr[-2000:]
    return [line.rpartition("|")[2].strip() for line in out.stderr.splitlines() if line.startswith("import time:")
            and "self [us]" not in line]


def test_the_whole_exec_process_imports_no_heavy_module(tmp_path):
    """Past the probe above: building the engine and starting a run load none of the heavy modules
    either (the store, the language, the network and pull layers stay out)."""
    modules = whole_exec_imports(tmp_path)
    assert "worker.sandbox.engine" in modules and "worker.cli.exec" in modules and "worker.settings" in modules
    assert heavy_among(modules) == []
    assert "selectors" not in modules  # the supervisor's epoll set is its own (worker/sandbox/supervise.py)


def test_a_resident_engines_client_imports_only_builtin_modules(tmp_path):
    """What a ``sandpit exec`` served by a resident engine imports before it hands the job over
    (worker/cli/resident_client.py): the CLI's entry and the client, none of the commands, and no
    module of the standard library's Python half (``socket``, ``signal``, ``enum``, ``pathlib``,
    ``array``...: ≈ 12 ms together). Here no engine serves, so it goes on in-process after that: the
    modules between ``worker`` (the package, imported by ``-m``) and the client's own are the
    client's (``_socket`` is C too, a shared object; ``__future__`` aside: 0.1 ms, and every module of
    sandpit's has it)."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "SANDPIT_STATE_DIR": str(tmp_path / "state"),
           "SANDPIT_RUN_DIR": str(tmp_path / "run"), "SANDPIT_GC_EVERY": "0"}
    out = subprocess.run([sys.executable, "-X", "importtime", "-P", "-m", "worker", "exec", "--artifact", "../x",
                          "--", "true"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 125, out.stderr[-2000:]
    modules = [line.rpartition("|")[2].strip() for line in out.stderr.splitlines()
               if line.startswith("import time:") and "self [us]" not in line]
    # -X importtime lists a module when its import ends, so its own imports come before it
    client = modules[modules.index("worker") + 1:modules.index("worker.cli.resident_client") + 1]
    assert "worker.cli.commands" not in client and "_socket" in client
    python_half = [m for m in client if m not in sys.builtin_module_names
                   and m not in ("_socket", "__future__", "worker.cli", "worker.cli.resident_client")]
    assert python_half == []
