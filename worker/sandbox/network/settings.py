"""Settings of the network layer: built once at the entry point and passed down, never read from env."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path

from worker.sandbox.network.pool.layout import PoolConfig, PoolRequest

#: the default instance's names; any other instance's come from ``instance.instance_names``
DEFAULT_BRIDGE = "sandpit0"
DEFAULT_VETH_PREFIX = "spv"
DEFAULT_TABLE = "sandpit"

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
    when empty, jobs get the gateway, where sandpit's dnsmasq forwards to the host's own resolvers
    (``forwarder.py``; without dnsmasq: the host's public resolvers, or ``FALLBACK_RESOLVERS``). ``allow`` lists extra
    IPv4 CIDRs jobs may reach even though they are private. ``host_netns`` is the namespace that plays
    "host" (bridge, NAT, rules); None means the caller's own.
    """

    state_dir: Path
    subnet: ipaddress.IPv4Network | None = None
    bridge: str = DEFAULT_BRIDGE
    resolvers: tuple[str, ...] = ()
    allow: tuple[str, ...] = ()
    host_netns: Path | None = None
    uplink: str | None = None
    #: torn-down egress networks the kernel may still be freeing before a new job has to wait
    max_pending_cleanups: int = 128
    #: how long a new job waits for that backlog to drain before ``CleanupBacklog``
    pending_wait_s: float = 10.0
    #: prefix of the host-side veth names (the job side is always ``eth0``)
    veth_prefix: str = DEFAULT_VETH_PREFIX
    table: str = DEFAULT_TABLE
    #: runtime state (the pool's bind mounts); None: ``state_dir``
    run_dir: Path | None = None
    #: ready egress namespaces kept in the pool (0: no pool; see pool/fill.py)
    pool_size: int = 0
    #: a claim that leaves fewer than this starts a refill; None: half of ``pool_size``
    pool_low_water: int | None = None
    #: the pool directory as a claimer named it (a detached refill); None: derived from the settings
    pool_path: Path | None = None
    #: the host's resolv.conf, which the jobs' DNS forwarder follows when ``resolvers`` is empty
    #: (tests name a file of their stand-in world; see forwarder.py)
    host_resolv_conf: Path = Path("/etc/resolv.conf")

    @property
    def net_dir(self) -> Path:
        return self.state_dir / "net"

    @property
    def dns_dir(self) -> Path:
        """Where the forwarder's pid file and recorded command live (``<run dir>/net/dns``)."""
        return (self.run_dir or self.state_dir) / "net" / "dns"

    @property
    def pool_dir(self) -> Path:
        """``<run dir>/net/pool/<key of pool_made_for()>``: one pool per network configuration."""
        if self.pool_path is not None:
            return self.pool_path
        return (self.run_dir or self.state_dir) / "net" / "pool" / self.pool_made_for().key()

    def pool_made_for(self) -> PoolConfig:
        """What this pool's entries depend on (``pool/layout.py``)."""
        return PoolConfig.made(state_dir=str(self.state_dir), subnet=str(self.subnet) if self.subnet else None,
                               bridge=self.bridge, resolvers=self.resolvers, allow=self.allow,
                               host_netns=str(self.host_netns) if self.host_netns else None, uplink=self.uplink,
                               veth_prefix=self.veth_prefix, table=self.table)

    def pool_config(self) -> list[object]:
        """``pool_made_for()`` as meta.json and a ``PoolRequest`` store it (``PoolConfig.stored``)."""
        return self.pool_made_for().stored()

    def pool_request(self) -> PoolRequest | None:
        """The pool to claim from, None when it is off."""
        if self.pool_size <= 0:
            return None
        return PoolRequest(str(self.pool_dir), str(self.net_dir / "leases"), self.pool_config(), self.pool_size,
                           self.pool_low_water)
