"""Stand-in services for the network tests, run inside a test namespace (never the real host).

    python servers.py --tcp 80 --udp 5353 --dns 53=198.51.100.10

Binds every port on 0.0.0.0. TCP: answers ``pong <port>`` then closes (or an HTTP 200 when the request
looks like HTTP). UDP: echoes ``pong <port>``. DNS: answers every A query with the given address.
Prints ``ready`` on stdout once every socket is bound; runs until killed.
"""

from __future__ import annotations

import argparse
import socket
import struct
import threading


def serve_tcp(sock: socket.socket, port: int) -> None:
    while True:
        conn, _ = sock.accept()
        with conn:
            conn.settimeout(1.0)
            try:
                first = conn.recv(1024)
            except OSError:
                first = b""
            if first.startswith(b"GET "):
                body = f"hello from port {port}\n".encode()
                conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
            else:
                conn.sendall(f"pong {port}\n".encode())


IP_PKTINFO = 8


def serve_udp(sock: socket.socket, port: int) -> None:
    """Echo, answering from the address the datagram was sent to (IP_PKTINFO): a socket bound to
    0.0.0.0 would otherwise answer from whatever address routing picks, which NAT cannot match."""
    sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
    while True:
        _data, ancillary, _flags, peer = sock.recvmsg(2048, socket.CMSG_SPACE(12))
        local = b"\0\0\0\0"
        for level, kind, cdata in ancillary:
            if level == socket.IPPROTO_IP and kind == IP_PKTINFO:
                _index, _spec, local = struct.unpack("=I4s4s", cdata[:12])
        source = struct.pack("=I4s4s", 0, local, b"\0\0\0\0")
        sock.sendmsg([f"pong {port}\n".encode()], [(socket.IPPROTO_IP, IP_PKTINFO, source)], 0, peer)


def serve_dns(sock: socket.socket, answer: str) -> None:
    while True:
        query, peer = sock.recvfrom(2048)
        if len(query) < 12:
            continue
        qid = query[:2]
        end = 12
        while query[end] != 0:
            end += query[end] + 1
        question = query[12 : end + 5]
        header = qid + struct.pack("!HHHHH", 0x8180, 1, 1, 0, 0)
        record = b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 60, 4) + socket.inet_aton(answer)
        sock.sendto(header + question + record, peer)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tcp", type=int, action="append", default=[])
    parser.add_argument("--udp", type=int, action="append", default=[])
    parser.add_argument("--dns", action="append", default=[], help="PORT=ANSWER or ADDR:PORT=ANSWER")
    args = parser.parse_args()
    workers = []
    for port in args.tcp:
        tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        tcp.bind(("0.0.0.0", port))  # noqa: S104 - inside a test namespace: "any address" is the point
        tcp.listen(64)
        workers.append(threading.Thread(target=serve_tcp, args=(tcp, port), daemon=True))
    for port in args.udp:
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        udp.bind(("0.0.0.0", port))  # noqa: S104
        workers.append(threading.Thread(target=serve_udp, args=(udp, port), daemon=True))
    for spec in args.dns:
        where, answer = spec.split("=")
        addr, _, port = where.rpartition(":")
        dns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        dns.bind((addr or "0.0.0.0", int(port)))  # noqa: S104
        workers.append(threading.Thread(target=serve_dns, args=(dns, answer), daemon=True))
    for worker in workers:
        worker.start()
    print("ready", flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    main()
