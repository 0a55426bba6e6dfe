"""Which part of a job's log a page shows, read without reading the rest (adapter: the log file, Redis).

A finished job's log file can be large (50 MB in bench/bench_ui.py), so a page never reads it
whole:

- up to :data:`WHOLE_BYTES` it is shown whole;
- bigger, the page shows its first :data:`SCREEN_BYTES` and "more" continues from there
  (``?at=`` pages through it from any entry, a screen at a time, and the live script appends);
- ``?at=end`` shows its last screen (where a failure is), numbered as in the whole log: the
  lines before are counted, not parsed (:func:`count_lines`; reading 50 MB alone took 126 ms on
  the loaded two-core machine here, so the count is the price of that link, not of every page),
  and the count is kept per file version.

A running job's page shows what its live stream holds (up to :data:`STREAM_ENTRIES` entries);
the live log then goes on from there over SSE.

A position in a log is :class:`Resume`: the entry where the next unshown line begins (a file's
byte offset, or the stream id of the entry before it), how many characters of that entry were
already shown, and that line's number. Entries hold many lines and a line may span entries, so
all three are needed to continue exactly where a view stopped.
"""

from __future__ import annotations

import json
import os
import threading
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from api.ui.logview import LogRenderer, Op

WHOLE_BYTES = 64 * 1024
SCREEN_BYTES = 32 * 1024
STREAM_ENTRIES = 2000
_BLOCK = 4 * 1024 * 1024
_counted: OrderedDict[tuple[int, int, int, int, int], int] = OrderedDict()
_counted_lock = threading.Lock()


@dataclass(frozen=True, slots=True)
class Resume:
    """Where the next unshown line of a log begins (see the module docstring)."""

    at: str
    skip: int
    line: int


@dataclass(frozen=True, slots=True)
class Window:
    """What a view of a log shows: its operations, where it began and where more begins."""

    ops: list[Op]
    first_line: int
    resume: Resume | None
    starts_at: int | None = None  # a file view: the byte offset it began at (0: the log's start)
    size: int | None = None  # a file view: the file's size
    anchors: bool = True
    complete: bool = False  # the view reached the log's end and the log is final


class Tracker:
    """A renderer fed whole entries, remembering where its unfinished line began."""

    def __init__(self, first_line: int, *, anchors: bool = True) -> None:
        self.renderer = LogRenderer(first_line, anchors=anchors)
        self.origin: tuple[str, str, int] | None = None  # (entry key, key before it, skip)

    def feed(self, key: str, before: str, text: str, skip: int = 0) -> list[Op]:
        had = bool(self.renderer.pending)
        ops = self.renderer.feed(text[skip:])
        if self.renderer.pending:
            cut = text.rfind("\n", skip)
            if cut >= 0 or not had:
                self.origin = (key, before, cut + 1 if cut >= 0 else skip)
        else:
            self.origin = None
        return ops

    def resume(self, next_key: str, last_key: str, *, file: bool) -> Resume:
        """The position after what was fed: ``next_key`` is the entry after the last one fed
        (a file's next offset), ``last_key`` the last one's own key (a stream id)."""
        if self.origin is None:
            return Resume(next_key if file else last_key, 0, self.renderer.next_line)
        key, before, skip = self.origin
        return Resume(key if file else before, skip, self.renderer.next_line)


# --- the log file -------------------------------------------------------------------------------

def _entries(handle: Any, offset: int, budget: int) -> Iterator[tuple[int, int, str]]:
    """``(offset, next offset, text)`` of the file's entries from ``offset`` until ``budget``
    bytes were read (the last entry is read whole); a line that is not a record has no text."""
    handle.seek(offset)
    read = 0
    while read < budget:
        raw = handle.readline()
        if not raw:
            return
        start, offset = offset, offset + len(raw)
        read += len(raw)
        try:
            record = json.loads(raw)
            text = str(record.get("d", ""))
        except (ValueError, AttributeError):
            text = ""
        yield start, offset, text


