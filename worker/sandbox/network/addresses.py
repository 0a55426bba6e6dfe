"""Address planning for job networks (pure: no I/O, the host's routes come in as arguments).

A plan is one IPv4 subnet: its first host address is the bridge's (the jobs' gateway), every other
host address is a *slot* a job can lease. A slot also names the host side of the job's veth, so the
reaper can find a dead job's interface from its lease alone.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from worker.sandbox.network.errors import HostNetworkError, NoFreeSubnet

IFNAMSIZ = 15  # usable characters of a Linux interface name


def collides(candidate: ipaddress.IPv4Network, taken: Iterable[ipaddress.IPv4Network]) -> bool:
    """True when ``candidate`` overlaps any of ``taken`` (default routes, /0, do not count).

    >>> collides(ipaddress.IPv4Network("10.213.0.0/16"), [ipaddress.IPv4Network("10.213.5.0/24")])
    True
    """
    return any(net.prefixlen > 0 and candidate.overlaps(net) for net in taken)


def choose_subnet(candidates: Iterable[ipaddress.IPv4Network],
                  taken: Iterable[ipaddress.IPv4Network]) -> ipaddress.IPv4Network:
    """The first candidate that collides with no route or address network of the host.

    >>> choose_subnet([ipaddress.IPv4Network("10.1.0.0/16"), ipaddress.IPv4Network("10.2.0.0/16")],
    ...               [ipaddress.IPv4Network("10.0.0.0/15")])
    IPv4Network('10.2.0.0/16')
    """
    taken = list(taken)
    for candidate in candidates:
        if not collides(candidate, taken):
            return candidate
    raise NoFreeSubnet("every candidate subnet collides with a route of the host; set NetworkSettings.subnet")


def check_subnet(subnet: ipaddress.IPv4Network, taken: Iterable[ipaddress.IPv4Network]) -> None:
    """Refuse a configured subnet that is too small or collides with the host's routes."""
    if subnet.prefixlen > 29:
        raise HostNetworkError(f"subnet {subnet} is too small for jobs; use /29 or larger")
    clashes = [str(net) for net in taken if net.prefixlen > 0 and subnet.overlaps(net)]
    if clashes:
        raise HostNetworkError(f"subnet {subnet} collides with host routes {', '.join(clashes)}; "
                               "choose another NetworkSettings.subnet")


@dataclass(frozen=True)
class AddressPlan:
    """Addresses of one job subnet.

    >>> plan = AddressPlan(ipaddress.IPv4Network("10.213.0.0/16"))
    >>> plan.gateway, plan.address(0), plan.slots
    (IPv4Interface('10.213.0.1/16'), IPv4Interface('10.213.0.2/16'), 65533)
    """

    subnet: ipaddress.IPv4Network

    @property
    def gateway(self) -> ipaddress.IPv4Interface:
        return ipaddress.IPv4Interface(f"{self.subnet[1]}/{self.subnet.prefixlen}")

    @property
    def slots(self) -> int:
        """Job addresses: all but the network, gateway and broadcast addresses."""
        return self.subnet.num_addresses - 3

    def address(self, slot: int) -> ipaddress.IPv4Interface:
        if not 0 <= slot < self.slots:
            raise ValueError(f"slot {slot} is outside {self.subnet}")
        return ipaddress.IPv4Interface(f"{self.subnet[slot + 2]}/{self.subnet.prefixlen}")

    def slot_of(self, address: ipaddress.IPv4Address) -> int:
        slot = int(address) - int(self.subnet.network_address) - 2
        if not 0 <= slot < self.slots:
            raise ValueError(f"{address} is not a job address of {self.subnet}")
        return slot

    def probe_order(self, start: int) -> Iterator[int]:
        """Every slot once, from ``start`` (taken modulo the slot count) round to ``start - 1``.

        >>> list(AddressPlan(ipaddress.IPv4Network("10.0.0.0/29")).probe_order(3))
        [3, 4, 0, 1, 2]
        """
        first = start % self.slots
        yield from range(first, self.slots)
        yield from range(first)

    @property
    def lease_dir_name(self) -> str:
        """A file-name-safe key for this subnet (``10.213.0.0_16``)."""
        return f"{self.subnet.network_address}_{self.subnet.prefixlen}"


def veth_name(prefix: str, slot: int) -> str:
    """The host-side veth name of a slot.

    >>> veth_name("spv", 255)
    'spvff'
    """
    found = f"{prefix}{slot:x}"
    if len(found) > IFNAMSIZ:
        raise ValueError(f"interface name {found!r} is longer than {IFNAMSIZ} characters")
    return found


def slot_of_veth(prefix: str, ifname: str) -> int | None:
    """The slot a veth name stands for, or None if it is not one of sandpit's.

    >>> slot_of_veth("spv", "spvff"), slot_of_veth("spv", "eth0")
    (255, None)
    """
    if not ifname.startswith(prefix) or len(ifname) == len(prefix):
        return None
    digits = ifname[len(prefix):]
    if any(c not in "0123456789abcdef" for c in digits):
        return None
    return int(digits, 16)


def parse_nameservers(resolv_conf: str) -> tuple[str, ...]:
    """IPv4 ``nameserver`` entries of a resolv.conf text.

    >>> parse_nameservers("# c\\nnameserver 10.0.0.2\\nnameserver ::1\\nsearch x\\n")
    ('10.0.0.2',)
    """
    found = []
    for line in resolv_conf.splitlines():
        fields = line.split()
        if len(fields) >= 2 and fields[0] == "nameserver":
            try:
                found.append(str(ipaddress.IPv4Address(fields[1])))
            except ValueError:
                continue
    return tuple(found)


def render_resolv_conf(resolvers: Iterable[str]) -> bytes:
    """The job's /etc/resolv.conf.

    >>> render_resolv_conf(["1.1.1.1"])
    b'nameserver 1.1.1.1\\noptions timeout:2 attempts:2\\n'
    """
    lines = [f"nameserver {ipaddress.IPv4Address(r)}" for r in resolvers]
    lines.append("options timeout:2 attempts:2")
    return ("\n".join(lines) + "\n").encode()
