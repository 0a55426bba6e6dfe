"""One memory/CPU budget for all the processes of a worker of several (``sandpit worker
--processes P``, worker/service/processes.py) (adapter).

A one-process worker admits jobs while their sum fits its budget (worker/service/context.py
``Budget``), and a job larger than the whole budget runs alone. Split into P fixed shares, a job
larger than one share would have had to run alone in its process while the others filled theirs:
two such jobs in two processes added up to more than the host's budget. So the processes keep one
ledger instead, with exactly one worker's rule:

- a directory per worker (``<state>/admission/<supervisor pid>``, 0700), one small file per
  process (``<index>``: what that process has admitted, ``"<memory bytes> <cpus>"``), and an
  ``flock`` on ``lock`` around every read-and-change of the ledger;
- ``take`` admits a job when what all processes have admitted plus the job fits the whole budget
  (a job larger than the budget is counted as the whole of it, so it runs alone in the worker);
  otherwise it waits, woken at once by a ``give`` of its own process and every ``POLL_S`` for the
  others' (no cross-process wake-up: a job waits at most that much longer than it must);
- a process that starts writes 0 into its file first, so what a dead one held is given back by its
  replacement; supervisors' directories whose pid is gone are removed by the next that starts.

Every open is ``O_NOFOLLOW`` under a directory descriptor. Cost: one flock and P small reads and
one write per ``take`` and per ``give``: 0.009 ms for the two here (5,000 of each), against ≈ 20 ms
of CPU per job.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import threading
import weakref
from collections.abc import Iterator
from pathlib import Path

from pipelines.files.locks import lock_fd, unlock_fd

POLL_S = 0.01
_OPEN = os.O_NOFOLLOW | os.O_CLOEXEC


class SharedBudget:
    """The budget of one process of a worker of ``parts`` processes (see the module docstring).
    ``memory_bytes``/``cpus`` are this process's part (what its presence row reports, so the
    rows of one worker add up to the host's); admission is against the whole."""

    def __init__(self, directory: Path, index: int, parts: int, memory_bytes: int, cpus: float) -> None:
        self.total_memory, self.total_cpus = memory_bytes, cpus
        self.memory_bytes, self.cpus = memory_bytes // parts, cpus / parts
        self.index, self.parts = index, parts
        self.cond = threading.Condition()
        self.mine: tuple[int, float] = (0, 0.0)
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._dir = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | _OPEN)
        self._lock = os.open("lock", os.O_RDWR | os.O_CREAT | _OPEN, 0o600, dir_fd=self._dir)
        self._file = os.open(str(index), os.O_RDWR | os.O_CREAT | _OPEN, 0o600, dir_fd=self._dir)
        weakref.finalize(self, _close, self._file, self._lock, self._dir)
        with self._ledger():
            self._write(self.mine)

    def take(self, memory: int, cpus: float) -> tuple[int, float]:
        memory, cpus = min(memory, self.total_memory), min(cpus, self.total_cpus)  # a huge job runs alone
        with self.cond:
            while not self._admit(memory, cpus):
                self.cond.wait(POLL_S)
        return memory, cpus

    def give(self, memory: int, cpus: float) -> None:
        with self.cond:
            with self._ledger():
                self.mine = (self.mine[0] - memory, self.mine[1] - cpus)
                self._write(self.mine)
            self.cond.notify_all()

    def admitted(self) -> tuple[int, float]:
        """What all processes of the worker have admitted now."""
        with self._ledger():
            memory, cpus = self._others()
        return memory + self.mine[0], cpus + self.mine[1]

    def _admit(self, memory: int, cpus: float) -> bool:
        with self._ledger():
            others_memory, others_cpus = self._others()
            if (others_memory + self.mine[0] + memory > self.total_memory
                    or others_cpus + self.mine[1] + cpus > self.total_cpus + 1e-9):
                return False
            self.mine = (self.mine[0] + memory, self.mine[1] + cpus)
            self._write(self.mine)
            return True

    @contextlib.contextmanager
    def _ledger(self) -> Iterator[None]:
        lock_fd(self._lock)
        try:
            yield
        finally:
            unlock_fd(self._lock)

    def _others(self) -> tuple[int, float]:
        memory, cpus = 0, 0.0
        for index in range(self.parts):
            if index == self.index:
                continue
            try:
                fd = os.open(str(index), os.O_RDONLY | _OPEN, dir_fd=self._dir)
            except FileNotFoundError:
                continue  # not started yet: it holds nothing
            try:
                text = os.pread(fd, 64, 0).decode("ascii", "replace").split()
            finally:
                os.close(fd)
            with contextlib.suppress(ValueError, IndexError):
                memory, cpus = memory + int(text[0]), cpus + float(text[1])
        return memory, cpus

    def _write(self, value: tuple[int, float]) -> None:
        data = f"{value[0]} {value[1]:.6f}\n".encode()
        os.pwrite(self._file, data.ljust(48), 0)  # one fixed-size write: a reader never sees half of two


def ledger_directory(state_dir: Path, supervisor: int) -> Path:
    """This worker's ledger; removes those of supervisors that are gone (their last process has
    ended: nothing reads them any more)."""
    parent = state_dir / "admission"
    with contextlib.suppress(FileNotFoundError), os.scandir(parent) as entries:
        for entry in entries:
            if entry.name.isdigit() and int(entry.name) != supervisor \
                    and not os.path.exists(f"/proc/{int(entry.name)}") and entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path, ignore_errors=True)
    return parent / str(supervisor)


def _close(*fds: int) -> None:
    for fd in fds:
        os.close(fd)
