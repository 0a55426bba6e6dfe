"""The nftables ruleset of the job network (pure): one ``nft -f`` document, loaded atomically.

Two tables, both named after ``EgressPolicy.table``:

* ``inet`` — input (jobs never reach the host), forward (the policy of ``policy.py``) and the
  masquerade out of the uplink;
* ``bridge`` — no frame is switched from one job's port to another's (belt and braces with the
  ports' ``isolated`` flag).

Per-job membership costs nothing here: a job is covered by the rules as soon as its veth is enslaved to
the bridge, which happens in the same netlink request that creates the veth. The document first
creates then deletes each table, so loading it again (another worker starting) replaces the rules in
one transaction instead of stacking duplicates.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from worker.sandbox.network.policy import EgressPolicy

_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,15}\*?$")


def _quoted(ifname: str) -> str:
    if not _NAME.match(ifname):
        raise ValueError(f"unsafe interface or table name {ifname!r}")
    return f'"{ifname}"'


def _set(name: str, kind: str, elements: Iterable[object], interval: bool) -> list[str]:
    lines = [f"\tset {name} {{", f"\t\ttype {kind}"]
    if interval:
        lines.append("\t\tflags interval")
    items = [str(e) for e in elements]
    if items:
        lines.append(f"\t\telements = {{ {', '.join(items)} }}")
    lines.append("\t}")
    return lines


def render_ruleset(policy: EgressPolicy) -> str:
    """The nft document for ``policy``.

    >>> import ipaddress
    >>> from worker.sandbox.network.policy import build_policy
    >>> text = render_ruleset(build_policy(table="sandpit", bridge="sandpit0", allow=[], resolvers=[],
    ...     subnet=ipaddress.IPv4Network("10.213.0.0/16"), host_networks=[]))
    >>> "delete table inet sandpit" in text and 'iifname "sandpit0" drop' in text
    True
    """
    table = policy.table
    _quoted(table)
    br = _quoted(policy.bridge)
    out = [_quoted(policy.uplink) if policy.uplink else f"!= {br}"]
    ports = _quoted(f"{policy.veth_prefix}*")
    dns = "meta l4proto { tcp, udp } th dport 53"
    lines = [
        f"table inet {table} {{}}",
        f"delete table inet {table}",
        f"table inet {table} {{",
        *_set("blocked_v4", "ipv4_addr", policy.blocked, interval=True),
        *_set("allowed_v4", "ipv4_addr", policy.allowed, interval=True),
        *_set("resolvers_v4", "ipv4_addr", policy.resolvers, interval=False),
        "\tchain input {",
        "\t\ttype filter hook input priority filter - 10; policy accept;",
        f"\t\tiifname {br} ct state established,related accept",
        *([f"\t\tiifname {br} ip daddr {policy.local_resolver} {dns} accept"] if policy.local_resolver else []),
        f"\t\tiifname {br} ip daddr @resolvers_v4 {dns} accept",
        f"\t\tiifname {br} drop",
        "\t}",
        "\tchain forward {",
        "\t\ttype filter hook forward priority filter - 10; policy accept;",
        f"\t\tiifname {br} oifname {br} drop",
        f"\t\toifname {br} ct state established,related accept",
        f"\t\toifname {br} drop",
        f"\t\tiifname {br} meta nfproto != ipv4 drop",
        f"\t\tiifname {br} ip saddr != {policy.subnet} drop",
        f"\t\tiifname {br} ip daddr @resolvers_v4 {dns} accept",
        f"\t\tiifname {br} {dns} drop",
        f"\t\tiifname {br} ip daddr @allowed_v4 accept",
        f"\t\tiifname {br} ip daddr @blocked_v4 drop",
        "\t}",
        "\tchain postrouting {",
        "\t\ttype nat hook postrouting priority srcnat; policy accept;",
        f"\t\tip saddr {policy.subnet} oifname {out[0]} masquerade",
        "\t}",
        "}",
        f"table bridge {table} {{}}",
        f"delete table bridge {table}",
        f"table bridge {table} {{",
        "\tchain forward {",
        "\t\ttype filter hook forward priority filter; policy accept;",
        f"\t\tiifname {ports} oifname {ports} drop",
        "\t}",
        "}",
    ]
    return "\n".join(lines) + "\n"


def render_teardown(table: str) -> str:
    """An nft document that removes both tables, whether or not they exist."""
    _quoted(table)
    return "\n".join([f"table inet {table} {{}}", f"delete table inet {table}",
                      f"table bridge {table} {{}}", f"delete table bridge {table}"]) + "\n"
