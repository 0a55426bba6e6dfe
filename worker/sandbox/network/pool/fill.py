"""Making the pool's entries, and draining them: the pool's side that has pyroute2 loaded.

A whole ``sandpit exec --network egress`` process would otherwise pay for importing pyroute2 and
preparing the host (≈150 ms) before it could make its job's veth. Instead, a process that already has
pyroute2 loaded (a detached refill, ``host-prep``, a worker) makes pool entries ahead of time, exactly
as it makes a job's network (``JobNetwork``: same namespace, veth on an isolated bridge port, address,
route, so the same nft policy covers it), and keeps each one alive with an nsfs bind mount under
``<run dir>/net/pool`` (``layout.py``). A job claims one without netlink (``claim.py``), uses it once,
and drops it: an entry is never reused, so nothing a job did in its namespace (sockets in TIME_WAIT,
neighbour entries, tcp_metrics) can reach another job, and no reset is needed.

Entries belong to no process, so their address leases cannot be held by a live ``flock``: a waiting
entry's lease says ``pool <token>`` and the entry is named ``<slot>.<token>``. Which entries stay is
the reaper's judgement (``reaper.py``): a fill reaps before it makes new entries, and
``drain_pool`` has the reaper remove every entry.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
from pathlib import Path
from typing import Any

from worker.sandbox.mounts import MS_BIND, mount
from worker.sandbox.network.addresses import veth_name
from worker.sandbox.network.errors import HostNetworkError
from worker.sandbox.network.host import HostNetwork, prepare_host
from worker.sandbox.network.job import JobNetwork
from worker.sandbox.network.pool.layout import (
    META,
    REFILL_LOCK,
    REFILL_LOG,
    PoolConfig,
    RefillLock,
    entries,
    make_private_dir,
    open_private_dir,
    pool_lease_text,
    read_meta,
    remove_entry,
)
from worker.sandbox.network.reaper import reap_networks, sibling_pools
from worker.sandbox.network.settings import NetworkSettings

#: a refill never makes more than this many entries per pool slot in one run (claims go on meanwhile)
MAX_BATCH_FACTOR = 2


def settings_for_pool(config: PoolConfig, *, run_dir: Path | None, pool_path: Path, pool_size: int,
                      pool_low_water: int | None = None) -> NetworkSettings:
    """The ``NetworkSettings`` that made the pool at ``pool_path`` for ``config``."""
    return NetworkSettings(
        state_dir=Path(config.state_dir), subnet=ipaddress.IPv4Network(config.subnet) if config.subnet else None,
        bridge=config.bridge, resolvers=config.resolvers, allow=config.allow,
        host_netns=Path(config.host_netns) if config.host_netns else None, uplink=config.uplink,
        veth_prefix=config.veth_prefix, table=config.table, run_dir=run_dir, pool_size=pool_size,
        pool_low_water=pool_low_water, pool_path=pool_path)


def settings_from_request(args: dict[str, Any]) -> NetworkSettings:
    """The ``NetworkSettings`` a detached refill works with, rebuilt from ``PoolRequest.as_args()``."""
    config = PoolConfig.from_stored(args["config"])
    pool_dir = Path(args["pool_dir"])
    if config is None:
        raise HostNetworkError(f"pool request does not describe a sandpit pool: {args!r}")
    settings = settings_for_pool(config, run_dir=pool_dir.parent.parent.parent, pool_path=pool_dir,
                                 pool_size=int(args["size"]), pool_low_water=int(args["low_water"]))
    if (pool_dir.parent.name != "pool" or pool_dir.name != config.key()
            or str(settings.net_dir / "leases") != args["lease_root"]):
        raise HostNetworkError(f"pool request does not describe a sandpit pool: {args!r}")
    return settings


def open_pool_dir(settings: NetworkSettings) -> int:
    """The pool directory's fd, made (0700) if missing; refused if it is a symlink or not private."""
    path = settings.pool_dir
    make_private_dir(str(path))
    try:
        return open_private_dir(str(path))
    except PermissionError as exc:
        raise HostNetworkError(f"refusing the pool directory {path}: {exc.strerror}") from exc