def count_lines(path: Path, upto: int) -> int:
    """How many ``\\n`` the log's text holds in the entries before byte ``upto`` (an entry
    boundary), without parsing them: in ``json.dumps``' ASCII form a newline is ``\\n`` and a
    backslash ``\\\\``, so dropping every ``\\\\`` leaves one ``\\n`` per newline (about 40 ms for
    50 MB here). Kept per file version (a finished log never changes)."""
    st = path.stat()
    key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, upto)
    with _counted_lock:
        if key in _counted:
            return int(_counted[key])
    total = 0
    carry = b""
    with path.open("rb") as handle:
        left = upto
        while left > 0:
            block = handle.read(min(_BLOCK, left))
            if not block:
                break
            left -= len(block)
            data = carry + block
            cut = data.rfind(b"\n") + 1  # records end with a raw newline, which a string never holds
            data, carry = data[:cut], data[cut:]
            total += data.replace(b"\\\\", b"").count(b"\\n")
    total += carry.replace(b"\\\\", b"").count(b"\\n")
    with _counted_lock:
        _counted[key] = total
        while len(_counted) > 256:
            _counted.popitem(last=False)
    return total


def _entry_start(handle: Any, offset: int) -> int:
    """The start of the entry holding byte ``offset`` (an entry starts after a raw newline)."""
    start = offset
    while start > 0:
        step = min(64 * 1024, start)
        handle.seek(start - step)
        chunk: bytes = handle.read(step)
        cut = chunk.rfind(b"\n")
        if cut >= 0:
            return start - step + cut + 1
        start -= step
    return 0


def _previous_ends_line(handle: Any, offset: int) -> bool:
    if offset == 0:
        return True
    start = _entry_start(handle, offset - 1)
    handle.seek(start)
    try:
        return str(json.loads(handle.read(offset - start)).get("d", "")).endswith("\n")
    except (ValueError, AttributeError):
        return True


def is_entry_start(path: Path, offset: int) -> bool:
    """Whether ``offset`` is where an entry of the file begins (a ``?at=`` must be)."""
    if offset == 0:
        return True
    size = path.stat().st_size
    if offset > size:
        return False
    with path.open("rb") as handle:
        handle.seek(offset - 1)
        return handle.read(1) == b"\n"


def file_window(path: Path, *, at: int | None = None, skip: int = 0, line: int | None = None,
                budget: int = SCREEN_BYTES, tail: bool = False) -> Window:
    """A view of a finished job's log file: the whole log when it is small, else its first screen
    (its last with ``tail``); with ``at`` (an entry's offset, checked by the caller), one screen
    from there (``skip`` characters of that entry already shown, its unfinished line numbered
    ``line``)."""
    size = path.stat().st_size
    with path.open("rb") as handle:
        if at is None:
            if size <= WHOLE_BYTES or not tail:
                at, first, drop_partial = 0, 1, False
                budget = size + 1 if size <= WHOLE_BYTES else budget
            else:
                at = _entry_start(handle, size - budget)
                drop_partial = not _previous_ends_line(handle, at)
                first = count_lines(path, at) + 1
        else:
            first = line if line is not None else count_lines(path, at) + 1
            drop_partial = False
        tracker = Tracker(first)
        ops: list[Op] = []
        next_offset = at
        for start, next_offset, text in _entries(handle, at, budget):  # noqa: B007 -- read after the loop
            if drop_partial:
                cut = text.find("\n")
                if cut < 0:
                    continue
                tracker.renderer.next_line += 1  # the line that began before this view
                ops.extend(tracker.feed(str(start), "", text, cut + 1))
                drop_partial = False
                continue
            ops.extend(tracker.feed(str(start), "", text, skip if start == at else 0))
        complete = next_offset >= size
        if complete:
            ops.extend(tracker.renderer.flush())
            return Window(ops, first, None, at, size, complete=True)
        return Window(ops, first, tracker.resume(str(next_offset), "", file=True), at, size)


# --- the live stream ------------------------------------------------------------------------------

def stream_window(entries: Iterable[tuple[str, str]], *, from_start: bool, final: bool) -> Window:
    """A view of the live stream's ``(id, text)`` entries (the first of the stream when
    ``from_start``, else numbered from the first shown, without anchors); the SSE continues at
    its resume position."""
    tracker = Tracker(1, anchors=from_start)
    ops: list[Op] = []
    before = ""
    last = ""
    for entry_id, text in entries:
        ops.extend(tracker.feed(entry_id, before, text))
        before = last = entry_id
    if final:
        ops.extend(tracker.renderer.flush())
        return Window(ops, 1, None, anchors=from_start, complete=True)
    return Window(ops, 1, tracker.resume("", last, file=False), anchors=from_start)


def log_size(path: Path) -> int:
    return os.stat(path).st_size
