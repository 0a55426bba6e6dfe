"""Run inside a job namespace: try every target at once and print one JSON result per target.

    python probe.py '[{"kind": "tcp", "host": "198.51.100.10", "port": 80}, ...]'

kinds: ``tcp`` (connect, send a line, read), ``udp`` (send, wait for a reply), ``http`` (GET /),
``dns`` (A query for ``name`` sent to host:port), ``dnstcp`` (the same over TCP). Outcomes: ``reply``
(data came back; ``data`` holds it), ``refused`` (a RST or ICMP came back: the packet reached
something), ``timeout``, ``unreachable``.
"""

from __future__ import annotations

import json
import socket
import struct
import sys
from concurrent.futures import ThreadPoolExecutor

TIMEOUT_S = 0.8


def attempt(target: dict[str, object]) -> dict[str, object]:
    kind, host, port = target["kind"], str(target["host"]), int(str(target["port"]))
    try:
        if kind in ("tcp", "http"):
            with socket.create_connection((host, port), timeout=TIMEOUT_S) as conn:
                conn.sendall(b"GET / HTTP/1.0\r\n\r\n" if kind == "http" else b"ping\r\n")
                data = conn.recv(4096)
        elif kind == "udp":
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                sock.settimeout(TIMEOUT_S)
                sock.connect((host, port))
                sock.send(b"ping")
                data = sock.recv(4096)
        elif kind in ("dns", "dnstcp"):
            name = str(target.get("name", "pkg.example.test"))
            qname = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"
            query = struct.pack("!HHHHHH", 0x1234, 0x0100, 1, 0, 0, 0) + qname + struct.pack("!HH", 1, 1)
            if kind == "dnstcp":
                with socket.create_connection((host, port), timeout=TIMEOUT_S) as conn:
                    conn.sendall(struct.pack("!H", len(query)) + query)
                    reply = b""
                    while len(reply) < 2 or len(reply) < 2 + struct.unpack("!H", reply[:2])[0]:
                        chunk = conn.recv(4096)
                        if not chunk:
                            break
                        reply += chunk
                return {**target, "outcome": "reply", "data": socket.inet_ntoa(reply[-4:])}
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                sock.settimeout(TIMEOUT_S)
                sock.connect((host, port))
                sock.send(query)
                reply = sock.recv(4096)
            data = socket.inet_ntoa(reply[-4:]).encode()
        else:
            raise ValueError(kind)
    except ConnectionRefusedError:
        return {**target, "outcome": "refused"}
    except TimeoutError:
        return {**target, "outcome": "timeout"}
    except OSError as exc:
        return {**target, "outcome": "unreachable", "error": str(exc)}
    return {**target, "outcome": "reply", "data": data.decode(errors="replace")}


def main() -> None:
    targets = json.loads(sys.argv[1])
    with ThreadPoolExecutor(max_workers=max(1, len(targets))) as pool:
        results = list(pool.map(attempt, targets))
    print(json.dumps(results))


if __name__ == "__main__":
    main()
