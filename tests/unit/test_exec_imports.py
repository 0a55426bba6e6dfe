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
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LAUNCHER = ROOT / "worker" / "cli" / "sandpit"

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
from worker.cli import parse_exec_fast
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
    """Every module a whole ``sandpit exec`` process imports, started as the installed launcher
    starts it (``python -I -S``), up to a refusal by the engine's own check of the request (an
    artifact path out of the workspace): the CLI, the settings, the engine built, its run begun."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "SANDPIT_STATE_DIR": str(tmp_path / "state"),
           "SANDPIT_RUN_DIR": str(tmp_path / "run"), "SANDPIT_GC_EVERY": "0"}
    out = subprocess.run([sys.executable, "-X", "importtime", "-I", "-S", str(LAUNCHER), "exec", "--artifact",
                          "../x", "--", "true"], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 125 and "\nsandpit: " in out.stderr, out.stderr[-2000:]
    return [line.rpartition("|")[2].strip() for line in out.stderr.splitlines() if line.startswith("import time:")
            and "self [us]" not in line]


def test_the_whole_exec_process_imports_no_heavy_module_and_no_site(tmp_path):
    """Through the launcher, ``exec`` runs without ``site`` (nor setuptools' distutils shim that a
    .pth file imports) and loads none of the heavy modules."""
    modules = whole_exec_imports(tmp_path)
    assert "worker.sandbox.engine" in modules and "worker.cli.exec" in modules
    assert "site" not in modules and "_distutils_hack" not in modules
    assert heavy_among(modules) == []


@pytest.fixture()
def venv(tmp_path: Path) -> Path:
    """A virtual environment with the launcher installed and this checkout on its path through a
    .pth file (as an editable install has it), and a second .pth whose code would exit 7."""
    folder = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(folder)], check=True, timeout=120)
    packages = folder / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}" / "site-packages"
    (packages / "__editable__.sandpit.pth").write_text(f"{ROOT}\n")
    (packages / "zz-exits.pth").write_text("import sys; sys.exit(7)\n")
    shutil.copy(LAUNCHER, folder / "bin" / "sandpit")
    return folder


def test_the_launcher_finds_the_package_through_the_pth_paths_without_running_pth_code(venv, tmp_path):
    """``exec``: the .pth file's folder is on the path (the command runs: a bad size is refused
    with 125), and the other .pth file's code is not run; any other command goes through ``site``
    as usual, which runs that code (exit 7)."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "SANDPIT_STATE_DIR": str(tmp_path / "state"),
           "SANDPIT_RUN_DIR": str(tmp_path / "run"), "SANDPIT_GC_EVERY": "0"}
    refused = subprocess.run([str(venv / "bin" / "sandpit"), "exec", "--memory", "lots", "--", "true"], env=env,
                             capture_output=True, text=True, timeout=60)
    assert refused.returncode == 125 and "not a size" in refused.stderr, refused.stderr
    other = subprocess.run([str(venv / "bin" / "sandpit"), "lint", "--help"], env=env, capture_output=True,
                           text=True, timeout=60)
    assert other.returncode == 7


def test_the_launcher_uses_site_for_an_environment_sharing_the_systems_packages(venv, tmp_path):
    """A virtual environment made with --system-site-packages takes its libraries from the system's
    folders, which only ``site`` knows: ``exec`` goes through it too (the .pth code runs: exit 7)."""
    config = venv / "pyvenv.cfg"
    config.write_text(config.read_text().replace("include-system-site-packages = false",
                                                 "include-system-site-packages = true"))
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "SANDPIT_STATE_DIR": str(tmp_path / "state"),
           "SANDPIT_RUN_DIR": str(tmp_path / "run"), "SANDPIT_GC_EVERY": "0"}
    done = subprocess.run([str(venv / "bin" / "sandpit"), "exec", "--memory", "lots", "--", "true"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 7
