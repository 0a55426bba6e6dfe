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
``reaper``. Errors: ``errors``.
"""

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
from worker.sandbox.network.reaper import reap_networks
from worker.sandbox.network.settings import NetworkSettings

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
    "prepare_host",
    "reap_networks",
    "teardown_host",
]
