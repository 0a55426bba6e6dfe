"""Settings of the network layer: built once at the entry point and passed down, never read from env."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path

#: Subnets tried, in order, when ``NetworkSettings.subnet`` is None; the first one that overlaps no
#: route or address of the host namespace wins. The project's machines use 10.97/16 and 192.0.2/24.
CANDIDATE_SUBNETS: tuple[ipaddress.IPv4Network, ...] = tuple(
    ipaddress.IPv4Network(text)
    for text in ("10.213.0.0/16", "10.214.0.0/16", "172.29.0.0/16", "172.30.0.0/16",
                 "100.88.0.0/16", "192.168.213.0/24")
)

#: Written to a job's resolv.conf when no resolver is configured and the host's own are private.
FALLBACK_RESOLVERS: tuple[str, ...] = ("1.1.1.1", "8.8.8.8")


@dataclass(frozen=True)
class NetworkSettings:
    """Where and how job networks are made.

    ``state_dir / 'net'`` holds the lease files and locks shared by every worker of the host.
    ``resolvers`` go into each job's resolv.conf and are let through the policy (port 53 only);
    when empty, the host's public resolvers are used, or ``FALLBACK_RESOLVERS``. ``allow`` lists extra
    IPv4 CIDRs jobs may reach even though they are private. ``host_netns`` is the namespace that plays
    "host" (bridge, NAT, rules); None means the caller's own.
    """

    state_dir: Path
    subnet: ipaddress.IPv4Network | None = None
    bridge: str = "sandpit0"
    resolvers: tuple[str, ...] = ()
    allow: tuple[str, ...] = ()
    host_netns: Path | None = None
    uplink: str | None = None
    #: torn-down egress networks the kernel may still be freeing before a new job has to wait
    max_pending_cleanups: int = 128
    #: how long a new job waits for that backlog to drain before ``CleanupBacklog``
    pending_wait_s: float = 10.0
    #: prefix of the host-side veth names (the job side is always ``eth0``)
    veth_prefix: str = "spv"
    table: str = "sandpit"

    @property
    def net_dir(self) -> Path:
        return self.state_dir / "net"
