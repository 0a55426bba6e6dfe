"""Network namespaces without processes: made by ``unshare`` in a short-lived thread, held by an fd.

Namespaces are per *thread* on Linux, so a helper thread can ``unshare(CLONE_NEWNET)`` (or ``setns``
into an existing namespace), do its work there (the namespace fd, /proc/sys files, a pyroute2 socket
that configures the namespace) and exit; the process keeps only the namespace fd. No ``ip netns``
bind mounts, no forked helper (pyroute2's ``NetNS``), nothing in the file system to clean up: closing
the last fd frees the namespace (the kernel then destroys its interfaces asynchronously).

This is the lowest layer of the package: system calls and threads only. A namespace made *with* a
pyroute2 socket inside it (``create_netns``, ``begin_netns_here``) is the netlink layer's
(``netlink.py``), which builds on these.
"""

from __future__ import annotations

import ctypes
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from worker.sandbox.network.errors import NetworkError

CLONE_NEWNET = 0x40000000
T = TypeVar("T")

_libc = ctypes.CDLL(None, use_errno=True)


def unshare_net() -> None:
    """Give the calling thread a new, empty network namespace."""
    if _libc.unshare(CLONE_NEWNET) != 0:
        code = ctypes.get_errno()
        raise NetworkError(f"unshare(CLONE_NEWNET) failed: {os.strerror(code)}")


def setns_net(fd: int) -> None:
    """Move the calling thread into the network namespace ``fd``."""
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        code = ctypes.get_errno()
        raise NetworkError(f"setns(CLONE_NEWNET) failed: {os.strerror(code)}")


def in_thread(body: Callable[[], T]) -> T:
    """Run ``body`` in a fresh thread (whose namespace changes die with it) and return its result."""
    result: list[T] = []
    failure: list[BaseException] = []

    def run() -> None:
        try:
            result.append(body())
        except BaseException as exc:
            failure.append(exc)

    thread = threading.Thread(target=run, name="sandpit-netns")
    thread.start()
    thread.join()
    if failure:
        raise failure[0]
    return result[0]


def run_in_netns(ns_fd: int | None, body: Callable[[], T]) -> T:
    """Run ``body`` with the network namespace ``ns_fd`` (None: the caller's own, in this thread).

    Sockets, /proc/sys/net files and child processes made by ``body`` belong to that namespace.
    """
    if ns_fd is None:
        return body()

    def entered() -> T:
        setns_net(ns_fd)
        return body()

    return in_thread(entered)


def write_sysctl(path: str, value: str) -> None:
    """Write a /proc/sys file; for net.* keys the namespace is the calling thread's."""
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


def open_netns(path: str | os.PathLike[str]) -> int:
    return os.open(path, os.O_RDONLY | os.O_CLOEXEC)


def thread_netns_fd() -> int:
    """An fd of the calling thread's own network namespace."""
    return os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)


def disable_ipv6() -> None:
    """Switch IPv6 off in the calling thread's namespace for every interface made or moved in later
    (its ``all``/``default`` sysctls), so no such interface gets an address (no link-local, no DAD)."""
    write_sysctl("/proc/sys/net/ipv6/conf/all/disable_ipv6", "1")
    write_sysctl("/proc/sys/net/ipv6/conf/default/disable_ipv6", "1")


SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1


def loopback_up() -> None:
    """Bring ``lo`` of the calling thread's namespace up (SIOCSIFFLAGS on a socket made here)."""
    import fcntl
    import socket
    import struct

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        request = struct.pack("16sh22x", b"lo", 0)  # struct ifreq: the name, then ifr_flags
        flags = struct.unpack("16sh22x", fcntl.ioctl(sock, SIOCGIFFLAGS, request))[1]
        fcntl.ioctl(sock, SIOCSIFFLAGS, struct.pack("16sh22x", b"lo", flags | IFF_UP))


def create_loopback_netns() -> FreshNetns:
    """A namespace with only ``lo``, up, with 127.0.0.1 and ::1, as the one an OCI runtime makes for
    a ``network: none`` container; made here so that several containers (a job and its services)
    can share it. One ioctl in a short-lived thread: 1.3-6 ms here, nearly all of it the kernel making
    the namespace; no pyroute2, whose import alone costs ≈150 ms, on the path of a ``none`` job."""
    def make() -> FreshNetns:
        unshare_net()
        fd = thread_netns_fd()
        try:
            loopback_up()
        except BaseException:
            os.close(fd)
            raise
        return FreshNetns(fd)

    try:
        return in_thread(make)
    except OSError as exc:
        raise NetworkError(f"cannot bring lo up in a new namespace: {exc}") from exc


@dataclass
class FreshNetns:
    """A new namespace, held by ``fd`` (no socket of this process stays inside it)."""

    fd: int

    @property
    def path(self) -> str:
        """A path another process (an OCI runtime) can open to join the namespace while ``fd`` is open."""
        return f"/proc/{os.getpid()}/fd/{self.fd}"

    def close(self) -> None:
        """Drop this process's reference; the kernel frees the namespace when no one else holds it."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
