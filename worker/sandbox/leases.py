"""Leases that die with their holder: flock on a file, released by the kernel on exit or SIGKILL.

Used for a job's uid slot (no two live jobs share host uids) and for a job directory's
ownership (the reaper only touches job directories whose owner lock is free).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

from worker.errors import SandboxError


class Lease:
    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self.fd: int | None = fd

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def try_lock(path: Path) -> Lease | None:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return Lease(path, fd)


def is_locked(path: Path) -> bool:
    """True when a live process holds the lease at ``path``."""
    try:  # never creates the file: asking about a lease must not leave one behind
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def lease_uid_slot(locks_dir: Path, slots: int, start: int = 0) -> tuple[int, Lease]:
    """The first free uid slot (searching from ``start``), held until the lease is released."""
    locks_dir.mkdir(parents=True, exist_ok=True)
    for i in range(slots):
        slot = (start + i) % slots
        lease = try_lock(locks_dir / f"uid-{slot}.lock")
        if lease is not None:
            return slot, lease
    raise SandboxError(f"all {slots} uid slots are in use: too many jobs at once on this host")


def write_owner(lease: Lease) -> None:
    assert lease.fd is not None
    with contextlib.suppress(OSError):
        os.ftruncate(lease.fd, 0)
        os.pwrite(lease.fd, f"{os.getpid()}\n".encode(), 0)
