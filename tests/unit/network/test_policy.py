"""The job policy and its nft rendering (pure)."""

from __future__ import annotations

import ipaddress

import pytest

from worker.sandbox.network.errors import HostNetworkError
from worker.sandbox.network.policy import EgressPolicy, build_policy, pick_resolvers, verdict
from worker.sandbox.network.ruleset import render_ruleset, render_teardown

N = ipaddress.IPv4Network
A = ipaddress.IPv4Address


def make_policy(allow: tuple[str, ...] = (), resolvers: tuple[str, ...] = ("1.1.1.1",),
                uplink: str | None = None) -> EgressPolicy:
    return build_policy(table="sandpit", bridge="sandpit0", subnet=N("10.213.0.0/16"), allow=allow,
                        resolvers=resolvers, host_networks=[N("192.0.2.0/24"), N("10.97.0.0/16")],
                        uplink=uplink)


@pytest.mark.parametrize(("destination", "port", "to_host", "expected"), [
    ("93.184.216.34", 443, False, "accept"),   # the public internet
    ("8.8.8.8", 123, False, "accept"),
    ("10.1.2.3", 80, False, "drop"),           # RFC 1918
    ("172.20.0.1", 80, False, "drop"),
    ("192.168.1.1", 80, False, "drop"),
    ("100.100.100.200", 80, False, "drop"),    # CGNAT, Alibaba's metadata address
    ("169.254.169.254", 80, False, "drop"),    # cloud metadata
    ("127.0.0.1", 6379, False, "drop"),
    ("224.0.0.251", 5353, False, "drop"),      # multicast
    ("255.255.255.255", 67, False, "drop"),
    ("192.0.2.1", 80, False, "drop"),          # the host's LAN
    ("10.213.0.9", 22, False, "drop"),         # another job
    ("1.1.1.1", 53, False, "accept"),          # the configured resolver
    ("8.8.8.8", 53, False, "drop"),            # any other DNS server
    ("192.0.2.2", 6379, True, "drop"),         # the host itself, e.g. its Redis
    ("10.213.0.1", 22, True, "drop"),          # the gateway
])
def test_verdict_allows_only_the_public_internet(destination: str, port: int, to_host: bool,
                                                 expected: str) -> None:
    """Private, special, host and job destinations are dropped; what is left is allowed."""
    assert verdict(make_policy(), A(destination), port=port, to_host=to_host) == expected


@pytest.mark.parametrize(("allow", "destination", "expected"), [
    (("10.97.5.5",), "10.97.5.5", "accept"),
    (("10.97.5.5",), "10.97.5.6", "drop"),
    (("172.16.0.0/16",), "172.16.9.9", "accept"),
])
def test_allow_list_opens_extra_destinations(allow: tuple[str, ...], destination: str, expected: str) -> None:
    """Server-side allow entries win over the blocked ranges, and only for what they name."""
    assert verdict(make_policy(allow=allow), A(destination), port=443) == expected


def test_resolver_on_the_host_is_reachable_on_port_53_only() -> None:
    """A resolver that is a host address may be asked (port 53) but nothing else on the host."""
    policy = make_policy(resolvers=("10.213.0.1",))
    assert verdict(policy, A("10.213.0.1"), port=53, to_host=True) == "accept"
    assert verdict(policy, A("10.213.0.1"), port=22, to_host=True) == "drop"


@pytest.mark.parametrize("entry", ["fd00::1", "not-an-address", "10.0.0.0/33"])
def test_bad_allow_entries_are_refused_with_the_entry(entry: str) -> None:
    """Allow entries must be IPv4 CIDRs; the error names the offending entry."""
    with pytest.raises(HostNetworkError, match="allow entry"):
        make_policy(allow=(entry,))


def test_blocked_ranges_are_merged() -> None:
    """Overlapping ranges are collapsed (nft refuses overlapping interval elements)."""
    blocked = make_policy().blocked
    assert N("10.97.0.0/16") not in blocked and N("10.0.0.0/8") in blocked
    assert all(not a.overlaps(b) for i, a in enumerate(blocked) for b in blocked[i + 1:])


@pytest.mark.parametrize(("configured", "host", "expected"), [
    (("9.9.9.9",), ("1.1.1.1",), ("9.9.9.9",)),
    ((), ("127.0.0.53",), ("1.1.1.1", "8.8.8.8")),
    ((), ("10.97.0.2", "1.0.0.1"), ("1.0.0.1",)),
])
def test_pick_resolvers(configured: tuple[str, ...], host: tuple[str, ...],
                        expected: tuple[str, ...]) -> None:
    """Configured resolvers win; else the host's public ones; else the fallback."""
    assert pick_resolvers(configured, host, ("1.1.1.1", "8.8.8.8")) == expected


@pytest.mark.parametrize("line", [
    'iifname "sandpit0" drop',
    'iifname "sandpit0" ct state established,related accept',
    'iifname "sandpit0" oifname "sandpit0" drop',
    'iifname "sandpit0" meta nfproto != ipv4 drop',
    'iifname "sandpit0" ip saddr != 10.213.0.0/16 drop',
    'iifname "sandpit0" ip daddr @blocked_v4 drop',
    'ip saddr 10.213.0.0/16 oifname != "sandpit0" masquerade',
    'iifname "spv*" oifname "spv*" drop',
    "elements = { 1.1.1.1 }",
])
def test_ruleset_contains_each_rule(line: str) -> None:
    """The rendered ruleset carries every rule of the policy."""
    assert line in render_ruleset(make_policy())


def test_ruleset_orders_accepts_before_drops() -> None:
    """Resolver and allow-list accepts come before the DNS and blocked-range drops."""
    text = render_ruleset(make_policy(allow=("10.97.5.5",)))
    assert text.index("@resolvers_v4 meta") < text.index("th dport 53 drop")
    assert text.index("@allowed_v4 accept") < text.index("@blocked_v4 drop")
    assert "elements = { 10.97.5.5/32 }" in text


def test_ruleset_masquerades_out_of_the_configured_uplink() -> None:
    """With an uplink named, NAT applies only there."""
    assert 'oifname "eth0" masquerade' in render_ruleset(make_policy(uplink="eth0"))


def test_ruleset_replaces_itself_atomically() -> None:
    """Each table is created, deleted and defined in the one document, so reloading never stacks."""
    text = render_ruleset(make_policy())
    for family in ("inet", "bridge"):
        assert text.index(f"table {family} sandpit {{}}") < text.index(f"delete table {family} sandpit")
    assert render_teardown("sandpit").count("delete table") == 2


@pytest.mark.parametrize("bad", ['x"; flush ruleset; "', "a b", ""])
def test_unsafe_names_are_refused(bad: str) -> None:
    """Interface and table names go into nft text; anything but a plain name is refused."""
    policy = build_policy(table="sandpit", bridge=bad, subnet=N("10.213.0.0/16"), allow=(),
                          resolvers=(), host_networks=())
    with pytest.raises(ValueError, match="unsafe"):
        render_ruleset(policy)
