"""The jobs' DNS forwarder (worker/sandbox/network/forwarder.py) in the isolated test world whose host
resolver is on a private address jobs may not reach (``dns_world``): jobs resolve through the
gateway, reach nothing else of the host, a dead forwarder comes back, pooled jobs use it too, and
teardown leaves no process."""

from __future__ import annotations

import os
import signal
import socket
import time
from dataclasses import replace
from pathlib import Path

import pytest

from worker.sandbox.network import JobNetwork, drain_pool, fill_pool, prepare_host, teardown_host
from worker.sandbox.network.forwarder import _exited, forwarder_pid
from worker.sandbox.network.namespace import run_in_netns
from worker.sandbox.network.pool.claim import claim

from .world import (
    HOST_TCP_PORTS,
    HOST_UPLINK,
    KNOWN_NAME,
    PRIVATE_HOST,
    WEB,
    World,
    in_netns,
    probe,
    start_server,
    stop,
    wait_for_dns,
)

pytestmark = pytest.mark.root


def gateway(world: World) -> str:
    return str(world.network.plan.gateway.ip)


def pid_of(world: World) -> int:
    assert world.network.dns_pid_file is not None, "no forwarder was started for a host without resolvers"
    pid = forwarder_pid(world.network.dns_pid_file)
    assert pid is not None, "the forwarder is not running"
    return pid


def kill_and_wait(pid: int) -> None:
    """SIGKILL the forwarder and wait until its sockets are gone (it is a zombie or reaped)."""
    os.kill(pid, signal.SIGKILL)
    for _ in range(1000):
        if _exited(pid):
            return
        time.sleep(0.005)
    raise AssertionError(f"forwarder {pid} outlived SIGKILL")


def test_job_resolv_conf_names_the_gateway_only(dns_world: World) -> None:
    """With no configured resolvers a job's resolv.conf names the bridge gateway and nothing else."""
    with JobNetwork(dns_world.settings, "dns-conf", "egress", dns_world.network) as net:
        assert net.resolv_conf is not None
        servers = [line.split()[1] for line in net.resolv_conf.decode().splitlines() if line.startswith("nameserver")]
    assert servers == [gateway(dns_world)]


def test_job_resolves_through_the_gateway_though_the_upstream_is_private(dns_world: World) -> None:
    """A job's query to the gateway (UDP and TCP) is answered by the host's private upstream, which
    the job itself cannot reach; the answer leads to the stand-in internet host."""
    gw = gateway(dns_world)
    with JobNetwork(dns_world.settings, "dns-resolve", "egress", dns_world.network) as net:
        via_gw, via_tcp, direct = probe(net.netns_path, [
            {"kind": "dns", "host": gw, "port": 53, "name": KNOWN_NAME},
            {"kind": "dnstcp", "host": gw, "port": 53, "name": KNOWN_NAME},
            {"kind": "dns", "host": PRIVATE_HOST, "port": 53, "name": KNOWN_NAME}])
        assert via_gw["outcome"] == "reply" and via_gw["data"] == WEB, via_gw
        assert via_tcp["outcome"] == "reply" and via_tcp["data"] == WEB, via_tcp
        assert direct["outcome"] in ("timeout", "unreachable"), direct
        (web,) = probe(net.netns_path, [{"kind": "http", "host": str(via_gw["data"]), "port": 80}])
        assert web["outcome"] == "reply", web


def test_job_reaches_no_other_port_or_address_of_the_host(dns_world: World) -> None:
    """Only port 53 of the gateway is open to jobs: not the forwarder's other ports, not the host's
    services on the gateway, not port 53 (or anything) of the host's other address."""
    gw = gateway(dns_world)
    targets: list[dict[str, object]] = [{"kind": "udp", "host": gw, "port": p} for p in (161, 5353, 67)]
    targets += [{"kind": "tcp", "host": host, "port": p} for host in (gw, HOST_UPLINK) for p in HOST_TCP_PORTS]
    targets += [{"kind": "dns", "host": HOST_UPLINK, "port": 53, "name": KNOWN_NAME},
                {"kind": "dnstcp", "host": HOST_UPLINK, "port": 53, "name": KNOWN_NAME},
                {"kind": "udp", "host": HOST_UPLINK, "port": 161}]
    with JobNetwork(dns_world.settings, "dns-ports", "egress", dns_world.network) as net:
        results = probe(net.netns_path, targets)
    assert {r["outcome"] for r in results} <= {"timeout", "unreachable"}, results


def test_forwarder_listens_on_the_gateway_only(dns_world: World) -> None:
    """Every socket of the forwarder is bound to the gateway's port 53 (no wildcard, no loopback)."""
    pid = pid_of(dns_world)
    sockets = in_netns(dns_world.host_path, "ss", "-Hlnptu").stdout.splitlines()
    mine = [line.split()[4] for line in sockets if f"pid={pid}," in line]
    assert mine and set(mine) == {f"{gateway(dns_world)}:53"}, sockets


def rewrite(path: Path, text: str, mtime: float) -> None:
    """Rewrite the host's resolv.conf as DHCP or resolved would, with an mtime of its own (dnsmasq
    notices a change by the whole-second mtime)."""
    path.write_text(text)
    os.utime(path, (mtime, mtime))


