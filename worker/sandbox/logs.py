"""A job's output: read from the container's pipes, timestamped in chunks, capped, kept outside.

The log file is JSON lines, one per chunk: ``{"t": seconds since start, "s": "out"|"err",
"d": text}``. Bytes that are not UTF-8 are kept as backslash escapes. Order is the order in
which sandpit read the chunks.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

OutputSink = Callable[[str, bytes], None]


class JobLog:
    def __init__(self, path: Path, limit_bytes: int, sink: OutputSink | None = None) -> None:
        self.path = path
        self.limit_bytes = limit_bytes
        self.sink = sink
        self.started = time.monotonic()
        self.bytes = 0
        self.over_limit = False
        self._file: BinaryIO = open(path, "ab")

    def write(self, stream: str, data: bytes) -> None:
        if self.over_limit:
            return
        room = self.limit_bytes - self.bytes
        if len(data) > room:
            data = data[:room]
            self.over_limit = True
        self.bytes += len(data)
        if data:
            record = {"t": round(time.monotonic() - self.started, 6), "s": stream,
                      "d": data.decode("utf-8", "backslashreplace")}
            self._file.write(json.dumps(record).encode() + b"\n")
            if self.sink is not None:
                self.sink(stream, data)
        if self.over_limit:
            note = f"\n[sandpit] log limit of {self.limit_bytes} bytes reached; the job is stopped\n"
            self._file.write(json.dumps({"t": round(time.monotonic() - self.started, 6), "s": "sys",
                                         "d": note}).encode() + b"\n")
            if self.sink is not None:
                self.sink("sys", note.encode())

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()


def read_log(path: Path) -> list[tuple[float, str, str]]:
    """The chunks of a stored log as (t, stream, text)."""
    out = []
    with open(path, "rb") as f:
        for line in f:
            rec = json.loads(line)
            out.append((rec["t"], rec["s"], rec["d"]))
    return out
