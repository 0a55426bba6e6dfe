"""runsc (gVisor): the same engine, a kernel of its own as the boundary."""

from __future__ import annotations

import pytest

from tests.conftest import require
from tests.sandbox.conftest import Runner
from worker.sandbox.request import Limits
from worker.sandbox.runtime import runtime_problem

MiB = 1 << 20


@pytest.fixture()
def gvisor(engine, no_leftovers):
    problem = runtime_problem("runsc")
    require(problem is None, f"runsc: {problem}")
    return Runner(engine, "runsc")


def test_runs_a_command_in_gvisor(gvisor):
    res, out, _ = gvisor.sh("echo hi; dmesg 2>/dev/null | head -1; exit 3")
    assert (res.status, res.exit_code, res.runtime) == ("failed", 3, "runsc")
    assert out.startswith("hi\n")


def test_environment_and_workspace(gvisor, monkeypatch):
    monkeypatch.setenv("SANDPIT_LEAK_PROBE", "x")
    res, out, _ = gvisor.sh("env; pwd; touch /workspace/f && echo ws")
    assert res.status == "succeeded"
    assert "SANDPIT_LEAK_PROBE" not in out and "/workspace" in out and "ws" in out


def test_timeout_and_memory_limits(gvisor):
    res, _o, _e = gvisor.sh("trap '' TERM; while true; do sleep 1; done", limits=Limits(timeout_s=1, grace_s=0.5))
    assert res.reason == "timeout"
    res, _o, _e = gvisor.sh("x=a; while true; do x=$x$x; done", limits=Limits(memory_bytes=128 * MiB))
    assert res.status == "failed" and res.reason in ("oom", "exit_code")


def test_log_limit_and_artifacts(gvisor):
    res, _o, _e = gvisor("yes", limits=Limits(log_bytes=10000))
    assert res.reason == "log_limit"
    res, _o, _e = gvisor.sh("echo a > a.txt; ln -s /etc/passwd l.txt", artifacts=("*.txt",))
    assert [a.path for a in res.artifacts] == ["a.txt"]
    assert [(r.path, r.why) for r in res.rejected_artifacts] == [("l.txt", "symlink")]
