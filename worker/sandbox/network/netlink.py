"""Netlink through pyroute2: sockets confined to one thread, errors mapped to ``NetlinkError``.

pyroute2 0.9's ``IPRoute`` keeps its socket and asyncio loop *per thread*: an ``IPRoute`` used from a
thread other than the one that made it silently opens a second socket there, in *that* thread's network
namespace. Sharing one ``IPRoute`` behind a lock would therefore talk to whatever namespace the calling
thread happens to be in (a job thread that has just unshared, or the machine's own). So every
``IPRoute`` here is used only by the thread that created it:

* a job's socket is made, used and closed by the short-lived thread that unshared the job namespace
  (``create_netns``, or ``begin_netns_here`` from the host's thread);
* the host side has one long-lived ``NetlinkThread`` per ``HostNetwork``: a thread that entered the
  host namespace, owns the process's host ``IPRoute`` and runs the calls other threads hand it, one at a
  time (that queue is the lock);
* one-off work (prepare, teardown, reaper) uses ``netlink_session``.

This is the one module of the tree that imports pyroute2 (a test holds it to that): everything else
asks for netlink work through the functions here. No ``NetNS`` (it forks a helper), no ``ip`` exec.
Sockets join no multicast group (``groups=0``), so the kernel never queues link/address events on
them. pyroute2 is imported on first use (≈150 ms), not when this package is imported.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import queue
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

from worker.sandbox.network.errors import NetlinkError, NetworkError
from worker.sandbox.network.namespace import (
    FreshNetns,
    disable_ipv6,
    in_thread,
    run_in_netns,
    setns_net,
    thread_netns_fd,
    unshare_net,
)

T = TypeVar("T")

#: IFLA_AF_SPEC asking for no IPv6 address generation on a link (``addrgenmode none``): no link-local
#: address, so no DAD and no IPv6 traffic from a veth end.
NO_IPV6_ADDRESSES: dict[str, Any] = {
    "attrs": [("AF_INET6", {"attrs": [("IFLA_INET6_ADDR_GEN_MODE", 1)]})],  # IN6_ADDR_GEN_MODE_NONE
}


@contextmanager
def kernel_errors(what: str = "netlink request") -> Iterator[None]:
    """Re-raise pyroute2's ``NetlinkError`` as ours (a ``NetworkError`` and ``OSError`` with errno)."""
    from pyroute2.netlink.exceptions import NetlinkError as Pyroute2NetlinkError

    try:
        yield
    except Pyroute2NetlinkError as exc:
        code = int(exc.code or 0)
        raise NetlinkError(code, f"{what} failed: {os.strerror(code)}") from exc


def open_iproute() -> Any:
    """An ``IPRoute`` in the calling thread's network namespace; use it only from this thread."""
    from pyroute2 import IPRoute

    return IPRoute(groups=0)


def netlink_session(ns_fd: int | None, body: Callable[[Any], T]) -> T:
    """Run ``body(ipr)`` with a fresh ``IPRoute`` in namespace ``ns_fd`` (None: the caller's own)."""
    def session() -> T:
        ipr = open_iproute()
        try:
            with kernel_errors():
                return body(ipr)
        finally:
            ipr.close()

    return run_in_netns(ns_fd, session)


