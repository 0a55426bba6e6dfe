"""The host side of job networks: the sandpit bridge, forwarding, the nft ruleset, and the bookkeeping
of job networks the kernel is still freeing.

``prepare_host`` is idempotent and safe to run from several worker processes at once (it holds
``state_dir/net/host.lock``); the first one creates the bridge and picks the subnet, the others adopt
the bridge's subnet. Everything happens in ``settings.host_netns`` (tests) or the caller's namespace.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import random
import socket
import subprocess
import threading
import time
from pathlib import Path

from worker.sandbox.network.addresses import (
    AddressPlan,
    check_subnet,
    choose_subnet,
    parse_nameservers,
    render_resolv_conf,
)
from worker.sandbox.network.errors import CleanupBacklog, HostNetworkError, NetlinkError
from worker.sandbox.network.leases import Lease, LeaseStore, ReapLock
from worker.sandbox.network.namespace import open_netns, run_in_netns, write_sysctl
from worker.sandbox.network.policy import Policy, build_policy, pick_resolvers
from worker.sandbox.network.rtnl import (
    IFA_ADDRESS,
    IFA_LOCAL,
    IFF_UP,
    IFLA_ADDRESS,
    IFLA_AF_SPEC,
    IFLA_IFNAME,
    IFLA_INET6_ADDR_GEN_MODE,
    IFLA_INFO_KIND,
    IFLA_LINKINFO,
    IN6_ADDR_GEN_MODE_NONE,
    NLM_F_CREATE,
    NLM_F_EXCL,
    RTM_DELLINK,
    RTM_NEWADDR,
    RTM_NEWLINK,
    Rtnl,
    attr,
    ifaddrmsg,
    ifinfomsg,
    name,
    nested,
    u8,
)
from worker.sandbox.network.ruleset import render_ruleset, render_teardown
from worker.sandbox.network.settings import CANDIDATE_SUBNETS, FALLBACK_RESOLVERS, NetworkSettings


def no_ipv6_addresses() -> bytes:
    """IFLA_AF_SPEC asking for no IPv6 address generation on a link: no link-local, so no DAD."""
    return nested(IFLA_AF_SPEC, nested(socket.AF_INET6, u8(IFLA_INET6_ADDR_GEN_MODE, IN6_ADDR_GEN_MODE_NONE)))


class HostNetwork:
    """A process's handle on the prepared host side; ``close()`` is idempotent."""

    def __init__(self, settings: NetworkSettings, ns_fd: int | None, rtnl: Rtnl, bridge_index: int,
                 plan: AddressPlan, policy: Policy, resolvers: tuple[str, ...]) -> None:
        self.settings = settings
        self.rtnl = rtnl
        self.bridge_index = bridge_index
        self.plan = plan
        self.policy = policy
        self.resolvers = resolvers
        self.resolv_conf = render_resolv_conf(resolvers)
        self.leases = LeaseStore(settings.net_dir / "leases", plan)
        # spreads the first probed slot only; leases, not randomness, keep addresses unique
        self.random = random.Random(os.urandom(16))  # noqa: S311
        self._ns_fd = ns_fd
        self._pending: list[tuple[Lease, str]] = []
        self._lock = threading.Lock()

    def __enter__(self) -> HostNetwork:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- torn-down job networks the kernel is still freeing ----------------------------------

    def retire(self, lease: Lease, veth: str) -> None:
        """Keep ``lease`` until the kernel has freed ``veth`` (its namespace fds are already closed),
        so no new job gets the address or the interface name while the old pair still exists."""
        with self._lock:
            self._pending.append((lease, veth))

    def settle(self) -> int:
        """Release the leases whose veth is gone; return how many are still pending."""
        with self._lock:
            still = []
            for lease, veth in self._pending:
                if self.rtnl.link_index(veth) is None:
                    lease.release()
                else:
                    still.append((lease, veth))
            self._pending = still
            return len(still)

    def wait_for_room(self) -> None:
        """Block while ``max_pending_cleanups`` job networks are still being freed (backpressure)."""
        if len(self._pending) < self.settings.max_pending_cleanups:
            return
        deadline = time.monotonic() + self.settings.pending_wait_s
        delay = 0.001
        while self.settle() >= self.settings.max_pending_cleanups:
            if time.monotonic() > deadline:
                raise CleanupBacklog(f"{len(self._pending)} job networks are still being freed by the "
                                     f"kernel after {self.settings.pending_wait_s} s")
            time.sleep(delay)
            delay = min(delay * 2, 0.05)

    @property
    def pending(self) -> int:
        return len(self._pending)

    def close(self, wait_s: float | None = None) -> None:
        """Wait (up to ``wait_s``, default ``pending_wait_s``) for pending veths, delete the ones the
        kernel still has, release every lease, close the sockets."""
        if self._ns_fd == -2:
            return
        deadline = time.monotonic() + (self.settings.pending_wait_s if wait_s is None else wait_s)
        while self.settle() and time.monotonic() < deadline:
            time.sleep(0.005)
        with self._lock:
            for lease, veth in self._pending:
                delete_link(self.rtnl, veth)
                lease.release()
            self._pending = []
        self.rtnl.close()
        if self._ns_fd is not None:
            os.close(self._ns_fd)
        self._ns_fd = -2


