"""`network: egress` with real containers, inside the isolated stand-in world of the network tests.

The world (tests/sandbox/network/world.py) puts sandpit's bridge and rules in a "host" namespace the
test made, whose only uplink leads to a stand-in "internet" namespace: no packet can leave it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.sandbox.conftest import Runner
from tests.sandbox.network.conftest import dns_world, world  # noqa: F401 - the fixtures, shared
from tests.sandbox.network.world import HERE, HOST_TCP_PORTS, KNOWN_NAME, METADATA, PRIVATE_HOST, RESOLVER, WEB
from worker.sandbox.engine import Engine
from worker.sandbox.logs import read_log

PROBE = (HERE / "probe.py").read_text()


@pytest.fixture()
def net_run(settings, runtime, world, no_leftovers):  # noqa: F811
    engine = Engine(settings, network=world.settings, host_network=world.network)
    return Runner(engine, runtime)


def probe(run: Runner, network: str, targets: list[dict[str, object]]) -> list[dict[str, object]]:
    res, out, err = run("python3", "-c", PROBE, json.dumps(targets), image="python", network=network)
    assert res.status == "succeeded", err
    return json.loads(out)


def test_egress_job_reaches_the_internet_by_address(net_run):
    (result,) = probe(net_run, "egress", [{"kind": "http", "host": WEB, "port": 80}])
    assert result["outcome"] == "reply"


def test_none_job_cannot(net_run):
    (result,) = probe(net_run, "none", [{"kind": "http", "host": WEB, "port": 80}])
    assert result["outcome"] in ("timeout", "unreachable")


def test_egress_job_cannot_reach_host_private_or_metadata(net_run, world):  # noqa: F811
    gateway = str(world.network.plan.gateway.ip) if hasattr(world.network.plan, "gateway") else None
    targets: list[dict[str, object]] = [{"kind": "tcp", "host": PRIVATE_HOST, "port": 80},
                                        {"kind": "http", "host": METADATA, "port": 80}]
    for host in filter(None, [gateway, "203.0.113.2"]):
        targets += [{"kind": "tcp", "host": host, "port": p} for p in HOST_TCP_PORTS]
    results = probe(net_run, "egress", targets)
    assert {r["outcome"] for r in results} <= {"timeout", "unreachable"}, results


def test_dns_through_the_configured_resolver(net_run):
    res, out, _ = net_run("sh", "-c", "cat /etc/resolv.conf; getent hosts anything.example", image="python",
                          network="egress")
    assert res.status == "succeeded"
    assert f"nameserver {RESOLVER}" in out
    assert WEB in out.splitlines()[-1]


def test_egress_leaves_no_lease_veth_or_netns(net_run, world):  # noqa: F811
    """After egress jobs end (and the kernel frees their veths), no lease, veth or netns fd is left."""
    from tests.sandbox.network.test_lifecycle import lease_files, open_netns_fds, sandpit_veths, wait_until_clean

    before = open_netns_fds()
    for _ in range(3):
        res, _out, _err = net_run("true", network="egress")
        assert res.status == "succeeded"
    wait_until_clean(world)
    assert sandpit_veths(world) == set()
    assert lease_files(world.settings) == []
    assert open_netns_fds() <= before


@pytest.fixture()
def dns_run(settings, runtime, dns_world, no_leftovers):  # noqa: F811
    """Jobs in the world whose host resolver is private: DNS only through sandpit's forwarder."""
    engine = Engine(settings, network=dns_world.settings, host_network=dns_world.network)
    return Runner(engine, runtime)


FETCH_BY_NAME = f"""
import socket, urllib.request
print(open("/etc/resolv.conf").read().split()[1])
print(socket.gethostbyname("{KNOWN_NAME}"))
print(urllib.request.urlopen("http://{KNOWN_NAME}/", timeout=5).read().decode().strip())
"""


def test_egress_job_resolves_and_connects_by_name_through_the_gateway(dns_run, dns_world):  # noqa: F811
    """With the host's resolver on a private address jobs may not reach, an egress job still resolves
    a name (through the forwarder on the gateway its resolv.conf names) and connects to it."""
    res, out, err = dns_run("python3", "-c", FETCH_BY_NAME, image="python", network="egress")
    assert res.status == "succeeded", err
    assert out.split() == [str(dns_world.network.plan.gateway.ip), WEB, "hello", "from", "port", "80"]


@pytest.mark.parametrize("script", [
    "getent hosts example.com || { echo 'Temporary failure in name resolution' >&2; exit 2; }",
    f"python3 -c 'import socket; socket.create_connection((\"{WEB}\", 80), timeout=2)'",
])
def test_offline_failure_of_a_none_job_gets_the_egress_hint(run, script):
    """A `network: none` job that fails on a lookup or a connection is told, in its message and at
    the end of its log, to ask for `sandbox: network: egress`."""
    res, _out, err = run.sh(script, image="python", network="none")
    assert res.status == "failed", err
    assert res.message is not None and "sandbox: network: egress" in res.message
    assert "sandpit: hint:" in err.splitlines()[-1], err  # the live reader's last line too
    assert res.log_path is not None
    last = read_log(Path(res.log_path))[-1]
    assert last[1] == "sys" and last[2].strip().startswith("sandpit: hint:") and "network: egress" in last[2]


@pytest.mark.parametrize("network,script", [
    ("none", "echo 'AssertionError: 1 != 2' >&2; exit 1"),
    ("none", "echo 'Temporary failure in name resolution'; exit 0"),
])
def test_no_hint_for_other_failures_or_successes(run, network, script):
    """Failures unrelated to the network, and jobs that succeed, get no hint."""
    res, _out, _err = run.sh(script, image="python", network=network)
    assert not (res.message or "").count("hint")
