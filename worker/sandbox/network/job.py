"""One job's network namespace: ``none`` (loopback only) or ``egress`` (veth to the sandpit bridge).

Setup, egress (all netlink work in the host's ``NetlinkThread``, see ``netlink``): that thread
``unshare``s a namespace (IPv6 off), opens a pyroute2 socket inside it, returns to the host namespace
and brings lo up, while the calling thread leases an address → the same thread creates the veth pair
with its job end (``eth0``, ifindex 2) directly inside the job namespace and its host end up and
enslaved to the bridge, then makes the host end an isolated port without IPv6 → through the job
socket, ``eth0`` up, its address, the default route → the job socket is closed.

Teardown is closing the namespace fd (≈0.01 ms): the kernel frees the namespace and the veth pair
asynchronously. Until it has, the address lease stays held (``HostNetwork.retire``) so the address and
the veth name cannot be reused early; ``HostNetwork.wait_for_room`` bounds that backlog.
"""

from __future__ import annotations

import errno
import ipaddress
from concurrent.futures import Future
from typing import Any, Literal

from worker.sandbox.network.addresses import veth_name
from worker.sandbox.network.errors import NetlinkError, NetworkError
from worker.sandbox.network.host import HostNetwork, prepare_host
from worker.sandbox.network.leases import Lease
from worker.sandbox.network.namespace import FreshNetns
from worker.sandbox.network.netlink import (
    NO_IPV6_ADDRESSES,
    NetnsInTheMaking,
    begin_netns_here,
    create_netns,
    delete_link,
    kernel_errors,
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
        host.check_dns()
        # The host's netlink thread makes the namespace (and its socket) while this thread leases the
        # address; then the same thread adds the veth and configures the job side. Its calls run in order.
        making = host.netlink.submit(lambda _: begin_netns_here(home_fd=host.netlink.home_fd))
        try:
            lease = host.leases.acquire(self.job_id, start=host.random.randrange(host.plan.slots))
        except BaseException:
            host.netlink.call(lambda _: _abandon(making))
            raise
        veth = veth_name(self.settings.veth_prefix, lease.slot)
        address = host.plan.address(lease.slot)
        gateway = host.plan.gateway.ip
        bridge_index = host.bridge_index

        def finish(host_ipr: Any) -> FreshNetns:
            def inside(job_ipr: Any, job_ns_fd: int) -> None:
                _create_veth(host_ipr, veth, bridge_index, job_ns_fd)
                _configure_job_side(job_ipr, address, gateway)

            return making.result().finish(inside)

        made = host.netlink.submit(finish)
        try:
            netns = made.result()
        except BaseException:
            # Interrupted while waiting (KeyboardInterrupt): drop the namespace once it is made.
            made.add_done_callback(_close_if_made)
            # The namespace is gone, so is any pair made for it (the kernel is freeing it): keep the
            # lease until the host end has vanished too.
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

    def detach(self) -> tuple[Lease, FreshNetns]:
        """Hand the namespace and its lease over to the caller (the pool keeps them past this process);
        ``close()`` then does nothing."""
        if self._lease is None or self.closed:
            raise NetworkError("only an open egress network can be detached")
        lease, netns = self._lease, self._netns
        self._lease = None
        self._netns = FreshNetns(-1)
        if self._owns_host and self._host is not None:
            self._host.close()
            self._owns_host = False
        return lease, netns

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


def _abandon(making: Future[NetnsInTheMaking]) -> None:
    if making.exception() is None:
        making.result().abandon()


def _close_if_made(made: Future[FreshNetns]) -> None:
    if not made.cancelled() and made.exception() is None:
        made.result().close()


def _create_veth(ipr: Any, veth: str, bridge_index: int, job_ns_fd: int) -> None:
    """In the host namespace: the pair, its job end made inside the job namespace as eth0 (index 2, lo
    being 1), its host end up and enslaved to the bridge; then the host end made an isolated port
    without IPv6 (before the job end comes up, so no link-local address and no DAD ever start)."""
    def create() -> None:
        ipr.link("add", ifname=veth, kind="veth", state="up", master=bridge_index,
                 peer={"ifname": JOB_IFNAME, "net_ns_fd": job_ns_fd})

    try:
        with kernel_errors("creating the veth pair"):
            create()
    except NetlinkError as exc:
        if exc.errno != errno.EEXIST:
            raise
        # A pair left by a dead worker whose namespace outlived it; we hold the lease now.
        delete_link(ipr, veth)
        create()
    ipr.brport("set", ifname=veth, isolated=1, af_spec=NO_IPV6_ADDRESSES)


def _configure_job_side(ipr: Any, address: ipaddress.IPv4Interface, gateway: ipaddress.IPv4Address) -> None:
    """In the job namespace: eth0 up, its address, the default route via the bridge."""
    ipr.link("set", index=JOB_IFINDEX, state="up")
    ipr.addr("add", index=JOB_IFINDEX, address=str(address.ip), prefixlen=address.network.prefixlen)
    ipr.route("add", gateway=str(gateway), oif=JOB_IFINDEX)  # no dst: the default route
