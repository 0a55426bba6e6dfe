"""Step marks: where each millisecond of one run goes, across the API, the worker and the engine.

Off unless a process's entry point calls :func:`configure` with a file (``SANDPIT_TRACE_FILE``, read
by the API's and the worker's settings): then every :func:`mark` appends one line, ``<wall-clock ns>
<pid> <label> <thread>``, to it with ``O_APPEND`` (one ``write`` each, so the processes' lines never tear).
``bench/bench_service.py --trace`` sets it for the processes it starts and prints the median gap
between consecutive marks of each one-job run; the thread pairs the marks of one job under load,
when a worker's slots interleave theirs. Off, a mark costs one global read and a call
(≈ 0.05 µs): it stays in the hot paths for the next profile.
"""

from __future__ import annotations

import os
import threading
import time

_fd: int | None = None


def configure(path: os.PathLike[str] | str | None) -> None:
    """Start appending marks to ``path`` (None: stop)."""
    global _fd
    if _fd is not None:
        os.close(_fd)
        _fd = None
    if path is not None:
        _fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)


def mark(label: str) -> None:
    if _fd is not None:
        os.write(_fd, f"{time.time_ns()} {os.getpid()} {label} {threading.get_ident()}\n".encode())
