"""A job's output: read from the container's pipes, timestamped in chunks, masked, capped, kept outside.

The log file is JSON lines, one per record: ``{"t": seconds since start, "s": "out"|"err"|"sys",
"d": text}``. Bytes that are not UTF-8 are kept as backslash escapes. Order is the order in which
sandpit read the output.

A record holds many reads: consecutive output of one stream is merged until the stream changes,
the record holds 64 KiB, or it is 50 ms old. Without that, a job writing one byte per write(2)
got one record per byte, about 40 bytes of JSON each. The log limit (``--log-limit``) counts what
the file stores, record overhead and escapes included, so the file never grows past it (plus the
one ``sys`` record that says the limit was reached); the live reader gets exactly the bytes stored.

Secrets (and their base64 forms) are replaced by ``[MASKED]`` before anything is written or shown.
So that a secret split across two reads is still found, output is masked a line at a time: a
partial line waits (up to 64 KiB) for its end or for the job to finish.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from worker.sandbox.delivery import OutputDelivery, OutputSink

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import BinaryIO

__all__ = ["JobLog", "OutputSink", "read_log"]

MASK = b"[MASKED]"
HOLD_MAX = 64 * 1024
#: data in one record at most, and how long a record waits for more output of its stream
RECORD_BYTES = 64 * 1024
COALESCE_S = 0.05


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
    """The job's log file and its live reader. Used from the supervisor's thread only."""

    def __init__(self, path: Path, limit_bytes: int, sink: OutputSink | None = None,
                 secrets: tuple[str, ...] = ()) -> None:
        self.path = path
        self.limit_bytes = limit_bytes
        self.started = time.monotonic()
        self.bytes = 0  # stored in the file
        self.over_limit = False
        self.delivery = OutputDelivery(sink) if sink is not None else None
        self._forms = secret_forms(secrets)
        self._held: dict[str, bytes] = {}
        self._record = bytearray()
        self._record_stream = ""
        self._record_t = 0.0
        self._record_since = 0.0
        self._record_size = 0  # what the record will take in the file, at most
        self._file: BinaryIO = open(path, "ab")

    # -- what the supervisor asks --------------------------------------------------------
    def backlogged(self) -> bool:
        """The live reader is behind: stop reading the job's pipes until ``wake_fd`` says so."""
        return self.delivery is not None and self.delivery.backlogged()

    @property
    def wake_fd(self) -> int | None:
        return self.delivery.wake_fd if self.delivery is not None else None

    @property
    def broken_streams(self) -> frozenset[str]:
        """Streams whose live reader has gone away."""
        return frozenset(self.delivery.broken) if self.delivery is not None else frozenset()

    # -- output ----------------------------------------------------------------------------
    def write(self, stream: str, data: bytes) -> None:
        """Take output the job wrote; it is stored (masked) up to the limit and handed on."""
        if self.over_limit:
            return
        if self._forms:
            data = self._held.pop(stream, b"") + data
            cut = data.rfind(b"\n") + 1
            if cut == 0 and len(data) < HOLD_MAX:
                self._held[stream] = data
                return
            if cut:
                data, self._held[stream] = data[:cut], data[cut:]
            data = mask(data, self._forms)
        self._store(stream, data)

    def tick(self) -> None:
        """Called every few ms by the supervisor: a record that waited long enough is written."""
        if self._record and time.monotonic() - self._record_since >= COALESCE_S:
            self._write_record()

    def flush(self) -> None:
        for stream, data in list(self._held.items()):
            self._held.pop(stream)
            if not self.over_limit:
                self._store(stream, mask(data, self._forms))
        self._write_record()

    def _store(self, stream: str, data: bytes) -> None:
        if not data or self.over_limit:
            return
        if self._record and (stream != self._record_stream or len(self._record) + len(data) > RECORD_BYTES):
            self._write_record()
        if not self._record:
            now = time.monotonic()
            self._record_stream, self._record_since = stream, now
            self._record_t = round(now - self.started, 6)
            self._record_size = len(_encode(self._record_t, stream, ""))
        room = self.limit_bytes - self.bytes - self._record_size
        if stored_size(data) > room:
            data = _longest_fit(data, room)
            self.over_limit = True
        self._record += data
        self._record_size += stored_size(data)
        if self.delivery is not None:
            self.delivery.put(stream, data)
        if self.over_limit:
            self.flush()
            self._note(f"log limit of {self.limit_bytes} bytes reached; the job is stopped")

    def _write_record(self) -> None:
        if not self._record:
            return
        line = _encode(self._record_t, self._record_stream, self._record.decode("utf-8", "backslashreplace"))
        self._file.write(line)
        self.bytes += len(line)
        self._record = bytearray()

    def _note(self, text: str) -> None:
        """A line of sandpit's own in the log (and to the live reader), outside the limit."""
        self._write_record()
        data = f"\n[sandpit] {text}\n".encode()
        self._file.write(_encode(round(time.monotonic() - self.started, 6), "sys", data.decode()))
        if self.delivery is not None:
            self.delivery.put("sys", data)

    def close(self) -> None:
        if self._file.closed:
            return
        self.flush()
        if self.delivery is not None:
            lost = self.delivery.finish()
            if lost:
                why = ("its reader went away" if self.delivery.broken
                       else f"its reader took nothing for {self.delivery.stall_s:g} s")
                self._file.write(_encode(round(time.monotonic() - self.started, 6), "sys",
                                         f"\n[sandpit] {lost} bytes of output were not shown live: {why}\n"))
            self.delivery.close()
        self._file.close()


def _encode(t: float, stream: str, text: str) -> bytes:
    return json.dumps({"t": t, "s": stream, "d": text}).encode() + b"\n"


def stored_size(data: bytes) -> int:
    """Bytes that ``data`` takes in a record's ``d`` field, at most: decoded alone, a UTF-8
    character split across two chunks becomes escapes, which are longer than the character.

    >>> stored_size(b"ab"), stored_size(b"\\n"), stored_size(b"\\x01"), stored_size(b"\\xff")
    (2, 2, 6, 5)
    """
    return len(json.dumps(data.decode("utf-8", "backslashreplace"))) - 2


def _longest_fit(data: bytes, room: int) -> bytes:
    """The longest prefix of ``data`` whose stored size fits ``room`` (binary search: the size is
    not monotonic at a split character, but every answer found fits)."""
    lo, hi = 0, len(data)
    if room <= 0:
        return b""
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if stored_size(data[:mid]) <= room:
            lo = mid
        else:
            hi = mid
    return data[:lo]


def read_log(path: Path) -> list[tuple[float, str, str]]:
    """The chunks of a stored log as (t, stream, text)."""
    out = []
    with open(path, "rb") as f:
        for line in f:
            rec = json.loads(line)
            out.append((rec["t"], rec["s"], rec["d"]))
    return out