def ask_until(netns_path: str, server: str, want: str) -> dict[str, object]:
    got: dict[str, object] = {}
    for _ in range(40):
        (got,) = probe(netns_path, [{"kind": "dns", "host": server, "port": 53, "name": KNOWN_NAME}])
        if got.get("data") == want:
            break
        time.sleep(0.1)
    return got


def test_forwarder_follows_the_host_resolv_conf_to_a_loopback_stub(dns_world: World) -> None:
    """When the host's resolv.conf is rewritten to name a loopback stub (systemd-resolved's
    127.0.0.53 in the host namespace), jobs' queries to the gateway follow it without a restart."""
    stub_answer = "203.0.113.77"
    stub = start_server(dns_world.host_path, [
        "dnsmasq", "--keep-in-foreground", "--conf-file=/dev/null", "--no-resolv", "--no-hosts",
        "--listen-address=127.0.0.53", "--bind-interfaces", f"--address=/{KNOWN_NAME}/{stub_answer}",
        "--pid-file", "--user=nobody", "--group=nogroup", "--log-facility=-"])
    resolv = dns_world.settings.host_resolv_conf
    old = resolv.read_text()
    pid = pid_of(dns_world)
    try:
        wait_for_dns(dns_world.host_path, "127.0.0.53")
        rewrite(resolv, "nameserver 127.0.0.53\n", time.time() + 5)
        with JobNetwork(dns_world.settings, "dns-stub", "egress", dns_world.network) as net:
            got = ask_until(net.netns_path, gateway(dns_world), stub_answer)
            assert got.get("data") == stub_answer, got
            rewrite(resolv, old, time.time() + 10)
            assert ask_until(net.netns_path, gateway(dns_world), WEB).get("data") == WEB
    finally:
        rewrite(resolv, old, time.time() + 15)
        stop(stub)
    assert pid_of(dns_world) == pid, "the forwarder was restarted instead of following the file"


def test_a_dead_forwarder_is_restarted_at_the_next_job(dns_world: World) -> None:
    """Killed, the forwarder comes back when the next egress job is set up, and answers."""
    old = pid_of(dns_world)
    kill_and_wait(old)
    with JobNetwork(dns_world.settings, "dns-revive", "egress", dns_world.network) as net:
        new = pid_of(dns_world)
        (answer,) = probe(net.netns_path, [{"kind": "dns", "host": gateway(dns_world), "port": 53,
                                            "name": KNOWN_NAME}])
    assert new != old
    assert answer["outcome"] == "reply" and answer["data"] == WEB, answer


def test_pooled_jobs_use_the_gateway_and_revive_it(dns_world: World, tmp_path: Path) -> None:
    """A pool namespace's resolv.conf names the gateway, and claiming one restarts a dead forwarder."""
    settings = replace(dns_world.settings, pool_size=2, run_dir=tmp_path / "run")
    try:
        fill_pool(settings, dns_world.network)
        request = settings.pool_request()
        assert request is not None
        kill_and_wait(pid_of(dns_world))
        pooled = claim(request, "dns-pooled")
        assert pooled is not None
        try:
            assert pooled.resolv_conf.decode().startswith(f"nameserver {gateway(dns_world)}\n")
            (answer,) = probe(f"/proc/{os.getpid()}/fd/{pooled.netns_fd}",
                              [{"kind": "dns", "host": gateway(dns_world), "port": 53, "name": KNOWN_NAME}])
        finally:
            pooled.close()
        assert answer["outcome"] == "reply" and answer["data"] == WEB, answer
    finally:
        drain_pool(settings)


def test_teardown_stops_the_forwarder(dns_world: World) -> None:
    """teardown_host (``sandpit reap --all``) leaves no forwarder process and no pid file; the next
    prepare_host starts one again (and the world's host side is rebuilt for the tests after)."""
    pid = pid_of(dns_world)
    pid_file = dns_world.network.dns_pid_file
    assert pid_file is not None
    dns_world.network.close()
    teardown_host(dns_world.settings)
    assert _exited(pid), "the forwarder outlived teardown_host"
    assert not os.path.exists(pid_file)
    dns_world.network = prepare_host(dns_world.settings)
    assert pid_of(dns_world) != pid


def test_doctor_check_asks_the_forwarder_from_an_egress_namespace(dns_world: World) -> None:
    """The doctor's DNS check gets the forwarder's own answer through a job namespace, names the
    upstream it forwards to, and says broken (not fine) when the forwarder cannot be started."""
    from worker.sandbox.network.doctor import check_egress_dns

    ok, sentence = check_egress_dns(dns_world.settings)
    assert ok is True, sentence
    assert f"{gateway(dns_world)}:53" in sentence and "dnsmasq" in sentence and PRIVATE_HOST in sentence
    unprepared = replace(dns_world.settings, bridge="sandpitnone")
    assert check_egress_dns(unprepared)[0] is None
    # a dead forwarder whose port something else holds: it cannot come back, and the doctor says so
    kill_and_wait(pid_of(dns_world))
    squatter = run_in_netns(dns_world.host.fd, lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
    try:
        squatter.bind((gateway(dns_world), 53))
        ok, sentence = check_egress_dns(dns_world.settings)
    finally:
        squatter.close()
    assert ok is False and "in use" in sentence, sentence
