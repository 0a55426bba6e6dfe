"""Job networks: ``none`` (loopback only) or ``egress`` (NAT to the public internet and nothing else).

Use::

    host = prepare_host(settings)                 # once per worker process (idempotent, shared)
    with JobNetwork(settings, job_id, "egress", host) as net:
        run_container(netns=net.netns_path, resolv_conf=net.resolv_conf)
    reap_networks(settings)                        # periodically and at worker start
    host.close()

Modules: ``settings`` (NetworkSettings), ``addresses`` / ``policy`` / ``ruleset`` (pure), ``netlink``
(pyroute2, thread-confined sockets), ``namespace`` (netns by unshare in a thread), ``leases``
(cross-process address leases), ``host`` (bridge, nft, pending cleanups), ``job`` (JobNetwork),
``pool`` (ready namespaces: refill, judging, draining), ``pool_client`` (claiming one: import-light,
no netlink), ``reaper``. Errors: ``errors``.

The names below are loaded on first use (PEP 562), so importing ``pool_client`` on the CLI's hot path
does not load the rest of the layer (dataclasses, ipaddress, subprocess, pyroute2 on use).
"""

from __future__ import annotations

_WHERE = {
    "AddressesExhausted": "errors",
    "CleanupBacklog": "errors",
    "HostNetworkError": "errors",
    "NetlinkError": "errors",
    "NetworkError": "errors",
    "NoFreeSubnet": "errors",
    "HostNetwork": "host",
    "prepare_host": "host",
    "teardown_host": "host",
    "JobNetwork": "job",
    "NetworkMode": "job",
    "reap_networks": "reaper",
    "NetworkSettings": "settings",
    "drain_pool": "pool",
    "fill_pool": "pool",
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


TYPE_CHECKING = False
if TYPE_CHECKING:
    from worker.sandbox.network.errors import (
        AddressesExhausted,
        CleanupBacklog,
        HostNetworkError,
        NetlinkError,
        NetworkError,
        NoFreeSubnet,
    )
    from worker.sandbox.network.host import HostNetwork, prepare_host, teardown_host
    from worker.sandbox.network.job import JobNetwork, NetworkMode
    from worker.sandbox.network.pool import drain_pool, fill_pool
    from worker.sandbox.network.reaper import reap_networks
    from worker.sandbox.network.settings import NetworkSettings
