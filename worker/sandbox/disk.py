"""Per-job disks: one btrfs subvolume with a qgroup limit per job.

The kernel here has no ext4/XFS project quotas, but btrfs qgroups work, so the state dir
holds a loop-mounted btrfs file (``<state>/scratch.img`` on ``<state>/scratch``) with quotas
on. A job's overlay upper dir and its workspace live in its subvolume; writes past the limit
fail with EDQUOT inside the job and the host's own disk never fills.

Subvolumes are made, limited and destroyed with ioctls (no ``btrfs`` exec on the hot path).
"""

from __future__ import annotations

import fcntl
import os
import struct
from pathlib import Path

from worker.errors import ConfigError, SandboxError

_IOC_WRITE, _IOC_READ = 1, 2
_BTRFS = 0x94


def _ioc(direction: int, nr: int, size: int) -> int:
    return (direction << 30) | (size << 16) | (_BTRFS << 8) | nr


_VOL_ARGS = 4096
BTRFS_IOC_SUBVOL_CREATE = _ioc(_IOC_WRITE, 14, _VOL_ARGS)
BTRFS_IOC_SNAP_DESTROY = _ioc(_IOC_WRITE, 15, _VOL_ARGS)
BTRFS_IOC_INO_LOOKUP = _ioc(_IOC_READ | _IOC_WRITE, 18, 4096)
BTRFS_IOC_QGROUP_CREATE = _ioc(_IOC_WRITE, 42, 16)
BTRFS_IOC_QGROUP_LIMIT = _ioc(_IOC_READ, 43, 48)
BTRFS_QGROUP_LIMIT_MAX_RFER = 1


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
    """A size-limited subvolume ``<scratch>/<name>``; ``close()`` destroys it (idempotent)."""

    def __init__(self, scratch: Path, name: str, limit_bytes: int) -> None:
        self.scratch = scratch
        self.name = name
        self.path = scratch / name
        self.limit_bytes = limit_bytes
        self._closed = False
        create_subvolume(scratch, name)
        try:
            limit_subvolume(self.path, limit_bytes)
        except BaseException:
            destroy_subvolume(scratch, name)
            raise

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            destroy_subvolume(self.scratch, self.name)

    def at_limit(self) -> bool:
        """True when the subvolume has (nearly) used up its quota."""
        import subprocess

        try:
            out = subprocess.run(
                ["btrfs", "qgroup", "show", "-r", "--raw", "--sync", "-f", str(self.path)],
                capture_output=True, text=True, check=False, timeout=30,
            ).stdout
        except (OSError, subprocess.TimeoutExpired):
            return False
        for line in out.splitlines():
            fields = line.split()
            if len(fields) >= 4 and fields[0].startswith("0/") and fields[1].isdigit():
                return int(fields[1]) >= self.limit_bytes - 2 * 1024 * 1024
        return False


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
    """Delete the subvolume; a missing one is not an error.

    Its qgroup is left to the kernel, which removes it once the cleaner has dropped the subvolume:
    deleting a qgroup that still has numbers marks all qgroup data inconsistent, and inconsistent
    qgroups stop enforcing limits.
    """
    fd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.ioctl(fd, BTRFS_IOC_SNAP_DESTROY, _vol_args(name))
    except FileNotFoundError:
        return
    except OSError as exc:
        raise SandboxError(f"cannot delete the job's disk {parent / name}: {exc}") from exc
    finally:
        os.close(fd)


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
