"""Leases that die with their holder (``flock``, :mod:`pipelines.files.locks`): a job's uid slot (no
two live jobs of any instance on the host share host uids) and a job directory's ownership (the
reaper only touches job directories whose owner lock is free).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from pipelines.files.locks import FileLock, is_held, try_hold
from worker.errors import SandboxError


def lease_uid_slot(uid_base: int, slots: int, range_size: int, *, registry: Path | None = None,
                   legacy_dir: Path | None = None, start: int = 0) -> tuple[int, FileLock]:
    """The first free uid slot (searching from ``start``), held until the lease is released: slot
    ``n`` is the host uids ``uid_base + n * range_size`` .. ``+ range_size - 1``.

    Host uids belong to the whole host, not to one instance, so the lease lives in the host-wide
    ``registry`` (default ``/run/sandpit-instances/uids``, whatever ``SANDPIT_RUN_DIR`` says) and is
    named by the host range itself (``<first uid>-<count>.lock``): two instances with the same
    ``SANDPIT_UID_BASE`` meet on the same files; instances with other bases may hold ranges that
    overlap without being equal, so a slot whose range overlaps a held one is skipped too. The lock
    is taken first and the overlaps checked after, so of two processes leasing overlapping ranges at
    once at least one sees the other's lock (both may back off; neither keeps a shared uid).

    ``legacy_dir`` (the instance's ``<run>/locks``): the slot is also held as ``uid-<slot>.lock``
    there, where sandpit leased slots before the registry, so that while an upgrade is under way an
    older process of the same instance (``sandpit exec`` still running) and a new one never share a
    slot either way.
    """
    if registry is None:
        from worker.sandbox.instance import uid_registry

        registry = Path(uid_registry())
    registry.mkdir(parents=True, exist_ok=True)
    for i in range(slots):
        slot = (start + i) % slots
        first = uid_base + slot * range_size
        lease = try_hold(registry / f"{first}-{range_size}.lock")
        if lease is None:
            continue
        if _overlaps_held(registry, first, range_size):
            lease.release()
            continue
        if legacy_dir is not None:
            legacy_dir.mkdir(parents=True, exist_ok=True)
            old = try_hold(legacy_dir / f"uid-{slot}.lock")
            if old is None:
                lease.release()
                continue
            return slot, _Both(lease, old)
        return slot, lease
    raise SandboxError(f"all {slots} uid slots are in use: too many jobs at once on this host "
                       f"(every sandpit instance of the host counts)")


class _Both(FileLock):
    """The host-wide lease and the instance's legacy slot lock, released together."""

    def __init__(self, lease: FileLock, legacy: FileLock) -> None:
        assert lease.fd is not None
        super().__init__(lease.fd, lease.path)
        lease.fd = None  # the fd is this object's now
        self._legacy = legacy

    def release(self) -> None:
        super().release()
        self._legacy.release()

    close = release


def _overlaps_held(registry: Path, first: int, count: int) -> bool:
    """Whether a live lease in ``registry`` holds a range overlapping ``first .. first+count-1``
    other than that exact one."""
    mine = f"{first}-{count}.lock"
    for name in os.listdir(registry):
        if name == mine or not name.endswith(".lock"):
            continue
        other_first, dash, other_count = name[:-5].partition("-")
        if not (dash and other_first.isdigit() and other_count.isdigit()):
            continue
        a, n = int(other_first), int(other_count)
        if a < first + count and first < a + n and is_held(registry / name):
            return True
    return False


def write_owner(lease: FileLock) -> None:
    """Write this process's pid into the held lock file (for people reading it; the lock decides)."""
    assert lease.fd is not None
    with contextlib.suppress(OSError):
        os.ftruncate(lease.fd, 0)
        os.pwrite(lease.fd, f"{os.getpid()}\n".encode(), 0)
