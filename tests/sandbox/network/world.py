"""An isolated stand-in world for the network tests, built entirely in namespaces the tests create.

::

    job netns ──veth── [sandpit0 bridge]  "host" netns  uplink0 ──veth── inet0  "internet" netns
    (JobNetwork)        NAT + nft rules    203.0.113.2/24       203.0.113.1/24  + on its lo:
                        servers on 0.0.0.0                                       198.51.100.10 (web)
                        redis-server                                             198.51.100.53 (dns)
                                                                                 198.51.100.54 (other dns)
                                                                                 10.200.0.5 (private;
                                                                                  the host's upstream
                                                                                  resolver, dns_world)
                                                                                 169.254.169.254 (metadata)

No interface of this world has a peer in the real root namespace, so no packet can leave it; the
fixture asserts that before any special address is brought up. Everything is removed by finalizers.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from tests.conftest import require
from worker.sandbox.network import HostNetwork, NetworkSettings
from worker.sandbox.network.namespace import FreshNetns
from worker.sandbox.network.netlink import create_netns, netlink_session

HERE = Path(__file__).parent
WEB = "198.51.100.10"
RESOLVER = "198.51.100.53"
OTHER_RESOLVER = "198.51.100.54"
PRIVATE_HOST = "10.200.0.5"
METADATA = "169.254.169.254"
HOST_UPLINK = "203.0.113.2"
INTERNET_GW = "203.0.113.1"
REAL_NETWORKS = ("10.97.", "192.0.2.")  # the machine's own uplink: must never appear in the test world
HOST_TCP_PORTS = (22, 80, 5432, 8000)
HOST_UDP_PORTS = (53, 161, 5353)
REDIS_PORT = 6390
#: the name the stand-in upstream resolver (dnsmasq on PRIVATE_HOST, see ``start_upstream_dns``) knows
KNOWN_NAME = "example.test"


def start_upstream_dns(internet_path: str) -> subprocess.Popen[str]:
    """The host's own resolver of ``dns_world``: a dnsmasq in the stand-in internet on the private
    PRIVATE_HOST (as a cloud VPC resolver is), answering ``KNOWN_NAME`` with WEB and refusing the
    rest; in the foreground, so the test stops it by its pid."""
    return start_server(internet_path, [
        "dnsmasq", "--keep-in-foreground", "--conf-file=/dev/null", "--no-resolv", "--no-hosts",
        f"--listen-address={PRIVATE_HOST}", "--bind-interfaces", f"--address=/{KNOWN_NAME}/{WEB}",
        "--pid-file", "--user=nobody", "--group=nogroup", "--log-facility=-"])


def wait_for_dns(path: str, server: str) -> None:
    for _ in range(100):
        got = probe(path, [{"kind": "dns", "host": server, "port": 53, "name": KNOWN_NAME}])[0]
        if got["outcome"] == "reply":
            return
    raise AssertionError(f"no DNS answer from {server} in {path}")


def require_network_tools() -> None:
    require(os.geteuid() == 0, "network tests need root (namespaces, veths, nft)")
    for tool in ("nft", "ip", "nsenter", "unshare"):
        require(shutil.which(tool) is not None, f"{tool} is not installed")


def in_netns(path: str, *argv: str, check: bool = True,
             timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["nsenter", f"--net={path}", *argv], capture_output=True, text=True,
                          check=check, timeout=timeout)


def probe(netns_path: str, targets: list[dict[str, object]]) -> list[dict[str, object]]:
    """Try every target from inside ``netns_path`` at once; see probe.py for the outcomes."""
    done = in_netns(netns_path, sys.executable, str(HERE / "probe.py"), json.dumps(targets))
    results: list[dict[str, object]] = json.loads(done.stdout)
    return results


def start_server(netns_path: str, argv: list[str]) -> subprocess.Popen[str]:
    proc = subprocess.Popen(["nsenter", f"--net={netns_path}", *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    return proc


def stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    for stream in (proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()


@dataclass
class World:
    host: FreshNetns
    internet: FreshNetns
    settings: NetworkSettings
    network: HostNetwork
    servers: list[subprocess.Popen[str]] = field(default_factory=list)

    @property
    def host_path(self) -> str:
        return self.host.path


def link_names(path: str) -> set[str]:
    links = json.loads(in_netns(path, "ip", "-j", "link", "show").stdout)
    return {str(link["ifname"]) for link in links}


def assert_isolated(host: FreshNetns, internet: FreshNetns) -> None:
    """The test world has no way to the machine's real network."""
    assert link_names(host.path) == {"lo", "uplink0"}, "the host netns must hold only our links"
    assert link_names(internet.path) == {"lo", "inet0"}
    root_links = {line.split(":")[1].strip().split("@")[0]
                  for line in subprocess.run(["ip", "-o", "link"], capture_output=True, text=True,
                                             check=True).stdout.splitlines()}
    assert not {"uplink0", "inet0"} & root_links, "test veths must never be in the root namespace"
    for path in (host.path, internet.path):
        text = in_netns(path, "ip", "route", "show", "table", "all").stdout
        text += in_netns(path, "ip", "addr").stdout
        assert not any(real in text for real in REAL_NETWORKS), text


def build_world() -> tuple[FreshNetns, FreshNetns]:
    host = create_netns(ipv6=True)
    internet = create_netns(ipv6=True)
    try:
        netlink_session(host.fd, lambda ipr: ipr.link("add", ifname="uplink0", kind="veth",
                                                      peer={"ifname": "inet0", "net_ns_fd": internet.fd}))
        assert_isolated(host, internet)
        script = [
            (host.path, f"ip addr add {HOST_UPLINK}/24 dev uplink0"),
            (host.path, "ip link set uplink0 up"),
            (host.path, f"ip route add default via {INTERNET_GW}"),
            (internet.path, f"ip addr add {INTERNET_GW}/24 dev inet0"),
            (internet.path, "ip link set inet0 up"),
        ]
        script += [(internet.path, f"ip addr add {addr}/32 dev lo")
                   for addr in (WEB, RESOLVER, OTHER_RESOLVER, PRIVATE_HOST, METADATA)]
        for path, command in script:
            in_netns(path, *command.split())
        assert_isolated_routes(host)
    except BaseException:
        host.close()
        internet.close()
        raise
    return host, internet


def assert_isolated_routes(host: FreshNetns) -> None:
    """Every destination, the machine's real networks included, leads only to the stand-in internet."""
    for destination in ("10.97.0.1", "192.0.2.1", METADATA, "8.8.8.8"):
        route = in_netns(host.path, "ip", "route", "get", destination).stdout
        assert "dev uplink0" in route, route


def wait_for_redis(path: str) -> None:
    for _ in range(100):
        got = probe(path, [{"kind": "tcp", "host": "127.0.0.1", "port": REDIS_PORT}])[0]
        if got["outcome"] == "reply":
            return
    raise AssertionError("redis-server did not start in the host namespace")
