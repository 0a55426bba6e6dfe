"""One job's network namespace: ``none`` (loopback only) or ``egress`` (veth to the sandpit bridge).

Setup, egress (≈2 ms): lease an address → ``unshare`` a namespace in a thread (IPv6 off, lo up) → one
netlink request in the host namespace creates the veth pair with its job end (``eth0``, ifindex 2)
created directly inside the job namespace and its host end enslaved to the bridge, isolated, without
IPv6 → one request in the job namespace brings ``eth0`` up with its address and default route.

Teardown is closing two fds (≈0.02 ms): the kernel frees the namespace and the veth pair
asynchronously. Until it has, the address lease stays held (``HostNetwork.retire``) so the address and
the veth name cannot be reused early; ``HostNetwork.wait_for_room`` bounds that backlog.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
from typing import Literal

from worker.sandbox.network.addresses import veth_name
from worker.sandbox.network.errors import NetlinkError, NetworkError
from worker.sandbox.network.host import HostNetwork, delete_link, no_ipv6_addresses, prepare_host
from worker.sandbox.network.leases import Lease
from worker.sandbox.network.namespace import FreshNetns, create_netns
from worker.sandbox.network.rtnl import (
    IFA_ADDRESS,
    IFA_LOCAL,
    IFF_UP,
    IFLA_BRPORT_ISOLATED,
    IFLA_IFNAME,
    IFLA_INFO_DATA,
    IFLA_INFO_KIND,
    IFLA_INFO_SLAVE_DATA,
    IFLA_LINKINFO,
    IFLA_MASTER,
    IFLA_NET_NS_FD,
    NLM_F_CREATE,
    NLM_F_EXCL,
    RTA_GATEWAY,
    RTA_OIF,
    RTM_NEWADDR,
    RTM_NEWLINK,
    RTM_NEWROUTE,
    VETH_INFO_PEER,
    attr,
    ifaddrmsg,
    ifinfomsg,
    name,
    nested,
    rtmsg,
    u8,
    u32,
)
from worker.sandbox.network.settings import NetworkSettings

NetworkMode = Literal["none", "egress"]
JOB_IFINDEX = 2  # lo is 1 in a fresh namespace; the job's eth0 is created with index 2
JOB_IFNAME = "eth0"


class JobNetwork:
    """The network namespace of one job; a context manager, ``close()`` idempotent.

    ``netns_path`` (``/proc/<pid>/fd/<n>`` of this process) stays valid until ``close()``; an OCI
    runtime joins it as the container's network namespace. ``resolv_conf`` and ``address`` are None
    for ``none``.
    """

    def __init__(self, settings: NetworkSettings, job_id: str, mode: NetworkMode,
                 host: HostNetwork | None = None) -> None:
        if mode not in ("none", "egress"):
            raise NetworkError(f"unknown network mode {mode!r}; use 'none' or 'egress'")
        self.settings = settings
        self.job_id = job_id
        self.mode: NetworkMode = mode
        self.address: ipaddress.IPv4Interface | None = None
        self.resolv_conf: bytes | None = None
        self.veth: str | None = None
        self._lease: Lease | None = None
        self._owns_host = False
        self._host: HostNetwork | None = None
        if mode == "none":
            self._netns = create_netns()
            return
        if host is None:
            host = prepare_host(settings)
            self._owns_host = True
        self._host = host
        try:
            self._netns = self._open_egress(host)
        except BaseException:
            if self._owns_host:
                host.close()
            raise

    def _open_egress(self, host: HostNetwork) -> FreshNetns:
        host.wait_for_room()
        lease = host.leases.acquire(self.job_id, start=host.random.randrange(host.plan.slots))
        veth = veth_name(self.settings.veth_prefix, lease.slot)
        try:
            netns = create_netns()
        except BaseException:
            lease.release()
            raise
        try:
            try:
                _create_veth(host, veth, netns.fd)
            except NetlinkError as exc:
                if exc.errno != errno.EEXIST:
                    raise
                # A pair left by a dead worker whose namespace outlived it; we hold the lease now.
                delete_link(host.rtnl, veth)
                _create_veth(host, veth, netns.fd)
            address = host.plan.address(lease.slot)
            _configure_job_side(netns, address, host.plan.gateway.ip)
        except BaseException:
            netns.close()
            host.retire(lease, veth)
            raise
        self._lease, self.veth, self.address = lease, veth, address
        self.resolv_conf = host.resolv_conf
        return netns

    @property
    def netns_path(self) -> str:
        return self._netns.path

    @property
    def netns_fd(self) -> int:
        return self._netns.fd

    @property
    def closed(self) -> bool:
        return self._netns.fd < 0

    def __enter__(self) -> JobNetwork:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the namespace fds; the kernel frees the rest. Idempotent."""
        if self.closed:
            return
        self._netns.close()
        if self._host is not None and self._lease is not None and self.veth is not None:
            self._host.retire(self._lease, self.veth)
            self._lease = None
        if self._owns_host and self._host is not None:
            self._host.close()
            self._owns_host = False


def _create_veth(host: HostNetwork, veth: str, job_ns_fd: int) -> None:
    """One request: the pair, its job end made inside the job namespace as eth0 (index 2), its host end
    up, enslaved to the bridge; then the host end made an isolated port without IPv6 (before the job
    end comes up, so no link-local address and no DAD ever start)."""
    peer = ifinfomsg(index=JOB_IFINDEX) + name(IFLA_IFNAME, JOB_IFNAME) + u32(IFLA_NET_NS_FD, job_ns_fd)
    create = (ifinfomsg(flags=IFF_UP, change=IFF_UP) + name(IFLA_IFNAME, veth)
              + u32(IFLA_MASTER, host.bridge_index)
              + nested(IFLA_LINKINFO, name(IFLA_INFO_KIND, "veth"),
                       nested(IFLA_INFO_DATA, nested(VETH_INFO_PEER, peer))))
    isolate = (ifinfomsg() + name(IFLA_IFNAME, veth) + no_ipv6_addresses()
               + nested(IFLA_LINKINFO, nested(IFLA_INFO_SLAVE_DATA, u8(IFLA_BRPORT_ISOLATED, 1))))
    host.rtnl.request((RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL, create), (RTM_NEWLINK, 0, isolate))


def _configure_job_side(netns: FreshNetns, address: ipaddress.IPv4Interface,
                        gateway: ipaddress.IPv4Address) -> None:
    ip = address.ip.packed
    netns.rtnl.request(
        (RTM_NEWLINK, 0, ifinfomsg(index=JOB_IFINDEX, flags=IFF_UP, change=IFF_UP)),
        (RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL,
         ifaddrmsg(JOB_IFINDEX, address.network.prefixlen) + attr(IFA_LOCAL, ip) + attr(IFA_ADDRESS, ip)),
        (RTM_NEWROUTE, NLM_F_CREATE | NLM_F_EXCL,
         rtmsg() + attr(RTA_GATEWAY, socket.inet_aton(str(gateway))) + u32(RTA_OIF, JOB_IFINDEX)),
    )
