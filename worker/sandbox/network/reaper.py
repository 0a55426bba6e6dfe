"""Clean up after job networks whose owner process died (SIGKILLed worker, crash).

What a dead worker can leave: its lease files (the kernel dropped their locks when it died) and, if
some process still holds its job's namespace (a container that outlived the worker), the job's veth
pair. Job namespaces themselves need nothing: they die with the last holder. The reaper takes
``reap.lock`` (one reaper at a time); first it judges the pool of ready namespaces (``pool.py``: the
only bind-mounted namespaces), keeping live entries and removing used or broken ones with their veth
and lease; then, for every other lease it can lock, it deletes the slot's veth, then the lease (the
lease of a job that used a pool entry is such a lease once the job is over). Finally it deletes
sandpit veths on the bridge that have no lease file at all (by index, so a new job's veth of the same
name is never hit). Live jobs hold their lease locks, so nothing of theirs is touched.
"""

from __future__ import annotations

import os
from typing import Any

from worker.sandbox.network.addresses import slot_of_veth, veth_name
from worker.sandbox.network.host import host_netns_fd
from worker.sandbox.network.leases import ReapLock, remove_stale, stale_leases
from worker.sandbox.network.netlink import delete_link, ipv4_addresses, links, netlink_session
from worker.sandbox.network.settings import NetworkSettings


def reap_networks(settings: NetworkSettings, *, drain_pool: bool = False) -> list[str]:
    """Remove what dead owners left; return a line per removed object (``"lease ..."``, ``"veth ..."``,
    ``"pool entry ..."``). ``drain_pool``: remove every pool entry too (``pool.drain_pool``)."""
    from worker.sandbox.network.pool import judge_entries, sweep_abandoned_pools, waiting_entry_exists

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
