"""Clean up after job networks whose owner process died (SIGKILLed worker, crash), and judge the pool.

What a dead worker can leave: its lease files (the kernel dropped their locks when it died) and, if
some process still holds its job's namespace (a container that outlived the worker), the job's veth
pair. Job namespaces themselves need nothing: they die with the last holder. The reaper takes
``reap.lock`` (one reaper at a time); first it judges the pool of ready namespaces (the only
bind-mounted namespaces; ``pool/layout.py``), keeping live entries and removing used or broken ones
with their veth and lease, and drains the pools that changed settings left behind; then, for every
other lease it can lock, it deletes the slot's veth, then the lease (the lease of a job that used a
pool entry is such a lease once the job is over). Finally it deletes sandpit veths on the bridge that
have no lease file at all (by index, so a new job's veth of the same name is never hit). Live jobs hold
their lease locks, so nothing of theirs is touched.

Judging a pool entry: entries belong to no process, so their leases cannot be held by a live
``flock``. The reaper keeps an entry only while its lease says ``pool <its token> <its pool>``, it is a
mounted network namespace and its veth is still a port of the bridge; everything else (used entries, a
refill killed mid-entry, entries whose veth ``teardown_host`` removed, entries of a pool that was
switched off) is removed.
"""

from __future__ import annotations

import os
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from pipelines.files.locks import lock_fd
from worker.sandbox.network.addresses import slot_of_veth, veth_name
from worker.sandbox.network.errors import HostNetworkError
from worker.sandbox.network.host import host_netns_fd
from worker.sandbox.network.leases import ReapLock, remove_stale, stale_leases, unlink_if_same
from worker.sandbox.network.netlink import (
    bridge_port_of,
    delete_link,
    ipv4_addresses,
    link_index,
    links,
    netlink_session,
)
from worker.sandbox.network.pool.layout import (
    PoolConfig,
    RefillLock,
    entries,
    is_netns,
    open_private_dir,
    parse_entry,
    pool_key,
    pool_lease_text,
    read_meta,
    remove_entry,
)
from worker.sandbox.network.settings import NetworkSettings

#: a pool of another configuration of the same host network that nobody claimed from or refilled for
#: this long (its directory's mtime) was left behind by changed settings: any reaper drains it
ABANDONED_POOL_S = 3600.0


def reap_networks(settings: NetworkSettings, *, drain_pool: bool = False) -> list[str]:
    """Remove what dead owners left; return a line per removed object (``"lease ..."``, ``"veth ..."``,
    ``"pool entry ..."``). ``drain_pool``: remove every pool entry too (``pool.fill.drain_pool``)."""
    leases_root = settings.net_dir / "leases"

    def reap(ipr: Any) -> list[str]:
        with ReapLock(settings.net_dir / "reap.lock"):
            kept, removed = judge_entries(settings, ipr, drain=drain_pool)
            removed += sweep_abandoned_pools(settings, ipr)
            subnet_dirs = sorted(leases_root.iterdir()) if leases_root.is_dir() else []
            for subnet_dir in subnet_dirs:
                for stale, fd in stale_leases(subnet_dir):
                    if stale.owner.startswith("pool ") and (stale.slot in kept or waiting_entry_exists(
                            stale.owner, stale.slot, unless_in=settings.pool_dir if drain_pool else None)):
                        os.close(fd)  # a ready pool entry (or one made since the pool was judged)
                        continue
                    try:
                        if stale.slot >= 0:
                            veth = veth_name(settings.veth_prefix, stale.slot)
                            if delete_link(ipr, veth):
                                removed.append(f"veth {veth}")
                    finally:
                        remove_stale(stale, fd)
                    removed.append(f"lease {subnet_dir.name}/{stale.path.name} (owner {stale.owner or '?'})")
            removed += _reap_unleased_veths(settings, ipr)
        return removed

    ns_fd = host_netns_fd(settings)
    try:
        return netlink_session(ns_fd, reap)
    finally:
        if ns_fd is not None:
            os.close(ns_fd)


def _reap_unleased_veths(settings: NetworkSettings, ipr: Any) -> list[str]:
    found = links(ipr)
    bridge = next((link.index for link in found if link.name == settings.bridge), None)
    if bridge is None:
        return []
    subnets = [iface.network for i, iface in ipv4_addresses(ipr) if i == bridge]
    if not subnets:
        return []
    lease_dir = settings.net_dir / "leases" / f"{subnets[0].network_address}_{subnets[0].prefixlen}"
    removed = []
    for link in found:
        slot = slot_of_veth(settings.veth_prefix, link.name)
        if link.master != bridge or link.kind != "veth" or slot is None:
            continue
        if not (lease_dir / str(slot)).exists() and delete_link(ipr, index=link.index):
            removed.append(f"veth {link.name} (no lease)")
    return removed


# ---- the pool of ready namespaces ------------------------------------------------------------------


def judge_entries(settings: NetworkSettings, ipr: Any, *, drain: bool) -> tuple[set[int], list[str]]:
    """The reaper's pass over the pool (call under ``reap.lock``, with a host-namespace ``IPRoute``):
    keep an entry only if its lease says ``pool <its token> <this pool>``, it is a mounted network
    namespace and its veth is still a port of the bridge (and the pool is not being drained). Remove every
    other entry; a removed entry's ``pool`` lease goes with its veth. Entries whose lease is locked
    (being made, being claimed) are left alone. Returns (slots kept, lines of what was removed)."""
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
                    if not lock_fd(lease, blocking=False):
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
    return bridge is not None and bridge_port_of(ipr, veth) == bridge


def sibling_pools(settings: NetworkSettings, min_age_s: float = 0.0,
                  now: float | None = None) -> list[tuple[Path, PoolConfig]]:
    """(directory, configuration) of the pools next to ours whose meta is sound, untouched for at
    least ``min_age_s``."""
    root = settings.pool_dir.parent
    try:
        names = sorted(os.listdir(root))
    except OSError:
        return []
    now = time.time() if now is None else now
    found: list[tuple[Path, PoolConfig]] = []
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
        stored = meta.get("config") if meta else None
        config = PoolConfig.from_stored(stored)
        if config is not None and isinstance(stored, list) and name == pool_key(stored):
            found.append((path, config))
    return found


def sweep_abandoned_pools(settings: NetworkSettings, ipr: Any, now: float | None = None) -> list[str]:
    """Drain the pools next to ours that belong to the same host network (state dir, bridge, host
    namespace, veth prefix) but to other settings, once untouched for ``ABANDONED_POOL_S``: after a
    configuration change no claimer or refill of theirs will come back. Call under ``reap.lock``."""
    ours = settings.pool_made_for()
    removed: list[str] = []
    for path, config in sibling_pools(settings, ABANDONED_POOL_S, now):
        if path == settings.pool_dir:
            continue
        if not config.same_host_network(ours):
            continue  # another host network: its veths are not ours to judge
        other = replace(settings, pool_path=path)
        with RefillLock(path):
            removed += judge_entries(other, ipr, drain=True)[1]
    return removed