def delete_link(rtnl: Rtnl, ifname: str | None = None, index: int = 0) -> bool:
    """Delete a link by name or index; False when it did not exist."""
    body = ifinfomsg(index=index) + (name(IFLA_IFNAME, ifname) if ifname else b"")
    try:
        rtnl.request((RTM_DELLINK, 0, body))
    except NetlinkError as exc:
        if exc.errno in (errno.ENODEV, errno.EINVAL):  # EINVAL: a by-name link missing, older kernels
            return False
        raise
    return True


def open_host(settings: NetworkSettings) -> tuple[int | None, Rtnl]:
    """The host namespace's fd (None: our own) and a netlink socket in it."""
    ns_fd = open_netns(settings.host_netns) if settings.host_netns is not None else None
    try:
        return ns_fd, run_in_netns(ns_fd, Rtnl.open_here)
    except BaseException:
        if ns_fd is not None:
            os.close(ns_fd)
        raise


def run_nft(ns_fd: int | None, document: str) -> None:
    def load() -> None:
        try:
            subprocess.run(["nft", "-f", "-"], input=document.encode(), capture_output=True, check=True,
                           timeout=30)
        except FileNotFoundError as exc:
            raise HostNetworkError("nft is not installed (apt-get install nftables)") from exc
        except subprocess.CalledProcessError as exc:
            raise HostNetworkError(f"nft refused the sandpit ruleset: {exc.stderr.decode().strip()}") from exc

    run_in_netns(ns_fd, load)


def _bridge_state(rtnl: Rtnl, bridge: str) -> tuple[int | None, ipaddress.IPv4Interface | None]:
    index = None
    for link in rtnl.links():
        if link.name == bridge:
            if link.kind != "bridge":
                raise HostNetworkError(f"interface {bridge} exists and is a {link.kind}, not a bridge")
            index = link.index
    address = None
    if index is not None:
        for link_index, addr, prefixlen in rtnl.ipv4_addresses():
            if link_index == index:
                address = ipaddress.IPv4Interface(f"{addr}/{prefixlen}")
    return index, address


def _create_bridge(rtnl: Rtnl, bridge: str) -> int:
    mac = bytes([0x02]) + os.urandom(5)  # fixed, locally administered: ports joining never change it
    # The kernel refuses IFLA_AF_SPEC on creation (EAFNOSUPPORT), so IPv6 is switched off by a second
    # message, while the bridge is still down and has no link-local address yet.
    rtnl.request((RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL,
                  ifinfomsg() + name(IFLA_IFNAME, bridge) + attr(IFLA_ADDRESS, mac)
                  + nested(IFLA_LINKINFO, name(IFLA_INFO_KIND, "bridge"))),
                 (RTM_NEWLINK, 0, ifinfomsg() + name(IFLA_IFNAME, bridge) + no_ipv6_addresses()))
    index = rtnl.link_index(bridge)
    if index is None:
        raise HostNetworkError(f"bridge {bridge} vanished right after it was created")
    return index


