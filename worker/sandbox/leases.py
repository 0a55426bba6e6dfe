"""Leases that die with their holder (``flock``, :mod:`pipelines.files.locks`): a job's uid slot (no
two live jobs of any instance on the host share host uids) and a job directory's ownership (the
reaper only touches job directories whose owner lock is free).

A lease dies with its holder, but a job's container does not: when a worker is SIGKILLed, its
flocks are gone at once while the job it ran goes on in its cgroup until a reaper kills it. So a uid
slot's lease file also names the job cgroup it was taken for (``holder``), and a free slot whose
last holder's cgroup still has processes is skipped, never handed to a new job: two jobs with the
same host uids could read and signal each other. The check costs one small read and one failed
``open`` on the common path (the cgroup is gone).
"""

from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path

from pipelines.files.locks import FileLock, is_held, try_hold
from worker.errors import SandboxError


def lease_uid_slot(uid_base: int, slots: int, range_size: int, *, registry: Path | None = None,
                   legacy_dir: Path | None = None, start: int = 0, holder: str | None = None,
                   cgroup_root: Path | None = None) -> tuple[int, FileLock]:
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

    ``holder``: the job cgroup (``/<parent>/<job id>``) the slot is for, written into the lease
    file; a slot whose previous holder's cgroup still has processes is skipped (the module's
    docstring says why).
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
        if _overlaps_held(registry, first, range_size) or _holder_still_runs(lease, cgroup_root):
            lease.release()
            continue
        if holder is not None:
            write_owner(lease, holder)
        if legacy_dir is not None:
            legacy_dir.mkdir(parents=True, exist_ok=True)
            old = try_hold(legacy_dir / f"uid-{slot}.lock")
            if old is None:
                lease.release()
                continue
            return slot, _Both(lease, old)
        return slot, lease
    raise SandboxError(f"all {slots} uid slots are in use: too many jobs at once on this host "
                       f"(every sandpit instance of the host counts, and so does a job whose worker died "
                       f"until the reaper has killed it)")


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


def write_owner(lease: FileLock, holder: str | None = None) -> None:
    """Write this process's pid into the held lock file (for people reading it; the lock decides),
    and the job cgroup it holds the lease for, if any."""
    assert lease.fd is not None
    data = (f"{os.getpid()}\n" + (f"{holder}\n" if holder else "")).encode()
    with contextlib.suppress(OSError):
        # written over the old text, then cut to its length only if the old text was longer: a
        # uid slot's file is reused by every job and usually holds a line as long, and truncating
        # a file with data costs a journal transaction on the host's disk (about 1 ms measured
        # here, /run on ext4), a rewrite in place none
        os.pwrite(lease.fd, data, 0)
        if os.fstat(lease.fd).st_size > len(data):
            os.ftruncate(lease.fd, len(data))


# what write_owner writes as a holder: the instance's cgroup parent and a job id (worker/sandbox/instance.py)
_HOLDER = re.compile(r"/(sandpit(?:-[0-9a-f]{1,32})?)/([A-Za-z0-9][A-Za-z0-9_.-]{0,127})")


def holder_cgroup(text: str) -> str | None:
    """The job cgroup named in a lease file's text, if it is one sandpit writes (never a path to
    follow otherwise).

    >>> holder_cgroup("4242\\n/sandpit/0190d6f1-job\\n")
    '/sandpit/0190d6f1-job'
    >>> holder_cgroup("4242\\n/sandpit/../../etc\\n") is None, holder_cgroup("4242\\n") is None
    (True, True)
    """
    lines = text.split("\n")
    if len(lines) < 2:
        return None
    found = _HOLDER.fullmatch(lines[1])
    return None if found is None or ".." in found.group(2) else lines[1]


def _holder_still_runs(lease: FileLock, cgroup_root: Path | None) -> bool:
    """Whether the job cgroup the lease file names still has a process, in any of its cgroups."""
    assert lease.fd is not None
    try:
        text = os.pread(lease.fd, 512, 0).decode("ascii", "replace")
    except OSError:
        return False
    cgroup = holder_cgroup(text)
    if cgroup is None:
        return False
    from worker.sandbox.cgroups import CGROUP_ROOT, is_v2

    root = cgroup_root or CGROUP_ROOT
    base = (root if is_v2(root) else root / "pids") / cgroup.lstrip("/")
    for dirpath, _dirs, _files in os.walk(base):  # nothing to walk (ENOENT) when it was torn down
        try:
            with open(os.path.join(dirpath, "cgroup.procs"), "rb") as f:
                if f.read(16).strip():
                    return True
        except OSError:
            continue
    return False
