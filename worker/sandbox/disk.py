"""Per-job disks: one btrfs subvolume with a qgroup limit per job.

The kernel here has no ext4/XFS project quotas, but btrfs qgroups work, so the state dir
holds a loop-mounted btrfs file (``<state>/scratch.img`` on ``<state>/scratch``) with quotas
on. A job's overlay upper dir and its workspace live in its subvolume; writes past the limit
fail with EDQUOT inside the job and the host's own disk never fills.

Subvolumes are made, limited, listed and destroyed with ioctls (no ``btrfs`` exec on the hot
path). libbtrfsutil's Python binding (PyPI ``btrfsutil``) would do the same through a C extension
to build, and its recursive delete goes by path names inside the subvolume, which the job chose;
the handful of ioctls below go by subvolume id.

What holds a job to ``--disk``
------------------------------
The limit is on the bytes the job's subvolume *references* (``max_rfer``), and every write of the
job lands in that one subvolume, whatever the path (workspace bind mount, overlay upper dir):
reflinks (FICLONE, FICLONERANGE, FIDEDUPERANGE, ``copy_file_range``) inside it share extents the
subvolume references once, so a copy is free and fresh data is charged; hard links and holes hold
no data, ``fallocate`` reserves; metadata (inodes, directory entries, xattrs, inline files) is
charged as tree blocks, so inode floods hit EDQUOT as data does (tests/sandbox/hostile/
test_disk_escape.py has each).

What escaped it is a *nested* subvolume: any user with write access may create one
(``BTRFS_IOC_SUBVOL_CREATE``/``_V2``) or snapshot a subvolume of their own (``SNAP_CREATE``/
``_V2``), and it gets a level-0 qgroup of its own, with no limit. Two lines stop that:

1. The seccomp profile (seccomp.json) refuses every ioctl of btrfs's type byte (0x94) with EPERM,
   except the VFS reflink and dedupe ioctls that share it. A level-1 qgroup over the job's
   subvolume was considered and refused: with full qgroup accounting the kernel never puts a new
   subvolume into its parent's higher qgroups (only simple quotas do, kernel 6.7+, and the
   btrfs-progs here (6.2) cannot enable them; switching modes would also reset every live job's
   accounting); membership is what the *creator* passes in the _V2 inherit argument, so a job's
   subvolume would simply not join. The whole type byte rather than the four creating ioctls: the
   rest are either admin-only or tell a job about the host's tree (neighbour subvolumes are named
   by job id), and no build needs them. Under runsc, gVisor's own kernel answers btrfs ioctls on
   its files with ENOTTY: nothing reaches the host (tested).
2. Teardown and reap find nested subvolumes in the btrfs tree (the root tree's ROOT_REF items,
   ``BTRFS_IOC_TREE_SEARCH``), never by walking directories the job controls, and delete them
   deepest first by id (``BTRFS_IOC_SNAP_DESTROY_V2`` with ``BTRFS_SUBVOL_SPEC_BY_ID``, kernel 5.7;
   sandpit needs 5.19 anyway for overlays over idmapped layers). A subvolume that got there
   however cannot make teardown fail (it did: ENOTEMPTY, ``error/infra_error``, and a disk that no
   ``reap`` could remove), and the usage that decides ``disk_quota`` counts it.
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct
import sys
from collections.abc import Iterator
from pathlib import Path

from worker.errors import ConfigError, SandboxError

_IOC_WRITE, _IOC_READ = 1, 2
_BTRFS = 0x94


def _ioc(direction: int, nr: int, size: int) -> int:
    return (direction << 30) | (size << 16) | (_BTRFS << 8) | nr


_VOL_ARGS = 4096  # struct btrfs_ioctl_vol_args and _v2 are both 4096 bytes
BTRFS_IOC_SNAP_CREATE = _ioc(_IOC_WRITE, 1, _VOL_ARGS)
BTRFS_IOC_SYNC = _ioc(0, 8, 0)
BTRFS_IOC_SUBVOL_CREATE = _ioc(_IOC_WRITE, 14, _VOL_ARGS)
BTRFS_IOC_SNAP_DESTROY = _ioc(_IOC_WRITE, 15, _VOL_ARGS)
BTRFS_IOC_TREE_SEARCH = _ioc(_IOC_READ | _IOC_WRITE, 17, 4096)
BTRFS_IOC_INO_LOOKUP = _ioc(_IOC_READ | _IOC_WRITE, 18, 4096)
BTRFS_IOC_SNAP_CREATE_V2 = _ioc(_IOC_WRITE, 23, _VOL_ARGS)
BTRFS_IOC_SUBVOL_CREATE_V2 = _ioc(_IOC_WRITE, 24, _VOL_ARGS)
BTRFS_IOC_QGROUP_CREATE = _ioc(_IOC_WRITE, 42, 16)
BTRFS_IOC_QGROUP_LIMIT = _ioc(_IOC_READ, 43, 48)
BTRFS_IOC_SNAP_DESTROY_V2 = _ioc(_IOC_WRITE, 63, _VOL_ARGS)
BTRFS_QGROUP_LIMIT_MAX_RFER = 1
BTRFS_SUBVOL_SPEC_BY_ID = 1 << 4

_ROOT_TREE, _FS_TREE, _QUOTA_TREE = 1, 5, 8  # tree ids; the top-level subvolume is the FS tree
_ROOT_REF_KEY, _QGROUP_INFO_KEY = 156, 242
_U64_MAX = (1 << 64) - 1
_SEARCH_KEY = struct.Struct("=7Q4I4Q")  # struct btrfs_ioctl_search_key, 104 bytes
_SEARCH_HEADER = struct.Struct("=3Q2I")  # struct btrfs_ioctl_search_header, 32 bytes
# EDQUOT comes while a write's reservation (data, plus a few tree blocks per item of metadata)
# would pass the limit, so a disk that refused a write can show a little less than the limit once
# the reservations are gone; measured here: 64-80 KiB below it after floods of files, directories,
# inline files, xattrs, long symlinks and hard links
AT_LIMIT_SLACK = 2 * 1024 * 1024


def _vol_args(name: str) -> bytearray:
    raw = name.encode()
    if b"/" in raw or len(raw) > 255:
        raise SandboxError(f"bad subvolume name {name!r}")
    buf = bytearray(_VOL_ARGS)
    buf[8 : 8 + len(raw)] = raw
    return buf


def is_mounted(path: Path) -> bool:
    target = str(path)
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == target for line in f)


def ensure_scratch(state_dir: Path, size_bytes: int) -> Path:
    """Mount (making it first if needed) the btrfs scratch filesystem; idempotent."""
    mnt = state_dir / "scratch"
    if is_mounted(mnt):
        return mnt
    image = state_dir / "scratch.img"
    state_dir.mkdir(parents=True, exist_ok=True)
    mnt.mkdir(exist_ok=True)
    try:
        if not image.exists():
            with open(image, "wb") as f:
                f.truncate(size_bytes)
            _run(["mkfs.btrfs", "-q", "-f", str(image)])
        _run(["mount", "-o", "loop,noatime", str(image), str(mnt)])
        _run(["btrfs", "quota", "enable", str(mnt)])
    except FileNotFoundError as exc:
        raise ConfigError("btrfs-progs is missing: apt-get install btrfs-progs") from exc
    return mnt


def _run(cmd: list[str]) -> None:
    import subprocess

    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise ConfigError(f"{' '.join(cmd)} failed: {proc.stderr.strip()}")


class JobDisk:
    """A size-limited subvolume ``<scratch>/<name>``; ``close()`` destroys it and every subvolume
    nested in it (idempotent)."""

    def __init__(self, scratch: Path, name: str, limit_bytes: int) -> None:
        self.scratch = scratch
        self.name = name
        self.path = scratch / name
        self.limit_bytes = limit_bytes
        self._closed = False
        create_subvolume(scratch, name)
        try:
            self.id = subvolume_id(self.path)
            limit_subvolume(self.path, limit_bytes)
        except BaseException:
            destroy_subvolume(scratch, name)
            raise

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            destroy_subvolume_tree(self.scratch, self.id)

    def used_bytes(self) -> tuple[int, int]:
        """Bytes referenced by the job's subvolume, and by the subvolumes nested in it, as of now."""
        fd = _open_dir(self.scratch)
        try:
            return _usage(fd, _subtree(fd, self.id))
        finally:
            os.close(fd)

    def quota_hit(self, job_failed: bool) -> bool:
        """Whether the job ran into its disk limit: it failed with its disk (nearly) full, or
        nested subvolumes (which escaped the limit) took it past ``--disk``, and then it exceeded
        the limit whatever its exit code. A job that succeeded costs one tree search, no commit."""
        try:
            fd = _open_dir(self.scratch)
            try:
                subs = _subtree(fd, self.id)
                if not job_failed and len(subs) == 1:
                    return False
                own, nested = _usage(fd, subs)
            finally:
                os.close(fd)
        except OSError:
            return False
        if nested and own + nested > self.limit_bytes:
            return True
        return job_failed and own + nested >= self.limit_bytes - AT_LIMIT_SLACK

    def at_limit(self) -> bool:
        """True when the job's subvolumes have (nearly) used up the quota."""
        return self.quota_hit(job_failed=True)


