"""What an egress job can and cannot reach, checked with real packets in the isolated test world."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator

import pytest

from worker.sandbox.network import JobNetwork

from .world import (
    HERE,
    HOST_TCP_PORTS,
    HOST_UDP_PORTS,
    INTERNET_GW,
    METADATA,
    OTHER_RESOLVER,
    PRIVATE_HOST,
    REDIS_PORT,
    RESOLVER,
    WEB,
    World,
    in_netns,
    probe,
    start_server,
    stop,
)

pytestmark = pytest.mark.root

PASSED = {"reply"}
STOPPED = {"timeout", "unreachable"}  # a dropped packet; "refused" would mean it reached something


@pytest.fixture
def egress_job(world: World) -> Iterator[JobNetwork]:
    with JobNetwork(world.settings, "probe-job", "egress", world.network) as job:
        yield job


def host_addresses(world: World) -> list[str]:
    found = []
    for link in json.loads(in_netns(world.host_path, "ip", "-j", "addr").stdout):
        for info in link["addr_info"]:
            if info["family"] == "inet" and not info["local"].startswith("127."):
                found.append(info["local"])
    return found


@pytest.mark.parametrize(("kind", "host", "port", "expected"), [
    ("http", WEB, 80, "hello from port 80"),
    ("http", WEB, 8080, "hello from port 8080"),
    ("udp", WEB, 5353, "pong 5353"),
    ("dns", RESOLVER, 53, WEB),
])
def test_egress_job_reaches_the_public_internet(world: World, egress_job: JobNetwork, kind: str, host: str,
                                                port: int, expected: str) -> None:
    """An egress job reaches a public server by address, through NAT (the internet has no route back
    to the job subnet), and the configured resolver."""
    [got] = probe(egress_job.netns_path, [{"kind": kind, "host": host, "port": port}])
    assert got["outcome"] == "reply", got
    assert expected in str(got["data"])


def test_none_job_has_only_loopback_and_reaches_nothing(world: World) -> None:
    """A `none` job has a namespace with only lo (up) and cannot reach the internet."""
    with JobNetwork(world.settings, "none-job", "none") as job:
        assert job.address is None and job.resolv_conf is None
        links = json.loads(in_netns(job.netns_path, "ip", "-j", "link").stdout)
        assert [(link["ifname"], "UP" in link["flags"]) for link in links] == [("lo", True)]
        results = probe(job.netns_path, [{"kind": "http", "host": WEB, "port": 80},
                                         {"kind": "dns", "host": RESOLVER, "port": 53}])
        assert {r["outcome"] for r in results} <= STOPPED, results


def test_egress_job_cannot_reach_the_host(world: World, egress_job: JobNetwork) -> None:
    """Every host address, several TCP and UDP ports of servers bound to 0.0.0.0, and redis-server on
    the host side are unreachable from a job, while the host itself reaches them all."""
    targets: list[dict[str, object]] = []
    for address in host_addresses(world):
        targets += [{"kind": "tcp", "host": address, "port": p} for p in (*HOST_TCP_PORTS, REDIS_PORT)]
        targets += [{"kind": "udp", "host": address, "port": p} for p in HOST_UDP_PORTS]
    assert len(targets) >= 2 * 8
    control = probe(world.host_path, targets)
    assert all(r["outcome"] == "reply" for r in control), [r for r in control if r["outcome"] != "reply"]
    results = probe(egress_job.netns_path, targets)
    leaks = [r for r in results if r["outcome"] not in STOPPED]
    assert not leaks, leaks


@pytest.mark.parametrize(("what", "kind", "host", "port"), [
    ("a private-range host", "http", PRIVATE_HOST, 80),
    ("the cloud metadata address", "http", METADATA, 80),
    ("the host's own LAN (uplink's subnet)", "http", INTERNET_GW, 80),
    ("a DNS server other than the configured resolver", "dns", OTHER_RESOLVER, 53),
    ("UDP to a private-range host", "udp", PRIVATE_HOST, 5353),
])
def test_egress_job_cannot_reach_private_or_special_destinations(world: World, egress_job: JobNetwork,
                                                                  what: str, kind: str, host: str,
                                                                  port: int) -> None:
    """Private, link-local/metadata and host-LAN destinations, and foreign DNS servers, are dropped
    for jobs although the host reaches them (the same route, so the policy is what stops them)."""
    target: dict[str, object] = {"kind": kind, "host": host, "port": port}
    [control] = probe(world.host_path, [target])
    assert control["outcome"] == "reply", (what, control)
    [got] = probe(egress_job.netns_path, [target])
    assert got["outcome"] in STOPPED, (what, got)


def test_egress_job_cannot_reach_another_job(world: World, egress_job: JobNetwork) -> None:
    """A job cannot reach a server in another running job (L2 isolation and the routed path)."""
    with JobNetwork(world.settings, "other-job", "egress", world.network) as other:
        server = start_server(other.netns_path, [sys.executable, str(HERE / "servers.py"),
                                                 "--tcp", "9000", "--udp", "9001"])
        try:
            assert server.stdout is not None and server.stdout.readline().strip() == "ready"
            assert other.address is not None
            targets: list[dict[str, object]] = [
                {"kind": "tcp", "host": str(other.address.ip), "port": 9000},
                {"kind": "udp", "host": str(other.address.ip), "port": 9001},
            ]
            control = probe(world.host_path, targets)
            assert {r["outcome"] for r in control} == PASSED, control
            results = probe(egress_job.netns_path, targets)
            assert {r["outcome"] for r in results} <= STOPPED, results
        finally:
            stop(server)


def test_job_resolves_names_through_its_resolv_conf(world: World, egress_job: JobNetwork,
                                                    tmp_path: pytest.TempPathFactory) -> None:
    """With the job's resolv.conf in place of /etc/resolv.conf, the C library resolves names through
    the configured resolver."""
    assert egress_job.resolv_conf is not None
    assert egress_job.resolv_conf.startswith(f"nameserver {RESOLVER}\n".encode())
    conf = tmp_path / "resolv.conf"  # type: ignore[operator]
    conf.write_bytes(egress_job.resolv_conf)
    lookup = "import socket; print(socket.gethostbyname('pkg.example.test'))"
    done = in_netns(egress_job.netns_path, "unshare", "--mount", "--propagation", "private", "sh", "-c",
                    'mount --bind "$0" /etc/resolv.conf && exec "$1" -c "$2"', str(conf), sys.executable,
                    lookup)
    assert done.stdout.strip() == WEB


def test_ipv6_is_off_in_jobs_and_on_their_veths(world: World, egress_job: JobNetwork) -> None:
    """No IPv6 address (so no DAD) on the job's interfaces or on the host end of its veth; the host
    end is an isolated bridge port."""
    job_addrs = in_netns(egress_job.netns_path, "ip", "-6", "addr").stdout
    assert job_addrs.strip() == "", job_addrs
    assert egress_job.veth is not None
    host_side = in_netns(world.host_path, "ip", "-6", "addr", "show", "dev", egress_job.veth).stdout
    assert host_side.strip() == "", host_side
    details = in_netns(world.host_path, "ip", "-d", "link", "show", egress_job.veth).stdout
    assert "isolated on" in details and "master sandpit0" in details, details


def test_probe_helper_runs(world: World) -> None:
    """The probe helper itself works from the host side (guards the other tests against false greens)."""
    done = subprocess.run([sys.executable, str(HERE / "probe.py"), "[]"], capture_output=True, text=True,
                          check=True)
    assert json.loads(done.stdout) == []
