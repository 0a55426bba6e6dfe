"""What a job may reach (pure). ``ruleset.render_ruleset`` turns a ``EgressPolicy`` into nft; ``verdict`` is
the same decision in Python, for tests, docs and for choosing resolvers.

Order of the forward decision for a packet from a job (first match wins):

1. to the bridge itself (another job, routed)   → drop
2. not IPv4, or a source outside the subnet     → drop
3. TCP/UDP port 53 to a configured resolver     → accept
4. any other TCP/UDP port 53                    → drop (DNS only through the configured resolvers)
5. destination in ``allowed``                   → accept
6. destination in ``blocked``                   → drop (private, special, the host's own networks)
7. anything else (the public internet)          → accept

Packets from a job to the host itself (any of its addresses, any port) are dropped on input, except
TCP/UDP port 53 of the gateway when sandpit's DNS forwarder listens there (``local_resolver``, see
``forwarder.py``), port 53 of a configured resolver that is a host address, and replies to
connections the host opened (a job can answer the host, never call it).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from worker.sandbox.network.errors import HostNetworkError

IPv4Net = ipaddress.IPv4Network

#: Ranges no job may reach unless explicitly allowed: private (RFC 1918), shared (CGNAT, RFC 6598),
#: loopback, link-local (cloud metadata 169.254.169.254), "this network", IETF protocol assignments,
#: benchmarking, multicast, reserved and broadcast. Documentation ranges are left alone (not routed).
SPECIAL_RANGES_V4: tuple[IPv4Net, ...] = tuple(
    IPv4Net(text)
    for text in ("0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16",
                 "172.16.0.0/12", "192.0.0.0/24", "192.168.0.0/16", "198.18.0.0/15", "224.0.0.0/4",
                 "240.0.0.0/4")
)

Verdict = Literal["accept", "drop"]


@dataclass(frozen=True)
class EgressPolicy:
    """Everything the nft ruleset needs, already normalised (sorted, merged)."""

    table: str
    bridge: str
    subnet: IPv4Net
    blocked: tuple[IPv4Net, ...]
    allowed: tuple[IPv4Net, ...]
    resolvers: tuple[ipaddress.IPv4Address, ...]
    uplink: str | None = None
    veth_prefix: str = "spv"
    #: the gateway address when sandpit's DNS forwarder listens there: its port 53, nothing else
    local_resolver: ipaddress.IPv4Address | None = None


def parse_networks(texts: Iterable[str], what: str) -> list[IPv4Net]:
    """IPv4 CIDRs (a bare address is a /32); anything else is refused with the offending entry.

    >>> parse_networks(["10.1.2.3", "198.51.100.0/24"], "allow")
    [IPv4Network('10.1.2.3/32'), IPv4Network('198.51.100.0/24')]
    """
    found = []
    for text in texts:
        try:
            found.append(IPv4Net(text, strict=False))
        except ValueError as exc:
            raise HostNetworkError(f"{what} entry {text!r} is not an IPv4 address or CIDR "
                                   "(jobs have no IPv6)") from exc
    return found


def build_policy(*, table: str, bridge: str, subnet: IPv4Net, allow: Iterable[str],
                 resolvers: Iterable[str], host_networks: Iterable[IPv4Net],
                 uplink: str | None = None, veth_prefix: str = "spv",
                 local_resolver: ipaddress.IPv4Address | None = None) -> EgressPolicy:
    """Merge the special ranges with the host's own networks (its LANs) and normalise the lists.

    >>> p = build_policy(table="t", bridge="b", subnet=IPv4Net("10.213.0.0/16"), allow=[],
    ...                  resolvers=["1.1.1.1"], host_networks=[IPv4Net("10.97.0.0/16")])
    >>> IPv4Net("10.0.0.0/8") in p.blocked, p.resolvers
    (True, (IPv4Address('1.1.1.1'),))
    """
    blocked = ipaddress.collapse_addresses([*SPECIAL_RANGES_V4, *host_networks, subnet])
    allowed = ipaddress.collapse_addresses(parse_networks(allow, "allow"))
    resolver_addrs = sorted({ipaddress.IPv4Address(net.network_address)
                             for net in parse_networks(resolvers, "resolver")})
    return EgressPolicy(table=table, bridge=bridge, subnet=subnet, blocked=tuple(blocked),
                  allowed=tuple(allowed), resolvers=tuple(resolver_addrs), uplink=uplink,
                  veth_prefix=veth_prefix, local_resolver=local_resolver)


def verdict(policy: EgressPolicy, destination: ipaddress.IPv4Address, *, port: int | None = None,
            to_host: bool = False) -> Verdict:
    """The decision for a TCP/UDP packet from a job to ``destination`` (``to_host``: a host address).

    >>> p = build_policy(table="t", bridge="b", subnet=IPv4Net("10.213.0.0/16"), allow=[],
    ...                  resolvers=[], host_networks=[])
    >>> verdict(p, ipaddress.IPv4Address("169.254.169.254"), port=80)
    'drop'
    >>> gw = ipaddress.IPv4Address("10.213.0.1")
    >>> q = build_policy(table="t", bridge="b", subnet=IPv4Net("10.213.0.0/16"), allow=[], resolvers=[],
    ...                  host_networks=[], local_resolver=gw)
    >>> verdict(q, gw, port=53, to_host=True), verdict(q, gw, port=5353, to_host=True)
    ('accept', 'drop')
    """
    is_resolver = destination in policy.resolvers and port == 53
    if to_host and destination == policy.local_resolver and port == 53:
        return "accept"
    if to_host:
        return "accept" if is_resolver else "drop"
    if destination in policy.subnet:
        return "drop"
    if is_resolver:
        return "accept"
    if port == 53:
        return "drop"
    if any(destination in net for net in policy.allowed):
        return "accept"
    if any(destination in net for net in policy.blocked):
        return "drop"
    return "accept"


def pick_resolvers(configured: Iterable[str], host_nameservers: Iterable[str],
                   fallback: Iterable[str]) -> tuple[str, ...]:
    """Resolvers for jobs: the configured ones; else the host's that are public (a job can reach
    them); else the fallback.

    >>> pick_resolvers([], ["127.0.0.53", "10.97.0.2"], ["1.1.1.1"])
    ('1.1.1.1',)
    """
    chosen = tuple(configured)
    if chosen:
        return chosen
    public = tuple(ns for ns in host_nameservers
                   if not any(ipaddress.IPv4Address(ns) in net for net in SPECIAL_RANGES_V4))
    return public or tuple(fallback)