def prepare_host(settings: NetworkSettings) -> HostNetwork:
    """Bridge up with the gateway address, IPv4 forwarding on, the nft tables loaded. Idempotent."""
    ns_fd, rtnl = open_host(settings)
    try:
        with ReapLock(settings.net_dir / "host.lock"):
            index, gateway = _bridge_state(rtnl, settings.bridge)
            host_addresses = [(i, ipaddress.IPv4Interface(f"{a}/{p}")) for i, a, p in rtnl.ipv4_addresses()]
            taken = [ipaddress.IPv4Network(f"{dst}/{plen}") for dst, plen, oif in rtnl.ipv4_routes()
                     if oif is None or oif != index]
            taken = [net for net in taken if not net.is_loopback]
            taken += [iface.network for i, iface in host_addresses if i != index and not iface.is_loopback]
            if gateway is not None:
                subnet = gateway.network
                if settings.subnet is not None and settings.subnet != subnet:
                    raise HostNetworkError(f"bridge {settings.bridge} already uses {subnet}, not the "
                                           f"configured {settings.subnet}; run teardown_host first")
            elif settings.subnet is not None:
                check_subnet(settings.subnet, taken)
                subnet = settings.subnet
            else:
                subnet = choose_subnet(CANDIDATE_SUBNETS, taken)
            check_subnet(subnet, [])
            plan = AddressPlan(subnet)
            if index is None:
                index = _create_bridge(rtnl, settings.bridge)
            if gateway is None:
                ip = plan.gateway.ip.packed
                body = ifaddrmsg(index, subnet.prefixlen) + attr(IFA_LOCAL, ip) + attr(IFA_ADDRESS, ip)
                rtnl.request((RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL, body))
            rtnl.request((RTM_NEWLINK, 0, ifinfomsg(index=index, flags=IFF_UP, change=IFF_UP)))
            host_lans = [iface.network for i, iface in host_addresses
                         if i != index and not iface.is_loopback]
            resolvers = pick_resolvers(settings.resolvers, _host_nameservers(), FALLBACK_RESOLVERS)
            policy = build_policy(table=settings.table, bridge=settings.bridge, subnet=subnet,
                                  allow=settings.allow, resolvers=resolvers, host_networks=host_lans,
                                  uplink=settings.uplink, veth_prefix=settings.veth_prefix)
            run_in_netns(ns_fd, lambda: write_sysctl("/proc/sys/net/ipv4/ip_forward", "1"))
            run_nft(ns_fd, render_ruleset(policy))
        return HostNetwork(settings, ns_fd, rtnl, index, plan, policy, resolvers)
    except BaseException:
        rtnl.close()
        if ns_fd is not None:
            os.close(ns_fd)
        raise


def _host_nameservers() -> tuple[str, ...]:
    try:
        return parse_nameservers(Path("/etc/resolv.conf").read_text())
    except OSError:
        return ()


def teardown_host(settings: NetworkSettings) -> None:
    """Remove the nft tables, sandpit's veths and the bridge, and every stale lease (tests,
    ``sandpit reap --all``). Live jobs lose their network; their leases stay until they close."""
    from worker.sandbox.network.reaper import reap_networks

    ns_fd, rtnl = open_host(settings)
    try:
        with ReapLock(settings.net_dir / "host.lock"):
            run_nft(ns_fd, render_teardown(settings.table))
            links = rtnl.links()
            bridge = next((link.index for link in links if link.name == settings.bridge), None)
            for link in links:
                ours = link.name.startswith(settings.veth_prefix)
                if bridge is not None and link.master == bridge and ours:
                    delete_link(rtnl, index=link.index)
            if bridge is not None:
                delete_link(rtnl, index=bridge)
    finally:
        rtnl.close()
        if ns_fd is not None:
            os.close(ns_fd)
    reap_networks(settings)
