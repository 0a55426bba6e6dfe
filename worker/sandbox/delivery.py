"""Handing a job's output to its live reader (a terminal, a pipe, a Redis stream) from a thread of
its own, so that a reader that is slow, stalled or gone can never stop the supervisor from
enforcing the job's deadline, limits and cancel.

The queue between the supervisor and this thread is bounded. When it is full the supervisor stops
reading the job's pipes: the job then blocks in write(2), exactly as it would writing into a full
pipe, and its deadline, limits and cancel still apply (a job whose reader never reads ends
``failed/timeout``). That back-pressure, rather than dropping output, is the choice for a live
stream because ``sandpit exec`` is a raw byte pipe: a slow ``| gzip`` or ``| ssh`` must get every
byte, in order. The log file is written by the supervisor, never through this queue.

A reader that has gone away (the sink raised ``OSError``, e.g. EPIPE under ``| head``) marks its
stream broken; the supervisor then closes that pipe of the job, so the job sees the broken pipe as
the first command of a shell pipeline would (SIGPIPE/EPIPE).

Once the job is over, ``finish()`` lets the reader take what is still queued as long as it keeps
taking it, and gives up on a reader that took nothing for ``stall_s`` (counted from its last
progress, which may be long before the job ended), so a stalled reader cannot keep sandpit running.
"""

from __future__ import annotations

import collections
import os
import threading
import time
from collections.abc import Callable

OutputSink = Callable[[str, bytes], None]

#: the supervisor stops reading the job's pipes above this many queued bytes, and starts again
#: once the reader has taken half of them
HIGH_WATER = 1 << 20
#: one call of the sink carries at most this much (queued chunks of one stream are merged up to it)
CALL_BYTES = 256 * 1024
#: the sink is called with at most this much at a time
SLICE_BYTES = 16 * 1024
#: once the job is over, a reader that took nothing (not one slice) for this long is given up on
STALL_S = 2.0


class OutputDelivery:
    """A bounded queue of (stream, bytes) and the thread that calls ``sink`` with them, in order."""

    def __init__(self, sink: OutputSink, *, high_water: int = HIGH_WATER, stall_s: float = STALL_S) -> None:
        self._sink = sink
        self._high = high_water
        self._low = high_water // 2
        self.stall_s = stall_s
        self._queue: collections.deque[tuple[str, bytearray]] = collections.deque()
        self._queued = 0
        self._busy = False  # the thread is inside a sink call
        self._idle = False  # the thread is waiting for output
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._closed = False
        self._paused = False  # the supervisor was told to stop reading
        self._progress = time.monotonic()
        self.broken: set[str] = set()
        self.undelivered = 0  # bytes given up on (broken stream, stalled reader)
        #: readable when the supervisor should look again: room in the queue, or a broken stream
        self.wake_fd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)

    def backlogged(self) -> bool:
        """True when the supervisor should stop reading the job's pipes; ``wake_fd`` then becomes
        readable once the reader has caught up (or its stream broke)."""
        with self._cond:
            if self._queued >= self._high:
                self._paused = True
            return self._paused

    def put(self, stream: str, data: bytes) -> None:
        if not data:
            return
        with self._cond:
            if stream in self.broken or self._stopping:
                self.undelivered += len(data)
                return
            if not self._queued and not self._busy:
                self._progress = time.monotonic()  # the reader owes us nothing until now
            last = self._queue[-1] if self._queue else None
            if last is not None and last[0] == stream and len(last[1]) + len(data) <= CALL_BYTES:
                last[1].extend(data)
            else:
                self._queue.append((stream, bytearray(data)))
            self._queued += len(data)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="sandpit-output", daemon=True)
                self._thread.start()
            elif self._idle:
                self._cond.notify()  # a busy thread looks at the queue again by itself

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._stopping:
                    self._idle = True
                    self._cond.wait()
                    self._idle = False
                if not self._queue:
                    return
                stream, data = self._queue.popleft()
                self._busy = True
            failed = False
            view = memoryview(data)
            try:
                # in slices, each one progress: a slow reader that keeps reading is never "stalled"
                for start in range(0, len(view), SLICE_BYTES):
                    self._sink(stream, bytes(view[start:start + SLICE_BYTES]))
                    self._progress = time.monotonic()
            except OSError:
                failed = True  # the reader is gone (EPIPE, a closed terminal)
            finally:
                view.release()
            with self._cond:
                self._busy = False
                self._queued = max(0, self._queued - len(data))
                if failed:
                    self.broken.add(stream)
                    self.undelivered += len(data)
                    for item in [i for i in self._queue if i[0] == stream]:
                        self._queue.remove(item)
                        self._queued -= len(item[1])
                        self.undelivered += len(item[1])
                if failed or (self._paused and self._queued < self._low):
                    self._paused = False
                    if not self._closed:
                        os.eventfd_write(self.wake_fd, 1)
                self._cond.notify_all()

    def finish(self) -> int:
        """Wait while the reader keeps taking output; return the bytes it did not get."""
        with self._cond:
            while self._queue or self._busy:
                left = self._progress + self.stall_s - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(min(left, 0.1))
            self._stopping = True
            self.undelivered += self._queued
            self._queue.clear()
            self._queued = 0
            self._cond.notify_all()
            return self.undelivered

    def close(self) -> None:
        self.finish()
        with self._cond:
            if not self._closed:
                self._closed = True
                os.close(self.wake_fd)
