"""Writers of one SQLite file take turns in a queue, not in SQLite's busy-wait (adapter).

SQLite has one writer at a time; a ``BEGIN IMMEDIATE`` that finds the write lock taken waits in
SQLite's busy handler, which sleeps 1, 2, 5, 10, 15, 20, 25, 25, 25, 50, 50, then 100 ms between
tries and never learns that the lock came free. Under load (the API's 40 request threads, a
worker's job threads, its lease keeper and sweeper, all writing the same file) most of a write's
latency was that sleeping: the 50-client POST p99 was 1.9 s with ~1 ms transactions.

So the store's write transactions (:func:`pipelines.store.db.session_scope`) first take a turn:
a lock per process, handed to its waiting threads first come first served the moment the holder
lets go (so a thread writing in a loop never keeps the others out), then an ``flock`` on
``<db>.write.lock`` beside the database between processes (a waiting process polls it every
0.1-2 ms instead of SQLite's up to 100 ms). The turn orders writers and nothing else: SQLite's own
lock still guards the data, so a writer that does not take turns (a migration, another tool) is
as safe as before and only waits as before. A process that dies drops its flock with its
descriptors. Neither wait is unbounded: after ``timeout_s`` (SQLite's busy timeout) the
transaction goes on without its turn and SQLite's busy handler decides, as it did before.
The turn is re-entrant per thread, so a thread that nests a second write transaction gets what it
got before (SQLite's busy timeout), never a deadlock of its own making.

The lock file is opened once per process per database, kept open (close-on-exec), made 0600 and
never written; it is not the database file, whose POSIX locks a close would drop (see
``pipelines/store/db.py`` ``_owner_only``). It is closed when the last engine on that database
is gone (the turns are held only by their engines), so a process that opens many databases over
its life (the test suite, a tool walking state dirs) does not keep a descriptor for each.
"""

from __future__ import annotations

import collections
import os
import threading
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager

from pipelines.files.locks import lock_fd, open_lock_file, unlock_fd

POLL_FIRST_S = 0.0001
POLL_MAX_S = 0.002


class _FifoLock:
    """A re-entrant lock handed to its waiters in the order they came (``threading.RLock`` is
    not: a thread that lets go and asks again at once usually wins, so a thread writing in a loop,
    one transaction after the other, could keep the turn from a waiting one for as long as its loop
    lasts). ``release`` hands the lock to the first waiter directly."""

    def __init__(self) -> None:
        self._mutex = threading.Lock()
        self._owner: int | None = None
        self._depth = 0
        self._waiters: collections.deque[tuple[int, threading.Lock]] = collections.deque()

    def acquire(self, timeout: float) -> bool:
        me = threading.get_ident()
        with self._mutex:
            if self._owner == me:
                self._depth += 1
                return True
            if self._owner is None and not self._waiters:
                self._owner, self._depth = me, 1
                return True
            gate = threading.Lock()
            gate.acquire()
            self._waiters.append((me, gate))
        if gate.acquire(timeout=max(timeout, 0.0)):
            return True  # handed over: owner and depth were set by the releaser
        with self._mutex:
            if (me, gate) in self._waiters:
                self._waiters.remove((me, gate))
                return False
        return True  # handed over just as the wait ran out

    def release(self) -> None:
        with self._mutex:
            self._depth -= 1
            if self._depth:
                return
            if self._waiters:
                owner, gate = self._waiters.popleft()
                self._owner, self._depth = owner, 1
                gate.release()
            else:
                self._owner = None


class WriterTurn:
    """The turn of one database file in this process (see the module docstring)."""

    def __init__(self, lock_path: str, timeout_s: float) -> None:
        self.lock_path = lock_path
        self.timeout_s = timeout_s
        self._lock = _FifoLock()
        self._fd: int | None = None
        self._pid = os.getpid()
        self._depth = 0  # how deep the thread holding the turn has nested it
        self._closer: weakref.finalize[..., WriterTurn] | None = None  # closes _fd when the turn goes

    @contextmanager
    def held(self) -> Iterator[bool]:
        """Hold the turn for the block; yields whether it has it (False: ``timeout_s`` ran out
        first, and the block goes on without it)."""
        deadline = time.monotonic() + self.timeout_s
        if not self._lock.acquire(timeout=self.timeout_s):
            yield False  # SQLite's busy handler decides, as without turns
            return
        try:
            self._depth += 1
            flocked = self._depth > 1 or self._flock(deadline)
            try:
                yield flocked
            finally:
                self._depth -= 1
                if self._depth == 0 and flocked and self._fd is not None:
                    unlock_fd(self._fd)
        finally:
            self._lock.release()

    def _flock(self, deadline: float) -> bool:
        """Take the file's flock (polling with a short backoff); False when it could not be had."""
        if self._fd is not None and self._pid != os.getpid():
            # a forked child shares the parent's open file description, and with it the flock:
            # it needs a description of its own (closing its copy of the parent's leaves the
            # parent's flock alone: that goes only with the description's last descriptor)
            if self._closer is not None:
                self._closer()
            self._fd, self._pid = None, os.getpid()
        if self._fd is None:
            try:
                self._fd = open_lock_file(self.lock_path)
            except OSError:
                return False  # a read-only state dir: SQLite's busy handler orders the writers
            self._closer = weakref.finalize(self, os.close, self._fd)
        delay = POLL_FIRST_S
        while True:
            try:
                if lock_fd(self._fd, blocking=False):
                    return True
            except OSError:
                return False
            if time.monotonic() >= deadline:
                return False
            time.sleep(delay)
            delay = min(POLL_MAX_S, delay * 2)


# held by the engines that use them (pipelines/store/db.py), not here: a turn whose engines are
# all gone goes too, and its lock file's descriptor with it
_turns: weakref.WeakValueDictionary[str, WriterTurn] = weakref.WeakValueDictionary()
_turns_lock = threading.Lock()


def turn_for(database: str, timeout_s: float) -> WriterTurn:
    """The one turn of this process for the SQLite file ``database`` (shared by every engine on
    it, so two engines of one process never wait for each other's flock)."""
    path = os.path.realpath(database)
    with _turns_lock:
        found = _turns.get(path)
        if found is None:
            found = WriterTurn(f"{path}.write.lock", timeout_s)
            _turns[path] = found
        return found
