"""The host side's life cycle beyond ``prepare_host``: tearing it down and reloading its rules.

Both involve every layer of the package (the host's bridge and nft tables, the reaper, the pool), so
they live here, above all of them, rather than in ``host.py``, which knows neither the pool nor the
reaper.
"""

from __future__ import annotations

import os
from typing import Any

from worker.sandbox.network.forwarder import pid_file_of, stop_forwarder
from worker.sandbox.network.host import host_netns_fd, prepare_host, run_nft
from worker.sandbox.network.leases import ReapLock
from worker.sandbox.network.netlink import delete_link, link_index, links, netlink_session
from worker.sandbox.network.pool.fill import drain_host_pools
from worker.sandbox.network.pool.layout import RefillLock
from worker.sandbox.network.reaper import reap_networks
from worker.sandbox.network.ruleset import render_teardown
from worker.sandbox.network.settings import NetworkSettings


def teardown_host(settings: NetworkSettings) -> None:
    """Remove the nft tables, sandpit's veths and the bridge, the pool of ready namespaces and every
    stale lease (tests, ``sandpit reap --all``). Live jobs lose their network; their leases stay until
    they close. Waits for a running pool refill to finish first."""

    def remove_links(ipr: Any) -> None:
        found = links(ipr)
        bridge = next((link.index for link in found if link.name == settings.bridge), None)
        for link in found:
            ours = link.name.startswith(settings.veth_prefix)
            if bridge is not None and link.master == bridge and ours:
                delete_link(ipr, index=link.index)
        if bridge is not None:
            delete_link(ipr, index=bridge)

    ns_fd = host_netns_fd(settings)
    try:
        with RefillLock(settings.pool_dir), ReapLock(settings.net_dir / "host.lock"):
            run_nft(ns_fd, render_teardown(settings.table))
            stop_forwarder(str(pid_file_of(settings.dns_dir, settings.bridge)))
            netlink_session(ns_fd, remove_links)
            reap_networks(settings, drain_pool=True)  # the pool's veths are gone: its entries go too
    finally:
        if ns_fd is not None:
            os.close(ns_fd)
    drain_host_pools(settings)  # and those of other settings on this bridge, with their directories


def reload_if_prepared(settings: NetworkSettings) -> bool:
    """Prepare the host again (which reloads the nft ruleset) if sandpit's bridge exists there; a
    host that never ran an egress job is left alone. For ``sandpit host-prep`` after a firewall
    reload flushed sandpit's tables: running workers and the pool's namespaces rely on them."""
    ns_fd = host_netns_fd(settings)
    try:
        present = netlink_session(ns_fd, lambda ipr: link_index(ipr, settings.bridge) is not None)
    finally:
        if ns_fd is not None:
            os.close(ns_fd)
    if present:
        prepare_host(settings).close()
    return present
