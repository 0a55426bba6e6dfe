"""The pyroute2 plumbing: thread confinement of the host socket, error mapping (no root needed; the
only kernel requests are read-only lookups of a link name that does not exist)."""

from __future__ import annotations

import errno
import os
import threading
from collections.abc import Iterator

import pytest
from pyroute2.netlink.exceptions import NetlinkError as Pyroute2NetlinkError

from worker.sandbox.network.errors import NetlinkError, NetworkError
from worker.sandbox.network.netlink import NetlinkThread, kernel_errors, link_index

MISSING = "spnotthere0"


def test_kernel_errors_become_ours_with_errno() -> None:
    with pytest.raises(NetlinkError) as caught, kernel_errors("making a thing"):
        raise Pyroute2NetlinkError(errno.EEXIST, "File exists")
    assert caught.value.errno == errno.EEXIST
    assert isinstance(caught.value, OSError) and isinstance(caught.value, NetworkError)
    assert "making a thing failed" in str(caught.value)


@pytest.fixture
def netlink() -> Iterator[NetlinkThread]:
    thread = NetlinkThread(None, name="test-netlink")
    yield thread
    thread.close()


def test_calls_run_in_the_netlink_thread_whoever_calls(netlink: NetlinkThread) -> None:
    """pyroute2 sockets are per thread: every call must run where the socket was made."""
    names: list[str] = []
    def ask() -> None:
        names.append(netlink.call(lambda _: threading.current_thread().name))

    workers = [threading.Thread(target=ask) for _ in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert names == ["test-netlink"] * 4
    assert netlink.call(lambda ipr: link_index(ipr, MISSING)) is None


def test_errors_of_calls_reach_the_caller_as_ours(netlink: NetlinkThread) -> None:
    with pytest.raises(NetlinkError) as caught:
        netlink.call(lambda ipr: ipr.link("get", ifname=MISSING))
    assert caught.value.errno == errno.ENODEV
    with pytest.raises(ZeroDivisionError):
        netlink.call(lambda _: 1 // 0)
    assert netlink.call(lambda _: 42) == 42  # still serving


def test_a_call_from_a_call_runs_inline(netlink: NetlinkThread) -> None:
    assert netlink.call(lambda _: netlink.call(lambda _: "inner")) == "inner"


def test_closed_or_forked_thread_refuses_calls(netlink: NetlinkThread) -> None:
    netlink._pid = -1  # as seen from a child forked after the thread was started
    with pytest.raises(NetworkError, match="parent process"):
        netlink.call(lambda _: None)
    netlink._pid = os.getpid()
    netlink.close()
    netlink.close()
    with pytest.raises(NetlinkError):
        netlink.call(lambda _: None)