def fill_pool(settings: NetworkSettings, host: HostNetwork | None = None, *, lock_fd: int | None = None,
              config: list[object] | None = None) -> list[str]:
    """Top the pool up to ``settings.pool_size`` ready entries; return a line per thing done.

    One refill at a time: ``lock_fd`` is the refill lock already held (a detached refill), else this
    takes it (waiting for a running refill). Also reaps (``reap_networks``): used entries' leases,
    broken entries, and, when the pool was made for another configuration (``config``, stored form;
    default ``settings.pool_config()``), every old entry. ``host``: a prepared host to use (a
    worker's); otherwise the host is prepared here, which also (re)loads the nft ruleset.
    """
    if settings.pool_size <= 0:
        return []
    config = settings.pool_config() if config is None else config
    os.close(open_pool_dir(settings))
    with contextlib.ExitStack() as stack:
        if lock_fd is None:
            stack.enter_context(RefillLock(settings.pool_dir))
        pool_fd = open_pool_dir(settings)
        stack.callback(os.close, pool_fd)
        if host is None:
            host = prepare_host(settings)
            stack.callback(host.close)
        meta = read_meta(pool_fd)
        stale = meta is not None and (meta.get("config") != config
                                      or meta.get("lease_dir") != host.plan.lease_dir_name)
        done = reap_networks(settings, drain_pool=stale)
        _write_meta(pool_fd, config, host)
        made = 0
        while made < MAX_BATCH_FACTOR * settings.pool_size and len(entries(pool_fd)) < settings.pool_size:
            _make_entry(settings, host, pool_fd)
            made += 1
        done.append(f"pool: made {made} entries")
        return done


def _write_meta(pool_fd: int, config: list[object], host: HostNetwork) -> None:
    meta = {"config": config, "lease_dir": host.plan.lease_dir_name, "resolv_conf": host.resolv_conf.decode(),
            "dns_pid_file": host.dns_pid_file}
    # a name no other writer (another thread of this process included) can have: O_EXCL, random
    while True:
        temp = f".{META}.{os.getpid()}.{os.urandom(6).hex()}"
        try:
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                         dir_fd=pool_fd)
            break
        except FileExistsError:
            continue
    try:
        try:
            os.write(fd, json.dumps(meta).encode())
        finally:
            os.close(fd)
        os.replace(temp, META, src_dir_fd=pool_fd, dst_dir_fd=pool_fd)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp, dir_fd=pool_fd)
        raise


def _make_entry(settings: NetworkSettings, host: HostNetwork, pool_fd: int) -> str:
    """One entry: a job network made as for a job, kept by a bind mount, its lease marked ``pool``.
    The lease stays locked (by this process) until the entry is complete, so no claimer or reaper
    looks at a half-made entry; a refill killed meanwhile leaves a dead-owner lease, which the reaper
    removes with the veth and the entry."""
    token = os.urandom(4).hex()
    net = JobNetwork(settings, f"pool-{token}", "egress", host)
    lease, netns = net.detach()
    name = f"{lease.slot}.{token}"
    try:
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o400,
                     dir_fd=pool_fd)
        os.close(fd)
        # the target goes through the pool dir's fd: a path swapped meanwhile cannot redirect it
        mount(f"/proc/self/fd/{netns.fd}", f"/proc/self/fd/{pool_fd}/{name}", "none", MS_BIND, "")
        lease.rewrite(pool_lease_text(token, str(settings.pool_dir)).decode().strip())
    except BaseException:
        remove_entry(pool_fd, name)
        netns.close()
        host.retire(lease, veth_name(settings.veth_prefix, lease.slot))
        raise
    netns.close()
    lease.unlock()
    return name


def drain_host_pools(settings: NetworkSettings) -> list[str]:
    """Drain every pool hanging on this host network (same host namespace and bridge), whichever
    settings (state dir, resolvers, ...) made it, and remove their directories: ``teardown_host``
    removes the bridge they all use. Each is drained with the settings it was made with, so its own
    leases are freed."""
    ours = settings.pool_made_for()
    removed: list[str] = []
    for path, config in sibling_pools(settings):
        if not config.same_bridge(ours):
            continue  # another host network
        removed += drain_pool(settings_for_pool(config, run_dir=settings.run_dir, pool_path=path, pool_size=1))
    return removed


def drain_pool(settings: NetworkSettings) -> list[str]:
    """Remove every pool entry (waits for a running refill first), then the pool's directory;
    ``sandpit reap --all`` calls it (``teardown_host`` drains too). A refill started afterwards fills
    the pool again."""
    with RefillLock(settings.pool_dir):
        removed = reap_networks(settings, drain_pool=True)
        _remove_empty_pool_dir(settings.pool_dir)
        return removed


def _remove_empty_pool_dir(path: Path) -> None:
    """Remove a drained pool's directory (its meta, lock and log), unless an entry appeared meanwhile."""
    try:
        pool_fd = open_private_dir(str(path))
    except OSError:
        return
    try:
        if entries(pool_fd):
            return
        for name in (META, REFILL_LOCK, REFILL_LOG):
            try:
                os.unlink(name, dir_fd=pool_fd)
            except FileNotFoundError:
                pass
    finally:
        os.close(pool_fd)
    try:
        os.rmdir(path)
    except OSError:
        pass  # something new in it: a claimer started a refill; it is a pool again


def pool_entries(settings: NetworkSettings) -> list[str]:
    """Names of the entries in the pool directory (tests, ``sandpit doctor``)."""
    try:
        pool_fd = open_private_dir(str(settings.pool_dir))
    except FileNotFoundError:
        return []
    try:
        return sorted(name for name, _, _ in entries(pool_fd))
    finally:
        os.close(pool_fd)
