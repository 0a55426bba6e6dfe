"""runsc (gVisor): the same engine, a kernel of its own as the boundary."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import require
from tests.sandbox.conftest import Runner
from tests.sandbox.network.conftest import world  # noqa: F401 - the fixture, shared
from worker.sandbox.engine import Engine
from worker.sandbox.request import Limits
from worker.sandbox.runtime import RUNSC_NETWORK, Runtime, runsc_netstack_problem, runtime_problem

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


# -- loopback: a listener and a client on 127.0.0.1 inside one job, under every runtime ---------------

LOOPBACK = """
import socket
server = socket.socket()
server.bind(("127.0.0.1", 0))
server.listen()
client = socket.create_connection(server.getsockname(), timeout=5)
peer, _ = server.accept()
client.sendall(b"ping")
print(peer.recv(4).decode(), "over", client.getpeername()[0])
"""


@pytest.mark.parametrize("runtime_name", ["crun", "runc", "runsc"])
def test_loopback_works_without_a_network(engine, no_leftovers, runtime_name):
    """``--network none`` is loopback only, and loopback works: under runsc it did not (the job ran on
    the host's stack in a namespace whose lo was down: ``--network=host``)."""
    problem = runtime_problem(runtime_name)
    require(problem is None, f"{runtime_name}: {problem}")
    res, out, err = Runner(engine, runtime_name)("python3", "-c", LOOPBACK, image="python", network="none")
    assert res.status == "succeeded", err
    assert out.strip() == "ping over 127.0.0.1"


@pytest.mark.parametrize("runtime_name", ["crun", "runc"])
def test_loopback_works_with_egress(settings, world, no_leftovers, runtime_name):  # noqa: F811
    problem = runtime_problem(runtime_name)
    require(problem is None, f"{runtime_name}: {problem}")
    engine = Engine(settings, network=world.settings, host_network=world.network)
    res, out, err = Runner(engine, runtime_name)("python3", "-c", LOOPBACK, image="python", network="egress")
    assert res.status == "succeeded", err
    assert out.strip() == "ping over 127.0.0.1"


def test_egress_under_runsc_is_refused_up_front_or_has_loopback(settings, world, no_leftovers):  # noqa: F811
    """Where this runsc's netstack cannot use sandpit's veth (gVisor before 2024-08 on kernels with
    a per-netns rmem_default) the job is refused before anything is made: error/infra_error with a
    message naming the fix, never a fallback to ``--network=host``. Where it can, loopback works."""
    require(runtime_problem("runsc") is None, f"runsc: {runtime_problem('runsc')}")
    engine = Engine(settings, network=world.settings, host_network=world.network)
    res, out, err = Runner(engine, "runsc")("python3", "-c", LOOPBACK, image="python", network="egress")
    if runsc_netstack_problem(engine.runtime("runsc").binary):
        assert (res.status, res.reason) == ("error", "infra_error")
        assert res.message and "--runtime crun or runc" in res.message
    else:
        assert res.status == "succeeded", err
        assert out.strip() == "ping over 127.0.0.1"


def test_runsc_never_runs_on_the_host_network_stack(engine):
    """No job network mode makes runsc hand the job's sockets to the host kernel."""
    require(runtime_problem("runsc") is None, f"runsc: {runtime_problem('runsc')}")
    runsc = engine.runtime("runsc")
    for mode in RUNSC_NETWORK:
        argv = Runtime(runsc.name, runsc.binary, runsc.root, mode).run_argv(Path("/b"), "sandpit-x", Path("/l"))
        assert "--network=host" not in argv and f"--network={RUNSC_NETWORK[mode]}" in argv
