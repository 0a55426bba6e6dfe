"""Fixtures of the network tests: the isolated stand-in world (see world.py)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from worker.sandbox.network import NetworkSettings, prepare_host, teardown_host

from .world import (
    HERE,
    HOST_TCP_PORTS,
    HOST_UDP_PORTS,
    HOST_UPLINK,
    OTHER_RESOLVER,
    PRIVATE_HOST,
    REDIS_PORT,
    RESOLVER,
    WEB,
    World,
    build_world,
    require_network_tools,
    start_server,
    start_upstream_dns,
    stop,
    wait_for_dns,
    wait_for_redis,
)


@pytest.fixture(autouse=True)
def _network_tools() -> None:
    """Every test here needs root, nft and iproute2: skip (or fail under SANDPIT_REQUIRE_ALL=1)."""
    require_network_tools()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    require_network_tools()
    state_dir = tmp_path_factory.mktemp("sandpit-state")
    host, internet = build_world()
    settings = NetworkSettings(state_dir=state_dir, host_netns=Path(host.path), resolvers=(RESOLVER,))
    servers: list[subprocess.Popen[str]] = []
    world: World | None = None
    try:
        world = World(host, internet, settings, prepare_host(settings), servers)
        servers.append(start_server(internet.path, [sys.executable, str(HERE / "servers.py"),
                                                    "--tcp", "80", "--tcp", "8080", "--udp", "5353",
                                                    "--dns", f"{RESOLVER}:53={WEB}",
                                                    "--dns", f"{OTHER_RESOLVER}:53=203.0.113.99"]))
        host_server = [sys.executable, str(HERE / "servers.py")]
        for port in HOST_TCP_PORTS:
            host_server += ["--tcp", str(port)]
        for port in HOST_UDP_PORTS:
            host_server += ["--udp", str(port)]
        servers.append(start_server(host.path, host_server))
        for server in servers:
            assert server.stdout is not None
            assert server.stdout.readline().strip() == "ready", server.stderr
        if shutil.which("redis-server"):
            servers.append(start_server(host.path, ["redis-server", "--port", str(REDIS_PORT),
                                                    "--bind", "0.0.0.0",  # noqa: S104 - test netns
                                                    "--protected-mode", "no",
                                                    "--save", "", "--appendonly", "no"]))
            wait_for_redis(host.path)
        yield world
    finally:
        for server in servers:
            stop(server)
        if world is not None:
            world.network.close()  # a test may have replaced it
        teardown_host(settings)
        host.close()
        internet.close()




@pytest.fixture(scope="module")
def dns_world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """A world whose host names no resolver for jobs (no ``resolvers``): its own resolv.conf names
    PRIVATE_HOST, a private address the policy blocks for jobs, where a stand-in upstream dnsmasq
    answers; sandpit's forwarder on the gateway must bridge the two. The host side also listens on
    TCP ports of every address, UDP 161/5353, and port 53 of its uplink address (none of which a job
    may reach)."""
    require_network_tools()
    if shutil.which("dnsmasq") is None:
        pytest.skip("dnsmasq is not installed (apt-get install dnsmasq-base)")
    state_dir = tmp_path_factory.mktemp("sandpit-dns-state")
    # dnsmasq re-reads the file after dropping root: a world-readable dir, not pytest's 0700 tmp
    etc = tempfile.mkdtemp(prefix="sandpit-dns-etc-")
    os.chmod(etc, 0o755)  # noqa: S103 - read by the forwarder's unprivileged user
    host_resolv = os.path.join(etc, "resolv.conf")
    with open(host_resolv, "w") as f:
        f.write(f"# the host's resolver, private as a cloud VPC's\nnameserver {PRIVATE_HOST}\n")
    os.chmod(host_resolv, 0o644)
    host, internet = build_world()
    settings = NetworkSettings(state_dir=state_dir, host_netns=Path(host.path), host_resolv_conf=Path(host_resolv))
    servers: list[subprocess.Popen[str]] = []
    world: World | None = None
    try:
        servers.append(start_upstream_dns(internet.path))
        wait_for_dns(host.path, PRIVATE_HOST)
        world = World(host, internet, settings, prepare_host(settings), servers)
        servers.append(start_server(internet.path, [sys.executable, str(HERE / "servers.py"), "--tcp", "80"]))
        host_server = [sys.executable, str(HERE / "servers.py"), "--udp", "161", "--udp", "5353",
                       "--dns", f"{HOST_UPLINK}:53=203.0.113.99"]
        for port in HOST_TCP_PORTS:
            host_server += ["--tcp", str(port)]
        servers.append(start_server(host.path, host_server))
        for server in servers[1:]:
            assert server.stdout is not None
            assert server.stdout.readline().strip() == "ready", server.stderr
        yield world
    finally:
        for server in servers:
            stop(server)
        if world is not None:
            world.network.close()
        teardown_host(settings)
        host.close()
        internet.close()
        shutil.rmtree(etc, ignore_errors=True)