class NetlinkThread:
    """A thread in one network namespace that owns an ``IPRoute`` and runs calls for other threads.

    ``call(fn)`` runs ``fn(ipr)`` there and returns its result (or raises its error), so any thread, in
    any namespace, may use it. Calls are serialised. ``home_fd`` (valid inside calls) is the thread's
    namespace: a call that leaves it (``begin_netns_here``) must come back to it. ``close()``
    is idempotent.
    """

    home_fd: int

    def __init__(self, ns_fd: int | None, name: str = "sandpit-netlink") -> None:
        self._requests: queue.SimpleQueue[tuple[Callable[[Any], Any], Future[Any]] | None] = queue.SimpleQueue()
        ready: Future[None] = Future()
        self._thread = threading.Thread(target=self._serve, args=(ns_fd, ready), name=name, daemon=True)
        self._closed = False
        self._pid = os.getpid()
        self._ipr: Any = None
        self._thread.start()
        try:
            ready.result()
        except BaseException:
            self._thread.join()
            self._closed = True
            raise

    def _serve(self, ns_fd: int | None, ready: Future[None]) -> None:
        try:
            if ns_fd is not None:
                setns_net(ns_fd)
            self.home_fd = thread_netns_fd()
        except BaseException as exc:
            ready.set_exception(exc)
            return
        try:
            ipr = open_iproute()
        except BaseException as exc:
            os.close(self.home_fd)
            ready.set_exception(exc)
            return
        self._ipr = ipr
        ready.set_result(None)
        try:
            while (item := self._requests.get()) is not None:
                fn, future = item
                try:
                    with kernel_errors():
                        result = fn(ipr)
                except BaseException as exc:
                    future.set_exception(exc)
                else:
                    future.set_result(result)
        finally:
            ipr.close()
            os.close(self.home_fd)

    def submit(self, fn: Callable[[Any], T]) -> Future[T]:
        """Queue ``fn(ipr)`` (calls run in order); the future holds its result or error."""
        if self._closed:
            raise NetlinkError(errno.EBADF, "the host netlink thread is closed")
        if os.getpid() != self._pid:
            # the thread did not survive a fork: prepare the host again in this process
            raise NetworkError("this HostNetwork was prepared in a parent process; call prepare_host here")
        future: Future[T] = Future()
        if threading.current_thread() is self._thread:  # a call from a call: run it now, not after us
            try:
                with kernel_errors():
                    future.set_result(fn(self._ipr))
            except BaseException as exc:
                future.set_exception(exc)
            return future
        self._requests.put((fn, future))
        return future

    def call(self, fn: Callable[[Any], T]) -> T:
        """Run ``fn(ipr)`` in this thread and return its result (or raise its error)."""
        return self.submit(fn).result()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._requests.put(None)
            self._thread.join()


# ---- new namespaces with a socket inside ---------------------------------------------------------


@dataclass
class NetnsInTheMaking:
    """A new namespace (``fd``) and a pyroute2 ``IPRoute`` inside it (``ipr``), which only the thread
    that made it may use; ``finish`` or ``abandon`` it from that thread."""

    fd: int
    ipr: Any

    def finish(self, inside: Callable[[Any, int], None] | None = None) -> FreshNetns:
        """Run ``inside(ipr, fd)``, close the socket; on failure drop the namespace and raise."""
        try:
            if inside is not None:
                with kernel_errors():
                    inside(self.ipr, self.fd)
        except BaseException:
            os.close(self.fd)
            raise
        finally:
            self.ipr.close()
        return FreshNetns(self.fd)

    def abandon(self) -> None:
        self.ipr.close()
        os.close(self.fd)


def create_netns(*, ipv6: bool = False, loopback_up: bool = True,
                 inside: Callable[[Any, int], None] | None = None) -> FreshNetns:
    """Make a namespace with only loopback (up), IPv6 off unless asked, in a short-lived thread; ≈1 ms.
    ``inside(ipr, fd)`` runs there with a socket in the namespace (see ``NetnsInTheMaking.finish``)."""
    return in_thread(lambda: begin_netns_here(ipv6=ipv6, loopback_up=loopback_up).finish(inside))


