"""Taking a ready egress namespace from the pool: no netlink, no pyroute2, only cheap stdlib.

This is the hot path of ``sandpit exec --network egress``: it must stay import-light (os, fcntl, json
and the pool's ``layout``; never pyroute2, dataclasses, pathlib, typing, ipaddress, subprocess; a test
holds it to that). The pool is made by ``fill.py`` in a process that has pyroute2 loaded; see
docs/network.md, "The pool of ready namespaces", and ``layout.py`` for the files.

An entry's address lease says ``pool <token> <pool dir>`` while the entry waits. Claiming it, under
that lease's ``flock`` (so one claimer only):

1. lock the lease (non-blocking; busy → another claimer, a refill or the reaper: try the next one);
2. it must still say ``pool <token> <pool dir>`` (anything else: the entry was used or is broken: skip it);
3. open the entry (``O_NOFOLLOW``, relative to the pool dir's fd) and check it is a network
   namespace, and neither this process's own nor the configured host namespace;
4. rewrite the lease to ``<pid> <job id>``: from here on no one else will ever take it (single use);
5. detach and remove the bind mount; the job holds the namespace by its fd alone.

Closing the fd at teardown lets the kernel free the namespace and its veth; the lease is left
unlocked with the job's name, and is removed (with the veth, if still there) by the next refill or
reaper, like the lease of a dead worker. A namespace is never given to a second job.
"""

from __future__ import annotations

import os

from pipelines.files.locks import lock_fd
from worker import TYPE_CHECKING
from worker.sandbox.instance import instance_names
from worker.sandbox.network.pool.layout import (
    DIR_FLAGS,
    PoolConfig,
    PoolRequest,
    is_netns,
    open_private_dir,
    parse_entry,
    pool_lease_text,
    read_meta,
    remove_entry,
)

if TYPE_CHECKING:
    from worker.settings import Settings


def pool_request(settings: Settings) -> PoolRequest | None:
    """The pool a process with ``settings`` claims from, None when it is off: the same pool
    ``settings.network().pool_request()`` names, without importing the network layer's settings."""
    if settings.net_pool <= 0:
        return None
    state_dir = os.fspath(settings.state_dir)
    names = instance_names(settings.instance_id)  # the names Settings.network() gives too
    config = PoolConfig.made(state_dir=state_dir, subnet=settings.subnet, bridge=names.bridge,
                             resolvers=settings.resolvers, allow=settings.net_allow,
                             host_netns=os.fspath(settings.net_host_netns) if settings.net_host_netns else None,
                             uplink=None, veth_prefix=names.veth_prefix, table=names.table)
    return PoolRequest(os.path.join(os.fspath(settings.run_dir), "net", "pool", config.key()),
                       os.path.join(state_dir, "net", "leases"), config.stored(), settings.net_pool)


class PooledNetwork:
    """A claimed pool namespace, held by ``netns_fd`` until ``close()`` (idempotent); the job-facing
    face of ``JobNetwork`` (``netns_path``, ``resolv_conf``)."""

    __slots__ = ("_lease_fd", "netns_fd", "remaining", "resolv_conf", "slot")

    def __init__(self, netns_fd: int, lease_fd: int, resolv_conf: bytes, slot: int, remaining: int) -> None:
        self.netns_fd = netns_fd
        self._lease_fd = lease_fd
        self.resolv_conf = resolv_conf
        self.slot = slot
        self.remaining = remaining

    @property
    def netns_path(self) -> str:
        return f"/proc/{os.getpid()}/fd/{self.netns_fd}"

    @property
    def closed(self) -> bool:
        return self.netns_fd < 0

    def close(self) -> None:
        """Drop the namespace (the kernel frees it and the veth) and unlock the lease, which keeps the
        job's name: the next refill or reaper removes it once it may (see the module docstring)."""
        if self.netns_fd >= 0:
            os.close(self.netns_fd)
            self.netns_fd = -1
        if self._lease_fd >= 0:
            os.close(self._lease_fd)
            self._lease_fd = -1


