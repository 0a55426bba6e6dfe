"""A job's output: read from the container's pipes, timestamped in chunks, masked, capped, kept outside.

The log file is JSON lines, one per chunk: ``{"t": seconds since start, "s": "out"|"err"|"sys",
"d": text}``. Bytes that are not UTF-8 are kept as backslash escapes. Order is the order in which
sandpit read the chunks.

Secrets (and their base64 forms) are replaced by ``[MASKED]`` before anything is written or shown.
So that a secret split across two reads is still found, output is masked a line at a time: a
partial line waits (up to 64 KiB) for its end or for the job to finish.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import BinaryIO

OutputSink = Callable[[str, bytes], None]
MASK = b"[MASKED]"
HOLD_MAX = 64 * 1024


def secret_forms(secrets: tuple[str, ...]) -> tuple[bytes, ...]:
    """Every byte string to hide: the value and its base64 encodings (longest first).

    >>> [f.decode() for f in secret_forms(("hunter22",))]
    ['aHVudGVyMjI=', 'aHVudGVyMjI', 'hunter22']
    """
    import binascii  # base64's core: ``import base64`` also costs re and struct

    forms: set[bytes] = set()
    for secret in secrets:
        raw = secret.encode()
        if len(raw) < 4:
            continue  # masking "a" or "1" would shred the log; too short to be a real secret
        forms.add(raw)
        b64 = binascii.b2a_base64(raw, newline=False)
        forms.add(b64)
        forms.add(b64.rstrip(b"="))
    return tuple(sorted(forms, key=len, reverse=True))


def mask(data: bytes, forms: tuple[bytes, ...]) -> bytes:
    for form in forms:
        data = data.replace(form, MASK)
    return data


class JobLog:
    def __init__(self, path: Path, limit_bytes: int, sink: OutputSink | None = None,
                 secrets: tuple[str, ...] = ()) -> None:
        self.path = path
        self.limit_bytes = limit_bytes
        self.sink = sink
        self.started = time.monotonic()
        self.bytes = 0
        self.over_limit = False
        self._forms = secret_forms(secrets)
        self._held: dict[str, bytes] = {}
        self._file: BinaryIO = open(path, "ab")

    def write(self, stream: str, data: bytes) -> None:
        """Take a chunk the job wrote; counts toward the limit at once, is emitted masked."""
        if self.over_limit:
            return
        room = self.limit_bytes - self.bytes
        if len(data) > room:
            data = data[:room]
            self.over_limit = True
        self.bytes += len(data)
        if self._forms:
            data = self._held.pop(stream, b"") + data
            cut = data.rfind(b"\n") + 1
            if cut == 0 and len(data) < HOLD_MAX and not self.over_limit:
                self._held[stream] = data
                return
            if not self.over_limit and cut:
                data, self._held[stream] = data[:cut], data[cut:]
            data = mask(data, self._forms)
        self._emit(stream, data)
        if self.over_limit:
            self.flush()
            note = f"\n[sandpit] log limit of {self.limit_bytes} bytes reached; the job is stopped\n"
            self._emit("sys", note.encode())

    def flush(self) -> None:
        for stream, data in list(self._held.items()):
            self._emit(stream, mask(data, self._forms))
        self._held.clear()

    def _emit(self, stream: str, data: bytes) -> None:
        if not data:
            return
        record = {"t": round(time.monotonic() - self.started, 6), "s": stream,
                  "d": data.decode("utf-8", "backslashreplace")}
        self._file.write(json.dumps(record).encode() + b"\n")
        if self.sink is not None:
            self.sink(stream, data)

    def close(self) -> None:
        if not self._file.closed:
            self.flush()
            self._file.close()


def read_log(path: Path) -> list[tuple[float, str, str]]:
    """The chunks of a stored log as (t, stream, text)."""
    out = []
    with open(path, "rb") as f:
        for line in f:
            rec = json.loads(line)
            out.append((rec["t"], rec["s"], rec["d"]))
    return out
