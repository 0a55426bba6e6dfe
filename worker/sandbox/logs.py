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

import codecs
import json
import time
from json.encoder import encode_basestring_ascii
from pathlib import Path

from worker import TYPE_CHECKING
from worker.sandbox.delivery import OutputDelivery, OutputSink

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
        # one UTF-8 decoder per stream: a character split across reads (or records) stays one
        self._decoders: dict[str, codecs.IncrementalDecoder] = {}
        self._record: list[str] = []  # the JSON-escaped text of the record being gathered
        self._record_stream = ""
        self._record_head = ""
        self._record_since = 0.0
        self._record_size = 0  # the bytes the record will take in the file
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
        for stream, decoder in self._decoders.items():
            if decoder.getstate()[0] and not self.over_limit:
                self._store(stream, b"", final=True)  # a character cut short by the end of output
        self._write_record()

    def _store(self, stream: str, data: bytes, final: bool = False) -> None:
        if self.over_limit or not (data or final):
            return
        decoder = self._decoders.get(stream)
        if decoder is None:
            decoder = self._decoders[stream] = _DECODER("backslashreplace")
        if self._record and (stream != self._record_stream or self._record_size > RECORD_BYTES):
            self._write_record()
        if not self._record:
            now = time.monotonic()
            self._record_stream, self._record_since = stream, now
            self._record_head = f'{{"t": {round(now - self.started, 6)!r}, "s": "{stream}", "d": "'
            self._record_size = len(self._record_head) + len(_RECORD_TAIL)
        room = self.limit_bytes - self.bytes - self._record_size
        state = decoder.getstate()
        piece = _escape(decoder.decode(data, final))
        if len(piece) > room:
            decoder.setstate(state)
            data, piece = _longest_fit(decoder, data, room)
            self.over_limit = True
        self._record.append(piece)
        self._record_size += len(piece)
        if self.delivery is not None:
            self.delivery.put(stream, data)
        if self.over_limit:
            self.flush()
            self._note(f"log limit of {self.limit_bytes} bytes reached; the job is stopped")

    def _write_record(self) -> None:
        if not self._record:
            return
        line = (self._record_head + "".join(self._record) + _RECORD_TAIL).encode("ascii")
        self._file.write(line)
        self.bytes += len(line)
        self._record = []

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


_DECODER = codecs.getincrementaldecoder("utf-8")
_RECORD_TAIL = '"}\n'


def _escape(text: str) -> str:
    """``text`` as it stands inside a JSON string of ``json.dumps`` (ASCII, escapes), computed once
    per read: the record is these pieces joined, so its size is known before it is written."""
    return encode_basestring_ascii(text)[1:-1]


def _encode(t: float, stream: str, text: str) -> bytes:
    return json.dumps({"t": t, "s": stream, "d": text}).encode() + b"\n"


def _longest_fit(decoder: codecs.IncrementalDecoder, data: bytes, room: int) -> tuple[bytes, str]:
    """The longest prefix of ``data`` whose escaped text fits ``room``, and that text; the record
    ends there, so the decoder is finished. A binary search: the size is not monotonic where a
    character is cut (its bytes escaped one by one are longer than the whole), but every answer
    it finds fits.

    >>> d = _DECODER("backslashreplace")
    >>> _longest_fit(d, b"ab\\ncd", 4)
    (b'ab\\n', 'ab\\\\n')
    """
    state = decoder.getstate()

    def escaped(n: int) -> str:
        decoder.setstate(state)
        return _escape(decoder.decode(data[:n], True))

    lo, hi = 0, len(data)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if len(escaped(mid)) <= room:
            lo = mid
        else:
            hi = mid
    text = escaped(lo)
    if len(text) > room:  # even the empty prefix: the decoder's held bytes do not fit
        decoder.setstate(state)
        return b"", ""
    return data[:lo], text


def read_log(path: Path) -> list[tuple[float, str, str]]:
    """The chunks of a stored log as (t, stream, text)."""
    out = []
    with open(path, "rb") as f:
        for line in f:
            rec = json.loads(line)
            out.append((rec["t"], rec["s"], rec["d"]))
    return out
