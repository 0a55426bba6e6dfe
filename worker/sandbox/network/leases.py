"""Address leases shared by every worker process of a host: one file per leased slot, held by ``flock``.

Layout: ``state_dir/net/leases/<subnet>/<slot>`` containing ``"<pid> <job id>\\n"``.

* Taking a lease is atomic: a private temporary file is created, locked and written, then ``link``-ed
  to the slot's name; ``link`` fails with EEXIST when another job holds the slot, so the name never
  exists unlocked or half written.
* The owner keeps the file open and locked (``O_CLOEXEC``, so the job's processes never inherit it).
  When the owner process dies, however it dies, the kernel drops the lock: a lease whose lock can be
  taken belongs to a dead process. No pid files, no pid-reuse races.
* The owner releases by unlinking, then closing. The reaper (one at a time, under ``reap.lock``) removes
  a lease only when it can lock it *and* the name still points at the inode it locked.
"""

from __future__ import annotations

import errno
import itertools
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from pipelines.files.locks import lock_fd
from worker.sandbox.network.addresses import AddressPlan
from worker.sandbox.network.errors import AddressesExhausted

_counter = itertools.count()


@dataclass
class Lease:
    """A slot held by this process until ``release()`` (idempotent)."""

    slot: int
    path: Path
    fd: int = field(repr=False)

    def rewrite(self, owner: str) -> None:
        """Replace the owner line (the pool marks its entries' leases ``pool <token>``)."""
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, f"{owner}\n".encode(), 0)

    def unlock(self) -> None:
        """Close without unlinking: the lease stays, unlocked (a pool entry's, owned by no process)."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def release(self) -> None:
        if self.fd < 0:
            return
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        os.close(self.fd)
        self.fd = -1


@dataclass(frozen=True)
class StaleLease:
    slot: int
    path: Path
    owner: str


class LeaseStore:
    """Leases of one subnet under ``directory``."""

    def __init__(self, directory: Path, plan: AddressPlan) -> None:
        self.plan = plan
        self.directory = directory / plan.lease_dir_name
        self.directory.mkdir(parents=True, exist_ok=True)

    def acquire(self, job_id: str, start: int) -> Lease:
        """Lease the first free slot at or after ``start`` (callers spread ``start`` at random)."""
        temp = self.directory / f".new-{os.getpid()}-{next(_counter)}"
        fd = os.open(temp, os.O_CREAT | os.O_EXCL | os.O_RDWR | os.O_CLOEXEC, 0o600)
        try:
            lock_fd(fd, blocking=False)  # a new file: nobody else can hold it
            os.write(fd, f"{os.getpid()} {job_id}\n".encode())
            for slot in self.plan.probe_order(start):
                path = self.directory / str(slot)
                try:
                    os.link(temp, path)
                except FileExistsError:
                    continue
                os.unlink(temp)
                return Lease(slot, path, fd)
        except BaseException:
            os.unlink(temp)
            os.close(fd)
            raise
        os.unlink(temp)
        os.close(fd)
        raise AddressesExhausted(f"all {self.plan.slots} addresses of {self.plan.subnet} are leased")

    def held_slots(self) -> list[int]:
        """Slots with a lease file (live or stale)."""
        return sorted(int(p.name) for p in self.directory.iterdir() if p.name.isdigit())


#: a temporary lease file younger than this may still be on its way to being locked; leave it alone
TEMP_GRACE_S = 60.0


def stale_leases(directory: Path) -> Iterator[tuple[StaleLease, int]]:
    """Leases (and leftover temporary files) under ``directory`` whose owner is dead, each yielded
    *locked* with its fd: the caller removes what it must, then ``remove_stale`` + close the fd.
    Call only while holding the reap lock."""
    if not directory.is_dir():
        return
    for entry in sorted(directory.iterdir()):
        if not entry.name.isdigit() and _creator_alive(entry.name):
            try:  # a live creator may not have locked its temporary file yet
                if time.time() - entry.stat().st_mtime < TEMP_GRACE_S:
                    continue
            except FileNotFoundError:
                continue
        try:
            fd = os.open(entry, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            continue
        if not lock_fd(fd, blocking=False):
            os.close(fd)
            continue
        try:
            same = os.stat(entry).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if not same:
            os.close(fd)
            continue
        owner = os.pread(fd, 4096, 0).decode(errors="replace").strip()
        slot = int(entry.name) if entry.name.isdigit() else -1
        yield StaleLease(slot, entry, owner), fd


def _creator_alive(name: str) -> bool:
    """Whether the process named by a temporary lease file (``.new-<pid>-<n>``) may still exist;
    True when the name says nothing (then only age tells).

    >>> _creator_alive(f".new-{os.getpid()}-1"), _creator_alive(".new-999999999-1"), _creator_alive("x")
    (True, False, True)
    """
    parts = name.split("-")
    if len(parts) != 3 or parts[0] != ".new" or not parts[1].isdigit():
        return True
    return os.path.exists(f"/proc/{parts[1]}")


def unlink_if_same(path: Path, fd: int) -> None:
    """Unlink ``path`` if it is still the file ``fd`` has open (and locked)."""
    try:
        if os.stat(path).st_ino == os.fstat(fd).st_ino:
            os.unlink(path)
    except FileNotFoundError:
        pass


def remove_stale(lease: StaleLease, fd: int) -> None:
    try:
        os.unlink(lease.path)
    except OSError as exc:
        if exc.errno != errno.ENOENT:
            raise
    finally:
        os.close(fd)


class ReapLock:
    """Serialises reapers (and host preparation) across processes: ``with ReapLock(path): ...``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd = -1

    def __enter__(self) -> ReapLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(self.path, os.O_CREAT | os.O_RDWR | os.O_CLOEXEC, 0o600)
        lock_fd(self.fd)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
