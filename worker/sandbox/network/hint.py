"""The hint a job without a network gets when it failed for want of one (pure, but for ``read_tail``).

A job of ``network: none`` has only loopback: a name lookup fails at once with glibc's "Temporary
failure in name resolution" (curl's "Could not resolve host", apt's "Could not resolve", musl's and
busybox's own words) and a connection with ENETUNREACH ("Network is unreachable"). Seeing one of
those at the end of a failed job's log is a strong sign the user forgot ``sandbox: network: egress``;
the check reads only the last few KB of the log, so it costs the same for any job.
"""

from __future__ import annotations

import os

#: how much of the log's end is looked at
TAIL_BYTES = 8192
#: what resolvers and network stacks print when there is no network at all (case-insensitive)
OFFLINE_SIGNS: tuple[bytes, ...] = (
    b"temporary failure in name resolution",
    b"could not resolve host",
    b"could not resolve '",
    b"name or service not known",
    b"name does not resolve",
    b"no address associated with hostname",
    b"network is unreachable",
    b"failed to establish a new connection",
    b"wget: bad address",
    b"getaddrinfo failed",
)
HINT = ("sandpit: hint: this job has no network (network: none) and its output shows a failed name "
        "lookup or connection; give it one with `sandbox: network: egress`")


def offline_hint(tail: bytes) -> str | None:
    """The hint if ``tail`` (the end of a failed job's output) shows it found no network.

    >>> offline_hint(b"curl: (6) Could not resolve host: example.com") == HINT
    True
    >>> offline_hint(b"AssertionError: 1 != 2") is None
    True
    """
    low = tail.lower()
    return HINT if any(sign in low for sign in OFFLINE_SIGNS) else None


def read_tail(path: str | os.PathLike[str], size: int = TAIL_BYTES) -> bytes:
    """The last ``size`` bytes of a file (empty if it is unreadable)."""
    try:
        with open(path, "rb") as f:
            f.seek(max(0, os.fstat(f.fileno()).st_size - size))
            return f.read(size)
    except OSError:
        return b""
