"""Which ports a service is waited for, and which ports listen in a network namespace.

GitLab Runner waits until a service's exposed ports accept connections, or gives up after its
``wait_for_services_timeout`` and lets the job start with a warning. The ports are the image
config's ``ExposedPorts`` (TCP ones); the service variable ``HEALTHCHECK_TCP_PORT`` names the one
port to wait for instead (GitLab's override, for images that expose none or several). A service
with several ports is ready when *one* of them listens: Runner 15.x tries all of them because
``docker:dind`` exposes 2375 and 2376 and listens on only one.

"Listens" is read from the namespace's socket table (``/proc/thread-self/net/tcp`` and ``tcp6``
of a thread inside it) rather than by connecting: a connect is a client to the service (a database
logs "incomplete startup packet" for each probe), the table is just the kernel's answer.

>>> wanted_ports(("5432/tcp", "53/udp", "8080"), ())
((5432, 8080), None)
>>> wanted_ports(("2375/tcp", "2376/tcp"), (("HEALTHCHECK_TCP_PORT", "2376"),))
((2376,), None)
"""

from __future__ import annotations

import os

TCP_LISTEN = "0A"


def wanted_ports(exposed: tuple[str, ...], env: tuple[tuple[str, str], ...]) -> tuple[tuple[int, ...], str | None]:
    """The TCP ports to wait for, and a sentence when ``HEALTHCHECK_TCP_PORT`` is no port (then the
    exposed ports are used)."""
    override = dict(env).get("HEALTHCHECK_TCP_PORT")
    problem = None
    if override is not None:
        port = _port(override.strip())
        if port is not None:
            return (port,), None
        problem = f"HEALTHCHECK_TCP_PORT {override[:40]!r} is not a port (1-65535); waiting for the exposed ports"
    ports: list[int] = []
    for spec in exposed:
        number, _, proto = spec.partition("/")
        port = _port(number)
        if port is not None and proto in ("", "tcp") and port not in ports:
            ports.append(port)
    return tuple(ports), problem


def _port(text: str) -> int | None:
    if not text.isdigit() or len(text) > 5:
        return None
    port = int(text)
    return port if 0 < port < 65536 else None


def listening_ports(table: str) -> set[int]:
    """The local ports of the LISTEN sockets in a ``/proc/net/tcp`` (or ``tcp6``) table.

    >>> listening_ports("  sl  local_address rem_address   st\\n"
    ...     "   0: 00000000:1F90 00000000:0000 0A 0\\n   1: 0100007F:0016 0100007F:9C40 01 0\\n")
    {8080}
    """
    ports = set()
    for line in table.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 4 or fields[3] != TCP_LISTEN:
            continue
        _address, _, port = fields[1].rpartition(":")
        try:
            ports.add(int(port, 16))
        except ValueError:
            continue
    return ports


def listening_here() -> set[int]:
    """The ports listening in the calling thread's network namespace (IPv4 and IPv6)."""
    found: set[int] = set()
    for name in ("tcp", "tcp6"):
        try:
            fd = os.open(f"/proc/thread-self/net/{name}", os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            continue  # no IPv6 in this kernel
        try:
            chunks = []
            while chunk := os.read(fd, 65536):
                chunks.append(chunk)
        finally:
            os.close(fd)
        found |= listening_ports(b"".join(chunks).decode("ascii", "replace"))
    return found
