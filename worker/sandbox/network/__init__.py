"""Job networks: ``none`` (loopback only) or ``egress`` (NAT to the public internet and nothing else).

Use::

    host = prepare_host(settings)                 # once per worker process (idempotent, shared)
    with JobNetwork(settings, job_id, "egress", host) as net:
        run_container(netns=net.netns_path, resolv_conf=net.resolv_conf)
    reap_networks(settings)                        # periodically and at worker start
    host.close()

Layers, bottom up; each module imports only from its own layer or those below it, and nothing
imports this façade (``tests/unit/network/test_layers.py`` walks the imports and holds them to it):

1. values shared by all: ``errors``; ``addresses``, ``policy``, ``ruleset``, ``hint`` (pure);
   ``settings`` (NetworkSettings); ``pool.layout`` (the pool's files and ``PoolConfig``, import-light);
2. ``namespace``: network namespaces by ``unshare``/``setns`` in a thread, held by fds (syscalls only);
3. ``netlink``: pyroute2 (its only importer in the tree), thread-confined sockets, namespaces made with
   a socket inside;
4. the host side: ``leases`` (cross-process address leases), ``forwarder`` (the jobs' DNS), ``host``
   (bridge, nft, pending cleanups);
5. the job side: ``job`` (JobNetwork);
6. ``reaper``: what dead owners left, and the judging of pool entries;
7. the pool: ``pool.claim`` (taking an entry: import-light, no netlink), ``pool.refill`` (starting the
   detached refill), ``pool.fill`` (making and draining entries);
8. ``lifecycle`` (host teardown and reload), ``doctor`` (the DNS check), ``egress`` (the engine's one
   seam: ``open_for_job`` gives a job a pooled namespace or makes one).

The reaper sits below the pool because a fill reaps before it makes entries; it needs only the
pool's layout. The names below are loaded on first use (PEP 562), so importing ``pool.claim`` on the
CLI's hot path does not load the rest of the layer (dataclasses, ipaddress, subprocess, pyroute2).
"""

from __future__ import annotations

from worker import TYPE_CHECKING

_WHERE = {
    "AddressesExhausted": "errors",
    "CleanupBacklog": "errors",
    "HostNetworkError": "errors",
    "NetlinkError": "errors",
    "NetworkError": "errors",
    "NoFreeSubnet": "errors",
    "HostNetwork": "host",
    "prepare_host": "host",
    "teardown_host": "lifecycle",
    "JobNetwork": "job",
    "NetworkMode": "job",
    "reap_networks": "reaper",
    "NetworkSettings": "settings",
    "drain_pool": "pool.fill",
    "fill_pool": "pool.fill",
}

__all__ = [
    "AddressesExhausted",
    "CleanupBacklog",
    "HostNetwork",
    "HostNetworkError",
    "JobNetwork",
    "NetlinkError",
    "NetworkError",
    "NetworkMode",
    "NetworkSettings",
    "NoFreeSubnet",
    "drain_pool",
    "fill_pool",
    "prepare_host",
    "reap_networks",
    "teardown_host",
]


def __getattr__(name: str) -> object:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(__import__(f"{__name__}.{module}", fromlist=[name]), name)
    globals()[name] = value
    return value


if TYPE_CHECKING:
    from worker.sandbox.network.errors import (
        AddressesExhausted,
        CleanupBacklog,
        HostNetworkError,
        NetlinkError,
        NetworkError,
        NoFreeSubnet,
    )
    from worker.sandbox.network.host import HostNetwork, prepare_host
    from worker.sandbox.network.job import JobNetwork, NetworkMode
    from worker.sandbox.network.lifecycle import teardown_host
    from worker.sandbox.network.pool.fill import drain_pool, fill_pool
    from worker.sandbox.network.reaper import reap_networks
    from worker.sandbox.network.settings import NetworkSettings