def claim(request: PoolRequest, job_id: str) -> PooledNetwork | None:
    """Take one ready namespace for ``job_id``, or None (no pool, empty, made for another
    configuration). Never blocks on another process and never uses netlink."""
    try:
        pool_fd = open_private_dir(request.pool_dir)
    except OSError:
        return None
    try:
        meta = read_meta(pool_fd)
        if meta is None or meta.get("config") != request.config:
            return None
        lease_dir = str(meta.get("lease_dir", ""))
        if not lease_dir or not all(c in "0123456789._" for c in lease_dir):
            return None
        resolv_conf = str(meta.get("resolv_conf", "")).encode()
        try:
            lease_fd = os.open(os.path.join(request.lease_root, lease_dir), DIR_FLAGS)
        except OSError:
            return None
        try:
            entries = [(name, parsed) for name in os.listdir(pool_fd) if (parsed := parse_entry(name))]
            if not entries:
                return None
            first = int.from_bytes(os.urandom(2), "little") % len(entries)  # spread concurrent claimers
            made_for = request.made_for
            host_netns = made_for.host_netns if made_for is not None else None
            for name, (slot, token) in entries[first:] + entries[:first]:
                fds = _claim_entry(request.pool_dir, pool_fd, lease_fd, name, slot, token, job_id, host_netns)
                if fds is not None:
                    pooled = PooledNetwork(fds[0], fds[1], resolv_conf, slot, len(entries) - 1)
                    try:
                        _check_dns(meta.get("dns_pid_file"), made_for)
                    except BaseException:
                        pooled.close()
                        raise
                    return pooled
            return None
        finally:
            os.close(lease_fd)
    finally:
        os.close(pool_fd)


def _check_dns(pid_file: object, made_for: PoolConfig | None) -> None:
    """Restart the jobs' DNS forwarder on the gateway (``forwarder.py``) if it died: the pool's
    namespaces name it in their resolv.conf. Alive: a pid file and a /proc read, no import. (A request
    that stands for no configuration names no host lock to restart it under: it is left as it is.)"""
    if not isinstance(pid_file, str) or not pid_file or made_for is None:
        return
    try:
        with open(pid_file, "rb") as f:
            pid = int(f.read(32).strip() or b"0")
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            if f"--pid-file={pid_file}".encode() in f.read().split(b"\0"):
                return
    except (OSError, ValueError):
        pass
    from pathlib import Path  # only on the rare restart: pathlib is not on the claim's import path

    from worker.sandbox.network.forwarder import revive_forwarder

    revive_forwarder(pid_file, Path(made_for.state_dir) / "net" / "host.lock")


def _host_namespaces(host_netns: str | None) -> set[int]:
    """Inodes of the namespaces a job must never be given: this process's and the configured host's."""
    found = {os.stat("/proc/self/ns/net").st_ino}
    if host_netns is not None:
        try:
            found.add(os.stat(host_netns).st_ino)
        except OSError:
            pass
    return found


def _claim_entry(pool_dir: str, pool_fd: int, lease_dir_fd: int, name: str, slot: int, token: str,
                 job_id: str, host_netns: str | None) -> tuple[int, int] | None:
    try:
        lease = os.open(str(slot), os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=lease_dir_fd)
    except OSError:
        return None
    netns = -1
    try:
        if not lock_fd(lease, blocking=False):
            return None
        if os.fstat(lease).st_nlink == 0 or os.pread(lease, 4096, 0) != pool_lease_text(token, pool_dir):
            return None  # reaped meanwhile, or already used: never twice
        try:
            netns = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=pool_fd)
        except OSError:
            return None
        if not is_netns(netns) or os.fstat(netns).st_ino in _host_namespaces(host_netns):
            return None
        os.ftruncate(lease, 0)
        os.pwrite(lease, f"{os.getpid()} {job_id}\n".encode(), 0)
        remove_entry(pool_fd, name)
        claimed = (netns, lease)
        netns = lease = -1
        return claimed
    finally:
        if netns >= 0:
            os.close(netns)
        if lease >= 0:
            os.close(lease)
