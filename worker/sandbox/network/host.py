"""The host side of job networks: the sandpit bridge, forwarding, the nft ruleset, and the bookkeeping
of job networks the kernel is still freeing.

``prepare_host`` is idempotent and safe to run from several worker processes at once (it holds
``state_dir/net/host.lock``); the first one creates the bridge and picks the subnet, the others adopt
the bridge's subnet. Other sandpit instances of the host have bridges and tables of their own names
(``worker/sandbox/instance.py``); the subnet is chosen under a host-wide lock, clear of every route,
theirs included, so no two instances share one. Everything happens in ``settings.host_netns`` (tests)
or the caller's namespace.

Tearing the host side down and reloading it are ``lifecycle.py``'s: they involve the pool and the
reaper, which sit above this layer; nothing here knows of either.
"""

from __future__ import annotations

import ipaddress
import os
import random
import socket
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from worker.sandbox.instance import net_lock
from worker.sandbox.network.addresses import (
    AddressPlan,
    check_subnet,
    choose_subnet,
    parse_nameservers,
    render_resolv_conf,
)
from worker.sandbox.network.errors import CleanupBacklog, HostNetworkError
from worker.sandbox.network.forwarder import (
    dnsmasq_argv,
    dnsmasq_user,
    ensure_forwarder,
    forwarder_alive,
    have_dnsmasq,
    pid_file_of,
    revive_forwarder,
)
from worker.sandbox.network.leases import Lease, LeaseStore, ReapLock
from worker.sandbox.network.namespace import open_netns, run_in_netns, write_sysctl
from worker.sandbox.network.netlink import (
    NO_IPV6_ADDRESSES,
    NetlinkThread,
    delete_link,
    ipv4_addresses,
    ipv4_routes,
    link_index,
    links,
)
from worker.sandbox.network.policy import EgressPolicy, build_policy, pick_resolvers
from worker.sandbox.network.ruleset import render_ruleset
from worker.sandbox.network.settings import CANDIDATE_SUBNETS, FALLBACK_RESOLVERS, NetworkSettings


class HostNetwork:
    """A process's handle on the prepared host side; ``close()`` is idempotent; threads may share it.

    ``netlink`` is the process's one host-side pyroute2 socket, owned by a thread in the host
    namespace (see ``netlink.NetlinkThread``): ``host.netlink.call(lambda ipr: ...)``.
    """

    def __init__(self, settings: NetworkSettings, ns_fd: int | None, netlink: NetlinkThread,
                 bridge_index: int, plan: AddressPlan, policy: EgressPolicy, resolvers: tuple[str, ...],
                 dns_pid_file: str | None = None) -> None:
        self.settings = settings
        self.netlink = netlink
        self.bridge_index = bridge_index
        self.plan = plan
        self.policy = policy
        self.resolvers = resolvers
        self.resolv_conf = render_resolv_conf(resolvers)
        #: the pid file of the jobs' DNS forwarder on the gateway; None: jobs use ``resolvers`` directly
        self.dns_pid_file = dns_pid_file
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
            if not self._pending:
                return 0
            names = [veth for _, veth in self._pending]
            present = self.netlink.call(lambda ipr: [_link_exists(name) for name in names])
            still = []
            for (lease, veth), alive in zip(self._pending, present, strict=True):
                if alive:
                    still.append((lease, veth))
                else:
                    lease.release()
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

    def check_dns(self) -> None:
        """Restart the jobs' DNS forwarder if it died (each egress set-up: a pid file and a
        /proc read, ≈20 µs; the restart itself runs under the host lock)."""
        if self.dns_pid_file is not None and not forwarder_alive(self.dns_pid_file):
            revive_forwarder(self.dns_pid_file, self.settings.net_dir / "host.lock")

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
            leftovers = [veth for _, veth in self._pending]
            try:
                self.netlink.call(lambda ipr: [delete_link(ipr, veth) for veth in leftovers])
            finally:
                for lease, _ in self._pending:
                    lease.release()
                self._pending = []
        self.netlink.close()
        if self._ns_fd is not None:
            os.close(self._ns_fd)
        self._ns_fd = -2


def _link_exists(ifname: str) -> bool:
    """Whether the calling thread's namespace has a link ``ifname``: libc's if_nametoindex (an ioctl,
    ≈5 µs), not a netlink GETLINK, whose pyroute2 round trip (≈0.3 ms) would make settling a full
    backlog of 128 pairs a 40 ms stall. Runs in the host's netlink thread."""
    try:
        socket.if_nametoindex(ifname)
    except OSError:
        return False
    return True


def host_netns_fd(settings: NetworkSettings) -> int | None:
    """An fd of ``settings.host_netns`` (None: the caller's own namespace)."""
    return open_netns(settings.host_netns) if settings.host_netns is not None else None


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


