"""Fixtures for tests that run real containers (root, real runtimes, real kernel objects)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipelines.job_record import JobRecord
from pipelines.record import replace
from tests.conftest import require, require_root
from worker.sandbox.engine import Engine
from worker.sandbox.reaper import leftovers
from worker.sandbox.request import SandboxRequest
from worker.sandbox.runtime import runtime_problem
from worker.settings import Settings

TEST_STATE = Path(os.environ.get("SANDPIT_TEST_STATE_DIR", "/var/lib/sandpit"))
TEST_RUN = Path(os.environ.get("SANDPIT_TEST_RUN_DIR", "/run/sandpit"))
# crun and runc run the full suite; runsc (gVisor: no host user namespace, its own /proc) runs
# tests/sandbox/test_runsc.py.
FULL_RUNTIMES = [r for r in os.environ.get("SANDPIT_TEST_RUNTIMES", "crun,runc").split(",") if r]


def test_settings() -> Settings:
    return Settings(state_dir=TEST_STATE, run_dir=TEST_RUN, scratch_bytes=8 * 1024**3)


@pytest.fixture(scope="session")
def settings() -> Settings:
    require_root()
    require(shutil.which("mmdebstrap") is not None, "needs mmdebstrap")
    s = test_settings()
    eng = Engine(s)
    for name in ("debian", "python"):
        require(eng.images.is_current(name), f"image {name} not built: sandpit images build {name}")
    return s


@pytest.fixture(scope="session", params=FULL_RUNTIMES)
def runtime(request: pytest.FixtureRequest) -> str:
    problem = runtime_problem(request.param)
    require(problem is None, f"runtime {request.param}: {problem}")
    return str(request.param)


class Runner:
    """Runs a request through the engine and captures the job's output."""

    def __init__(self, engine: Engine, runtime: str | None) -> None:
        self.engine = engine
        self.runtime = runtime

    def __call__(self, *argv: str, **kw: object) -> tuple[JobRecord, str, str]:
        out: list[bytes] = []
        err: list[bytes] = []

        def sink(stream: str, data: bytes) -> None:
            (out if stream == "out" else err).append(data)

        req = SandboxRequest(argv=argv, runtime=self.runtime)
        req = replace(req, **kw)  # type: ignore[arg-type]
        result = self.engine.run(req, sink=sink)
        if result.log_path:
            MADE_LOGS.append(Path(result.log_path))
        return result, b"".join(out).decode(errors="replace"), b"".join(err).decode(errors="replace")

    def sh(self, script: str, **kw: object) -> tuple[JobRecord, str, str]:
        return self("sh", "-c", script, **kw)


#: the logs of the jobs this session's Runner ran, removed when the session ends: the state dir
#: (and its built images) outlives the suite, its logs of test jobs should not
MADE_LOGS: list[Path] = []


@pytest.fixture(scope="session")
def engine(settings: Settings) -> Iterator[Engine]:
    yield Engine(settings)
    for path in MADE_LOGS:
        path.unlink(missing_ok=True)


@pytest.fixture()
def run(engine: Engine, runtime: str, no_leftovers: None) -> Runner:
    return Runner(engine, runtime)


@pytest.fixture()
def no_leftovers(settings: Settings) -> Iterator[None]:
    """After the test, nothing of sandpit's is left: no mount, cgroup, container, disk, job dir."""
    assert leftovers(settings) == []
    yield
    assert leftovers(settings) == []