def _usage(fd: int, subs: list[int]) -> tuple[int, int]:
    fcntl.ioctl(fd, BTRFS_IOC_SYNC)  # qgroup numbers are brought up to date by a commit
    own, *nested = (_referenced(fd, sub) for sub in subs)
    return own, sum(nested)


def _open_dir(path: Path) -> int:
    return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)


def create_subvolume(parent: Path, name: str) -> None:
    fd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.ioctl(fd, BTRFS_IOC_SUBVOL_CREATE, _vol_args(name))
    except OSError as exc:
        raise SandboxError(f"cannot create the job's disk {parent / name}: {exc}") from exc
    finally:
        os.close(fd)


def subvolume_id(path: Path) -> int:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        buf = bytearray(4096)
        struct.pack_into("QQ", buf, 0, 0, 256)
        fcntl.ioctl(fd, BTRFS_IOC_INO_LOOKUP, buf)
        return int(struct.unpack_from("Q", buf, 0)[0])
    finally:
        os.close(fd)


def limit_subvolume(path: Path, limit_bytes: int) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        args = struct.pack("QQQQQQ", 0, BTRFS_QGROUP_LIMIT_MAX_RFER, limit_bytes, 0, 0, 0)
        fcntl.ioctl(fd, BTRFS_IOC_QGROUP_LIMIT, bytearray(args))
    except OSError as exc:
        raise SandboxError(f"cannot limit the job's disk {path}: {exc} (is quota enabled?)") from exc
    finally:
        os.close(fd)