def _bridge_state(ipr: Any, bridge: str) -> tuple[int | None, ipaddress.IPv4Interface | None]:
    index = None
    for link in links(ipr):
        if link.name == bridge:
            if link.kind != "bridge":
                raise HostNetworkError(f"interface {bridge} exists and is a {link.kind}, not a bridge")
            index = link.index
    address = None
    if index is not None:
        for link_index_, iface in ipv4_addresses(ipr):
            if link_index_ == index:
                address = iface
    return index, address


def _create_bridge(ipr: Any, bridge: str) -> int:
    mac = ":".join(f"{b:02x}" for b in bytes([0x02]) + os.urandom(5))  # fixed, locally administered:
    # ports joining never change it. The kernel refuses IFLA_AF_SPEC on creation (EAFNOSUPPORT), so
    # IPv6 is switched off by a second message, while the bridge is still down and has no link-local.
    ipr.link("add", ifname=bridge, kind="bridge", address=mac)
    index = link_index(ipr, bridge)
    if index is None:
        raise HostNetworkError(f"bridge {bridge} vanished right after it was created")
    ipr.link("set", index=index, af_spec=NO_IPV6_ADDRESSES)
    return index


@dataclass(frozen=True)
class _HostState:
    bridge_index: int
    subnet: ipaddress.IPv4Network
    host_lans: list[ipaddress.IPv4Network]


def _prepare_bridge(ipr: Any, settings: NetworkSettings) -> _HostState:
    """Find or make the bridge, choose or adopt the subnet, give the bridge its gateway address, up."""
    index, gateway = _bridge_state(ipr, settings.bridge)
    host_addresses = ipv4_addresses(ipr)
    taken = [net for net, oif in ipv4_routes(ipr) if (oif is None or oif != index) and not net.is_loopback]
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
        index = _create_bridge(ipr, settings.bridge)
    if gateway is None:
        ipr.addr("add", index=index, address=str(plan.gateway.ip), prefixlen=subnet.prefixlen)
    ipr.link("set", index=index, state="up")
    host_lans = [iface.network for i, iface in host_addresses if i != index and not iface.is_loopback]
    return _HostState(index, subnet, host_lans)


def prepare_host(settings: NetworkSettings) -> HostNetwork:
    """Bridge up with the gateway address, IPv4 forwarding on, the nft tables loaded. Idempotent."""
    ns_fd = host_netns_fd(settings)
    netlink: NetlinkThread | None = None
    try:
        netlink = NetlinkThread(ns_fd, name="sandpit-host-netlink")
        # host.lock serialises this instance's processes; net.lock every instance of the host, so two
        # starting at once never both see a candidate subnet free and take it (instance.py)
        with ReapLock(Path(net_lock())), ReapLock(settings.net_dir / "host.lock"):
            state = netlink.call(lambda ipr: _prepare_bridge(ipr, settings))
            plan = AddressPlan(state.subnet)
            gateway = plan.gateway.ip
            forward = not settings.resolvers and have_dnsmasq()
            if forward:  # jobs ask the gateway; the forwarder asks the host's resolvers (forwarder.py)
                resolvers: tuple[str, ...] = (str(gateway),)
                pid_file: str | None = str(pid_file_of(settings.dns_dir, settings.bridge))
            else:
                resolvers = pick_resolvers(settings.resolvers, host_nameservers(settings), FALLBACK_RESOLVERS)
                pid_file = None
            policy = build_policy(table=settings.table, bridge=settings.bridge, subnet=state.subnet,
                                  allow=settings.allow, resolvers=() if forward else resolvers,
                                  host_networks=state.host_lans, uplink=settings.uplink,
                                  veth_prefix=settings.veth_prefix, local_resolver=gateway if forward else None)
            run_in_netns(ns_fd, lambda: write_sysctl("/proc/sys/net/ipv4/ip_forward", "1"))
            run_nft(ns_fd, render_ruleset(policy))
            if pid_file is not None:
                upstream = host_nameservers(settings)
                argv = dnsmasq_argv(listen=str(gateway), pid_file=pid_file,
                                    resolv_file=str(settings.host_resolv_conf) if upstream else None,
                                    servers=FALLBACK_RESOLVERS, user=dnsmasq_user())
                ensure_forwarder(argv, pid_file, str(settings.host_netns) if settings.host_netns else None)
        return HostNetwork(settings, ns_fd, netlink, state.bridge_index, plan, policy, resolvers, pid_file)
    except BaseException:
        if netlink is not None:
            netlink.close()
        if ns_fd is not None:
            os.close(ns_fd)
        raise


def host_nameservers(settings: NetworkSettings) -> tuple[str, ...]:
    """The IPv4 nameservers of the host's resolv.conf (none when it is unreadable)."""
    try:
        return parse_nameservers(settings.host_resolv_conf.read_text())
    except OSError:
        return ()
