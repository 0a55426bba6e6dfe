"""The pool of ready egress namespaces: making entries (the refill), judging them (the reaper), draining.

A whole ``sandpit exec --network egress`` process would otherwise pay for importing pyroute2 and
preparing the host (≈150 ms) before it could make its job's veth. Instead, a process that already has
pyroute2 loaded (a detached refill, ``host-prep``, a worker) makes pool entries ahead of time, exactly
as it makes a job's network (``JobNetwork``: same namespace, veth on an isolated bridge port, address,
route, so the same nft policy covers it), and keeps each one alive with an nsfs bind mount under
``<run dir>/net/pool``. A job claims one without netlink (``pool_client.claim``), uses it once, and
drops it: an entry is never reused, so nothing a job did in its namespace (sockets in TIME_WAIT,
neighbour entries, tcp_metrics) can reach another job, and no reset is needed.

Entries belong to no process, so their address leases cannot be held by a live ``flock``: a waiting
entry's lease says ``pool <token>`` and the entry is named ``<slot>.<token>``. The reaper keeps such a
lease only while its entry is a mounted network namespace whose veth is still a port of the bridge;
everything else (used entries, a refill killed mid-entry, entries whose veth ``teardown_host``
removed, entries of a pool that was switched off) is removed. ``drain_pool`` removes every entry.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import json
import os
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from worker.sandbox.mounts import MS_BIND, mount
from worker.sandbox.network.addresses import veth_name
from worker.sandbox.network.errors import HostNetworkError
from worker.sandbox.network.host import HostNetwork, RefillLock, prepare_host
from worker.sandbox.network.job import JobNetwork
from worker.sandbox.network.pool_client import (
    META,
    REFILL_LOCK,
    REFILL_LOG,
    is_netns,
    make_private_dir,
    open_private_dir,
    parse_entry,
    pool_key,
    pool_lease_text,
    read_meta,
    remove_entry,
)
from worker.sandbox.network.settings import NetworkSettings

#: a refill never makes more than this many entries per pool slot in one run (claims go on meanwhile)
MAX_BATCH_FACTOR = 2
#: a pool of another configuration of the same host network that nobody claimed from or refilled for
#: this long (its directory's mtime) was left behind by changed settings: any reaper drains it
ABANDONED_POOL_S = 3600.0


def settings_from_request(args: dict[str, Any]) -> NetworkSettings:
    """The ``NetworkSettings`` a detached refill works with, rebuilt from ``PoolRequest.as_args()``."""
    (state_dir, subnet, bridge, resolvers, allow, host_netns, uplink, veth_prefix, table) = args["config"]
    pool_dir = Path(args["pool_dir"])
    settings = NetworkSettings(
        state_dir=Path(state_dir), subnet=ipaddress.IPv4Network(subnet) if subnet else None, bridge=bridge,
        resolvers=tuple(resolvers), allow=tuple(allow), host_netns=Path(host_netns) if host_netns else None,
        uplink=uplink, veth_prefix=veth_prefix, table=table, run_dir=pool_dir.parent.parent.parent,
        pool_size=int(args["size"]), pool_low_water=int(args["low_water"]), pool_path=pool_dir)
    if (pool_dir.parent.name != "pool" or pool_dir.name != pool_key(args["config"])
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


def entries(pool_fd: int) -> list[tuple[str, int, str]]:
    """(name, slot, token) of every entry in the pool directory."""
    return [(name, *parsed) for name in os.listdir(pool_fd) if (parsed := parse_entry(name)) is not None]


def fill_pool(settings: NetworkSettings, host: HostNetwork | None = None, *, lock_fd: int | None = None,
              config: list[object] | None = None) -> list[str]:
    """Top the pool up to ``settings.pool_size`` ready entries; return a line per thing done.

    One refill at a time: ``lock_fd`` is the refill lock already held (a detached refill), else this
    takes it (waiting for a running refill). Also reaps (``reap_networks``): used entries' leases,
    broken entries, and, when the pool was made for another configuration (``config``; default
    ``settings.pool_config()``), every old entry. ``host``: a prepared host to use (a worker's);
    otherwise the host is prepared here, which also (re)loads the nft ruleset.
    """
    from worker.sandbox.network.reaper import reap_networks

    if settings.pool_size <= 0:
        return []
    config = settings.pool_config() if config is None else config
    os.close(open_pool_dir(settings))
    with contextlib.ExitStack() as stack:
        if lock_fd is None:
            stack.enter_context(RefillLock(settings))
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


def judge_entries(settings: NetworkSettings, ipr: Any, *, drain: bool) -> tuple[set[int], list[str]]:
    """The reaper's pass over the pool (call under ``reap.lock``, with a host-namespace ``IPRoute``):
    keep an entry only if its lease says ``pool <its token> <this pool>``, it is a mounted network
    namespace and its veth is still a port of the bridge (and the pool is not being drained). Remove every
    other entry; a removed entry's ``pool`` lease goes with its veth. Entries whose lease is locked
    (being made, being claimed) are left alone. Returns (slots kept, lines of what was removed)."""
    from worker.sandbox.network.leases import unlink_if_same
    from worker.sandbox.network.netlink import delete_link, link_index

    try:
        pool_fd = open_private_dir(str(settings.pool_dir))
    except FileNotFoundError:
        return set(), []
    except PermissionError as exc:
        raise HostNetworkError(f"refusing the pool directory {settings.pool_dir}: {exc.strerror}") from exc
    kept: set[int] = set()
    removed: list[str] = []
    try:
        meta = read_meta(pool_fd)
        lease_dir = str(meta.get("lease_dir", "")) if meta else ""
        lease_root = settings.net_dir / "leases"
        bridge = link_index(ipr, settings.bridge) if not drain else None
        for name, slot, token in entries(pool_fd):
            lease_path = lease_root / lease_dir / str(slot) if lease_dir else None
            try:
                lease = os.open(lease_path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC) if lease_path else -1
            except FileNotFoundError:
                lease = -1
            try:
                if lease >= 0:
                    try:
                        fcntl.flock(lease, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    except BlockingIOError:
                        kept.add(slot)  # being made or claimed right now
                        continue
                ours = lease >= 0 and os.pread(lease, 4096, 0) == pool_lease_text(token, str(settings.pool_dir))
                veth = veth_name(settings.veth_prefix, slot)
                if ours and not drain and _entry_alive(pool_fd, name) and _port_of(ipr, veth, bridge):
                    kept.add(slot)
                    continue
                if remove_entry(pool_fd, name):
                    removed.append(f"pool entry {name}")
                if ours and lease_path is not None:
                    if delete_link(ipr, veth):
                        removed.append(f"veth {veth}")
                    unlink_if_same(lease_path, lease)
                    removed.append(f"lease {lease_dir}/{slot} (pool entry)")
            finally:
                if lease >= 0:
                    os.close(lease)
    finally:
        os.close(pool_fd)
    return kept, removed


def waiting_entry_exists(owner: str, slot: int, *, unless_in: Path | None = None) -> bool:
    """Whether the entry a ``pool <token> <pool dir>`` lease names is (now) in its pool directory;
    any reaper can ask, whatever pool its own settings name. ``unless_in``: a pool being drained, whose
    entries do not count."""
    _, token, pool_dir = [*owner.split(" ", 2), "", ""][:3]
    if not token or not os.path.isabs(pool_dir) or parse_entry(f"{slot}.{token}") is None:
        return False
    if unless_in is not None and os.path.normpath(pool_dir) == str(unless_in):
        return False
    try:
        os.lstat(os.path.join(pool_dir, f"{slot}.{token}"))
    except OSError:
        return False
    return True


def _entry_alive(pool_fd: int, name: str) -> bool:
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=pool_fd)
    except OSError:
        return False
    try:
        return is_netns(fd)
    finally:
        os.close(fd)


def _port_of(ipr: Any, veth: str, bridge: int | None) -> bool:
    """Whether ``veth`` exists and is a port of ``bridge``."""
    from worker.sandbox.network.netlink import bridge_port_of

    return bridge is not None and bridge_port_of(ipr, veth) == bridge


def _sibling_pools(settings: NetworkSettings, min_age_s: float = 0.0,
                   now: float | None = None) -> list[tuple[Path, list[Any]]]:
    """(directory, configuration) of the pools next to ours whose meta is sound, untouched for at
    least ``min_age_s``."""
    root = settings.pool_dir.parent
    try:
        names = sorted(os.listdir(root))
    except OSError:
        return []
    now = time.time() if now is None else now
    width = len(settings.pool_config())
    found: list[tuple[Path, list[Any]]] = []
    for name in names:
        path = root / name
        try:
            fd = open_private_dir(str(path))
        except OSError:
            continue
        try:
            if min_age_s and now - os.fstat(fd).st_mtime < min_age_s:
                continue
            meta = read_meta(fd)
        finally:
            os.close(fd)
        config = meta.get("config") if meta else None
        if isinstance(config, list) and len(config) == width and name == pool_key(config):
            found.append((path, config))
    return found


def sweep_abandoned_pools(settings: NetworkSettings, ipr: Any, now: float | None = None) -> list[str]:
    """Drain the pools next to ours that belong to the same host network (state dir, bridge, host
    namespace, veth prefix) but to other settings, once untouched for ``ABANDONED_POOL_S``: after a
    configuration change no claimer or refill of theirs will come back. Call under ``reap.lock``."""
    ours = settings.pool_config()
    removed: list[str] = []
    for path, config in _sibling_pools(settings, ABANDONED_POOL_S, now):
        if path == settings.pool_dir:
            continue
        if [config[i] for i in (0, 2, 5, 7)] != [ours[i] for i in (0, 2, 5, 7)]:
            continue  # another host network: its veths are not ours to judge
        other = replace(settings, pool_path=path)
        with RefillLock(other):
            removed += judge_entries(other, ipr, drain=True)[1]
    return removed


def drain_host_pools(settings: NetworkSettings) -> list[str]:
    """Drain every pool hanging on this host network (same host namespace and bridge), whichever
    settings (state dir, resolvers, ...) made it, and remove their directories: ``teardown_host``
    removes the bridge they all use. Each is drained with the settings it was made with, so its own
    leases are freed."""
    ours = settings.pool_config()
    removed: list[str] = []
    for path, config in _sibling_pools(settings):
        if [config[i] for i in (2, 5)] != [ours[i] for i in (2, 5)]:
            continue  # another host network
        state_dir, subnet, bridge, resolvers, allow, host_netns, uplink, veth_prefix, table = config
        other = NetworkSettings(
            state_dir=Path(state_dir), subnet=ipaddress.IPv4Network(subnet) if subnet else None, bridge=bridge,
            resolvers=tuple(resolvers), allow=tuple(allow), host_netns=Path(host_netns) if host_netns else None,
            uplink=uplink, veth_prefix=veth_prefix, table=table, run_dir=settings.run_dir, pool_size=1,
            pool_path=path)
        removed += drain_pool(other)
    return removed


def drain_pool(settings: NetworkSettings) -> list[str]:
    """Remove every pool entry (waits for a running refill first), then the pool's directory;
    ``sandpit reap --all`` calls it (``teardown_host`` drains too). A refill started afterwards fills
    the pool again."""
    from worker.sandbox.network.reaper import reap_networks

    with RefillLock(settings):
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