def destroy_subvolume(parent: Path, name: str) -> None:
    """Delete the subvolume ``parent/name``; a missing one is not an error.

    Its qgroup is left to the kernel, which removes it once the cleaner has dropped the subvolume:
    deleting a qgroup that still has numbers marks all qgroup data inconsistent, and inconsistent
    qgroups stop enforcing limits.
    """
    fd = _open_dir(parent)
    try:
        fcntl.ioctl(fd, BTRFS_IOC_SNAP_DESTROY, _vol_args(name))
    except FileNotFoundError:
        return
    except OSError as exc:
        raise SandboxError(f"cannot delete the job's disk {parent / name}: {exc}") from exc
    finally:
        os.close(fd)


def destroy_subvolume_tree(scratch: Path, top_id: int) -> list[int]:
    """Delete subvolume ``top_id`` of the scratch filesystem and every subvolume nested in it,
    deepest first; returns the ids deleted (gone ones are not an error).

    The nested ones are found in the btrfs tree and deleted by id, so nothing the job named or
    moved is followed. A subvolume made while this runs (a job process still alive) shows as
    ENOTEMPTY: the tree is read again, a few times, before giving up.
    """
    fd = _open_dir(scratch)
    try:
        attempts = 4
        while True:
            try:
                # reversed: each subvolume comes after its parent in the walk, so children go first
                deleted = [sub for sub in reversed(_subtree(fd, top_id)) if _destroy_by_id(fd, sub)]
                break
            except OSError as exc:
                attempts -= 1
                if exc.errno != errno.ENOTEMPTY or attempts == 0:
                    raise SandboxError(f"cannot delete the job's disk (subvolume {top_id} of {scratch}): "
                                       f"{exc}") from exc
    finally:
        os.close(fd)
    if len(deleted) > 1:
        _warn(f"deleted {len(deleted) - 1} subvolume(s) nested in subvolume {top_id} of {scratch}")
    return deleted