def begin_netns_here(*, ipv6: bool = False, loopback_up: bool = True,
                     home_fd: int | None = None) -> NetnsInTheMaking:
    """Make a namespace from the calling thread: ``unshare``, IPv6 off, a pyroute2 ``IPRoute`` opened
    inside it, lo up.

    IPv6 is switched off through the namespace's ``all``/``default`` sysctls before any interface is
    moved in, so no interface of a job ever gets an IPv6 address (no link-local, no DAD).

    With ``home_fd`` the thread goes back to that namespace as soon as the socket is open (a socket
    stays in the namespace it was made in), so a long-lived thread can make many namespaces (the host's
    ``NetlinkThread`` does); without it the thread stays in the new namespace, which is only right for a
    thread about to exit.
    """
    unshare_net()
    try:
        fd = thread_netns_fd()
        try:
            if not ipv6:
                disable_ipv6()
            ipr = open_iproute()
        except BaseException:
            os.close(fd)
            raise
    finally:
        if home_fd is not None:
            setns_net(home_fd)
    try:
        if loopback_up:
            with kernel_errors("bringing lo up"):
                ipr.link("set", index=1, state="up")
    except BaseException:
        ipr.close()
        os.close(fd)
        raise
    return NetnsInTheMaking(fd, ipr)


# ---- the few operations sandpit needs, on an IPRoute of the calling thread -------------------------


@dataclass(frozen=True)
class Link:
    index: int
    name: str
    master: int | None
    kind: str | None


def links(ipr: Any) -> list[Link]:
    return [Link(msg["index"], msg.get("ifname"), msg.get("master") or None, msg.get(("linkinfo", "kind")))
            for msg in ipr.link("dump")]


def link_index(ipr: Any, ifname: str) -> int | None:
    """The index of ``ifname``, or None when no such link exists (one GETLINK by name)."""
    from pyroute2.netlink.exceptions import NetlinkError as Pyroute2NetlinkError

    try:
        found = ipr.link("get", ifname=ifname)
    except Pyroute2NetlinkError as exc:
        if exc.code == errno.ENODEV:
            return None
        raise
    return int(found[0]["index"])


def delete_link(ipr: Any, ifname: str | None = None, index: int = 0) -> bool:
    """Delete a link by name or index; False when it did not exist."""
    from pyroute2.netlink.exceptions import NetlinkError as Pyroute2NetlinkError

    try:
        if ifname is not None:
            ipr.link("del", ifname=ifname)
        else:
            ipr.link("del", index=index)
    except Pyroute2NetlinkError as exc:
        if exc.code in (errno.ENODEV, errno.EINVAL):  # EINVAL: a by-name link missing, older kernels
            return False
        raise
    return True


def ipv4_addresses(ipr: Any) -> list[tuple[int, ipaddress.IPv4Interface]]:
    """(link index, address with prefix) of every IPv4 address."""
    found = []
    for msg in ipr.addr("dump", family=2):  # AF_INET
        local = msg.get("local") or msg.get("address")
        if local:
            found.append((int(msg["index"]), ipaddress.IPv4Interface(f"{local}/{msg['prefixlen']}")))
    return found


def ipv4_routes(ipr: Any) -> list[tuple[ipaddress.IPv4Network, int | None]]:
    """(destination, output link index) of every IPv4 route in every table."""
    found = []
    for msg in ipr.route("dump", family=2):  # AF_INET; a route dump covers every table
        if msg["family"] != 2:
            continue
        dst = msg.get("dst") or "0.0.0.0"  # noqa: S104 - a route's destination, not a bind
        found.append((ipaddress.IPv4Network(f"{dst}/{msg['dst_len']}", strict=False), msg.get("oif")))
    return found


def bridge_port_of(ipr: Any, ifname: str) -> int | None:
    """The index of the bridge ``ifname`` is a port of; None when the link does not exist or is no
    port (one GETLINK, fresh: a refill may have made the link a moment ago)."""
    from pyroute2.netlink.exceptions import NetlinkError as Pyroute2NetlinkError

    try:
        found = ipr.link("get", ifname=ifname)
    except Pyroute2NetlinkError as exc:
        if exc.code in (errno.ENODEV, errno.EINVAL):
            return None
        raise
    return (found[0].get("master") or None) if found else None
