"""Address planning: subnet choice, slots, veth names, resolv.conf (pure)."""

from __future__ import annotations

import ipaddress

import pytest

from worker.sandbox.network.addresses import (
    AddressPlan,
    check_subnet,
    choose_subnet,
    parse_nameservers,
    render_resolv_conf,
    slot_of_veth,
    veth_name,
)
from worker.sandbox.network.errors import HostNetworkError, NoFreeSubnet

N = ipaddress.IPv4Network
CANDIDATES = [N("10.213.0.0/16"), N("172.29.0.0/16"), N("192.168.213.0/24")]


@pytest.mark.parametrize(("taken", "expected"), [
    ([], N("10.213.0.0/16")),
    ([N("0.0.0.0/0")], N("10.213.0.0/16")),                       # a default route collides with nothing
    ([N("10.213.7.0/24")], N("172.29.0.0/16")),                   # a smaller route inside the candidate
    ([N("10.0.0.0/8")], N("172.29.0.0/16")),                      # a larger route around it
    ([N("10.0.0.0/8"), N("172.16.0.0/12")], N("192.168.213.0/24")),
    ([N("10.97.0.0/16"), N("192.0.2.0/24")], N("10.213.0.0/16")),  # the project machines' uplink
])
def test_choose_subnet_skips_every_candidate_that_overlaps_a_route(taken: list[N], expected: N) -> None:
    """The first candidate overlapping no route or address network of the host wins."""
    assert choose_subnet(CANDIDATES, taken) == expected


def test_choose_subnet_fails_when_everything_collides() -> None:
    """No free candidate is an error that says how to fix it."""
    with pytest.raises(NoFreeSubnet, match=r"NetworkSettings\.subnet"):
        choose_subnet(CANDIDATES, [N("0.0.0.0/1"), N("128.0.0.0/1")])


@pytest.mark.parametrize(("subnet", "taken", "message"), [
    (N("10.0.0.0/30"), [], "too small"),
    (N("10.213.0.0/16"), [N("10.213.1.0/24")], "collides"),
])
def test_check_subnet_refuses_bad_configured_subnets(subnet: N, taken: list[N], message: str) -> None:
    """A configured subnet must be big enough and clear of the host's routes."""
    with pytest.raises(HostNetworkError, match=message):
        check_subnet(subnet, taken)


@pytest.mark.parametrize(("subnet", "slot", "address"), [
    ("10.213.0.0/16", 0, "10.213.0.2/16"),
    ("10.213.0.0/16", 254, "10.213.1.0/16"),
    ("10.213.0.0/16", 65532, "10.213.255.254/16"),
    ("192.168.213.0/24", 252, "192.168.213.254/24"),
])
def test_slots_map_to_addresses_and_back(subnet: str, slot: int, address: str) -> None:
    """Slot n is the (n+2)th address: never the network, the gateway or the broadcast address."""
    plan = AddressPlan(N(subnet))
    assert plan.address(slot) == ipaddress.IPv4Interface(address)
    assert plan.slot_of(plan.address(slot).ip) == slot


@pytest.mark.parametrize("bad", [-1, 65533])
def test_slots_outside_the_subnet_are_refused(bad: int) -> None:
    """Slots past the last usable address (broadcast) or negative are errors."""
    with pytest.raises(ValueError, match="outside"):
        AddressPlan(N("10.213.0.0/16")).address(bad)


@pytest.mark.parametrize(("start", "order"), [
    (0, [0, 1, 2, 3, 4]),
    (3, [3, 4, 0, 1, 2]),
    (7, [2, 3, 4, 0, 1]),
])
def test_probe_order_visits_every_slot_once(start: int, order: list[int]) -> None:
    """Probing starts anywhere and wraps round, so every free slot is found."""
    assert list(AddressPlan(N("10.0.0.0/29")).probe_order(start)) == order


@pytest.mark.parametrize(("prefix", "slot", "name"), [
    ("spv", 0, "spv0"),
    ("spv", 65532, "spvfffc"),
    ("sandpitjob", 255, "sandpitjobff"),
])
def test_veth_names_round_trip(prefix: str, slot: int, name: str) -> None:
    """A veth name encodes its slot, so the reaper finds a dead job's veth from its lease."""
    assert veth_name(prefix, slot) == name
    assert slot_of_veth(prefix, name) == slot


@pytest.mark.parametrize("name", ["eth0", "spv", "spvxyz", "sandpit0", "spv-1"])
def test_foreign_interface_names_are_not_slots(name: str) -> None:
    """Interfaces that are not sandpit job veths are never mistaken for one."""
    assert slot_of_veth("spv", name) is None


def test_overlong_veth_names_are_refused() -> None:
    """Linux interface names have 15 characters at most."""
    with pytest.raises(ValueError, match="15"):
        veth_name("averyverylongpfx", 1)


@pytest.mark.parametrize(("text", "expected"), [
    ("nameserver 1.1.1.1\n", ("1.1.1.1",)),
    ("# comment\nsearch lan\nnameserver 10.97.0.2\nnameserver fd00::1\n", ("10.97.0.2",)),
    ("nameserver\noptions edns0\n", ()),
])
def test_parse_nameservers_keeps_ipv4_entries(text: str, expected: tuple[str, ...]) -> None:
    """Only IPv4 nameserver lines count (jobs have no IPv6)."""
    assert parse_nameservers(text) == expected


def test_render_resolv_conf_lists_resolvers_in_order() -> None:
    """The job's resolv.conf names exactly the chosen resolvers."""
    assert render_resolv_conf(["9.9.9.9", "1.1.1.1"]) == (
        b"nameserver 9.9.9.9\nnameserver 1.1.1.1\noptions timeout:2 attempts:2\n")