def _destroy_by_id(fd: int, subvol_id: int) -> bool:
    args = bytearray(_VOL_ARGS)
    struct.pack_into("=Q", args, 16, BTRFS_SUBVOL_SPEC_BY_ID)  # flags
    struct.pack_into("=Q", args, 56, subvol_id)  # the union after fd, transid, flags, unused[4]
    try:
        fcntl.ioctl(fd, BTRFS_IOC_SNAP_DESTROY_V2, args)
    except FileNotFoundError:
        return False
    return True


def subvolumes(scratch: Path) -> dict[str, int]:
    """The top-level subvolumes of the scratch filesystem (one per job disk): name → id."""
    fd = _open_dir(scratch)
    try:
        found = {}
        for child, ref in _tree_items(fd, _ROOT_TREE, _FS_TREE, _ROOT_REF_KEY):
            (name_len,) = struct.unpack_from("=H", ref, 16)  # after dirid, sequence
            found[ref[18 : 18 + name_len].decode(errors="surrogateescape")] = child
        return found
    finally:
        os.close(fd)


def nested_subvolumes(scratch: Path, top_id: int) -> list[int]:
    """Ids of the subvolumes nested (at any depth) in subvolume ``top_id``, parents first."""
    fd = _open_dir(scratch)
    try:
        return _subtree(fd, top_id)[1:]
    finally:
        os.close(fd)


def _subtree(fd: int, top_id: int) -> list[int]:
    """``top_id`` and every subvolume below it, each after its parent (iterative: no depth limit)."""
    order, todo = [], [top_id]
    while todo:
        sub = todo.pop()
        order.append(sub)
        todo.extend(child for child, _ref in _tree_items(fd, _ROOT_TREE, sub, _ROOT_REF_KEY))
    return order


def _referenced(fd: int, subvol_id: int) -> int:
    for _key, info in _tree_items(fd, _QUOTA_TREE, 0, _QGROUP_INFO_KEY, subvol_id, subvol_id):
        return int(struct.unpack_from("=Q", info, 8)[0])  # after generation: rfer
    return 0


def _tree_items(fd: int, tree_id: int, objectid: int, item_type: int, min_offset: int = 0,
                max_offset: int = _U64_MAX) -> Iterator[tuple[int, bytes]]:
    """``(offset, item)`` of each item keyed ``(objectid, item_type, offset)`` of one tree, in
    offset order (BTRFS_IOC_TREE_SEARCH: root only, which sandpit is)."""
    while True:
        buf = bytearray(4096)
        _SEARCH_KEY.pack_into(buf, 0, tree_id, objectid, objectid, min_offset, max_offset, 0, _U64_MAX,
                              item_type, item_type, 4096, 0, 0, 0, 0, 0)
        fcntl.ioctl(fd, BTRFS_IOC_TREE_SEARCH, buf)
        count = struct.unpack_from("=I", buf, 64)[0]  # nr_items: how many the kernel returned
        if count == 0:
            return
        pos = _SEARCH_KEY.size
        offset = min_offset
        for _ in range(count):
            _transid, obj, offset, kind, length = _SEARCH_HEADER.unpack_from(buf, pos)
            pos += _SEARCH_HEADER.size
            if obj == objectid and kind == item_type:
                yield offset, bytes(buf[pos : pos + length])
            pos += length
        if offset >= max_offset:
            return
        min_offset = offset + 1


def _warn(message: str) -> None:
    # logging costs ~6 ms to import: only log when the entry point has set logging up (workers, -v)
    logging = sys.modules.get("logging")
    if logging is not None:
        logging.getLogger("sandpit.disk").warning("%s", message)


def ensure_quota_consistent(mnt: Path) -> bool:
    """Rescan the qgroups if the kernel marked them inconsistent (limits are not enforced then).

    Returns True when a rescan was needed.
    """
    import subprocess

    shown = subprocess.run(["btrfs", "qgroup", "show", str(mnt)], capture_output=True, text=True, check=False)
    if "inconsistent" not in (shown.stdout + shown.stderr):
        return False
    _run(["btrfs", "quota", "rescan", "-w", str(mnt)])
    return True
