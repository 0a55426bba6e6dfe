"""``sandpit doctor``'s DNS check: does a job's resolver answer from inside an egress namespace?

The check asks sandpit's forwarder on the gateway for ``version.bind`` (class CHAOS), which dnsmasq
answers itself: it proves the forwarder runs, listens on the gateway and that the policy lets a job
reach it, without sending a query to the host's upstream resolvers (so it works, and leaks nothing,
on a host whose upstream is down; the upstreams it would use are named, not queried). Only a host
whose bridge exists is checked: the doctor does not create sandpit's network on a host that never ran
an egress job.
"""

from __future__ import annotations

import os
import socket
import struct

from worker.sandbox.network.errors import NetworkError
from worker.sandbox.network.host import host_nameservers, host_netns_fd, prepare_host
from worker.sandbox.network.job import JobNetwork
from worker.sandbox.network.namespace import run_in_netns
from worker.sandbox.network.netlink import link_index, netlink_session
from worker.sandbox.network.settings import NetworkSettings

#: a CHAOS-class TXT query for version.bind (id 0x5350: "SP")
VERSION_QUERY = (struct.pack("!HHHHHH", 0x5350, 0x0100, 1, 0, 0, 0) + b"\x07version\x04bind\x00"
                 + struct.pack("!HH", 16, 3))


def parse_version_reply(reply: bytes) -> str | None:
    """The TXT text of a reply to ``VERSION_QUERY``, None if it is not a good answer.

    >>> parse_version_reply(VERSION_QUERY[:2] + bytes.fromhex("85800001000100000000") + VERSION_QUERY[12:]
    ...                     + bytes.fromhex("c00c0010000300000000000d0c") + b"dnsmasq-2.90")
    'dnsmasq-2.90'
    """
    if len(reply) < 12 or reply[:2] != VERSION_QUERY[:2]:
        return None
    flags, _qd, answers = struct.unpack("!HHH", reply[2:8])
    if flags & 0x000F or answers < 1:
        return None
    start = len(VERSION_QUERY) + 12  # the answer's name pointer, type, class, ttl, rdlength
    if len(reply) < start + 1:
        return None
    return reply[start + 1 : start + 1 + reply[start]].decode(errors="replace")


def check_egress_dns(settings: NetworkSettings, timeout_s: float = 2.0) -> tuple[bool | None, str]:
    """(True: fine, False: broken, None: not checked) and a sentence saying what was found."""
    ns_fd = host_netns_fd(settings)
    try:
        present = netlink_session(ns_fd, lambda ipr: link_index(ipr, settings.bridge) is not None)
    finally:
        if ns_fd is not None:
            os.close(ns_fd)
    if not present:
        return None, f"not checked: bridge {settings.bridge} does not exist yet (no egress job has run)"
    if settings.resolvers:
        return None, f"jobs use SANDPIT_RESOLVERS directly ({', '.join(settings.resolvers)}; not queried)"
    try:
        with prepare_host(settings) as host:
            if host.dns_pid_file is None:
                return False, ("dnsmasq is not installed (apt-get install dnsmasq-base): jobs get "
                               f"{', '.join(host.resolvers)}, which the host's firewall may not let through")
            gateway = str(host.plan.gateway.ip)
            with JobNetwork(settings, "doctor-dns", "egress", host) as net:
                def ask() -> bytes:
                    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                        sock.settimeout(timeout_s)
                        sock.connect((gateway, 53))
                        sock.send(VERSION_QUERY)
                        return sock.recv(512)

                reply = run_in_netns(net.netns_fd, ask)
    except NetworkError as exc:  # the forwarder, the bridge or the namespace could not be made
        return False, f"cannot make an egress namespace to check DNS from: {exc}"
    except OSError as exc:  # the query itself: a timeout, a refusal
        return False, f"the forwarder on the gateway does not answer a job: {exc}"
    version = parse_version_reply(reply)
    if version is None:
        return False, f"the forwarder on {gateway}:53 sent a reply that is not an answer"
    upstream = ", ".join(host_nameservers(settings)) or "1.1.1.1, 8.8.8.8 (the host's resolv.conf names none)"
    return True, f"ok: a job's resolver {gateway}:53 answers ({version}); it forwards to {upstream}"
