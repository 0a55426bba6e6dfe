"""Thin ctypes wrappers for the mount syscalls sandpit needs (x86-64 numbers).

mount(2)/umount2(2) come from libc; open_tree, move_mount and mount_setattr are called by
number because glibc 2.36 has no wrappers for the last one.
"""

from __future__ import annotations

import ctypes
import os

# the process's own symbols include libc; ctypes.util.find_library would exec ldconfig
_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long

_SYSCALLS = {
    "x86_64": {"open_tree": 428, "move_mount": 429, "mount_setattr": 442},
    "aarch64": {"open_tree": 428, "move_mount": 429, "mount_setattr": 442},
}

OPEN_TREE_CLONE = 1
O_CLOEXEC = 0o2000000
AT_EMPTY_PATH = 0x1000
AT_RECURSIVE = 0x8000
MOVE_MOUNT_F_EMPTY_PATH = 0x4
MOUNT_ATTR_RDONLY = 0x1
MOUNT_ATTR_NOSUID = 0x2
MOUNT_ATTR_NODEV = 0x4
MOUNT_ATTR_IDMAP = 0x00100000
MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_BIND = 0x1000
MS_NODEV = 0x4
MS_REMOUNT = 0x20
MNT_DETACH = 0x2
UMOUNT_NOFOLLOW = 0x8
CLONE_NEWUSER = 0x10000000


class MountAttr(ctypes.Structure):
    _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64),
                ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64)]


def _nr(name: str) -> int:
    return _SYSCALLS[os.uname().machine][name]


def _check(ret: int, what: str) -> int:
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return ret


def open_tree(path: str, flags: int) -> int:
    return _check(_libc.syscall(_nr("open_tree"), -100, path.encode(), ctypes.c_uint(flags)), f"open_tree {path}")


def move_mount_to(fd: int, target: str) -> None:
    _check(_libc.syscall(_nr("move_mount"), fd, b"", -100, target.encode(),
                         ctypes.c_uint(MOVE_MOUNT_F_EMPTY_PATH)), f"move_mount {target}")


def mount_setattr(fd: int, attr: MountAttr, flags: int = AT_EMPTY_PATH) -> None:
    _check(_libc.syscall(_nr("mount_setattr"), fd, b"", ctypes.c_uint(flags), ctypes.byref(attr),
                         ctypes.c_size_t(ctypes.sizeof(attr))), "mount_setattr")


def mount(source: str, target: str, fstype: str, flags: int, data: str) -> None:
    _check(_libc.mount(source.encode(), target.encode(), fstype.encode(), ctypes.c_ulong(flags),
                       data.encode()), f"mount {fstype} on {target}")


def umount(target: str, flags: int = MNT_DETACH | UMOUNT_NOFOLLOW) -> None:
    _check(_libc.umount2(target.encode(), flags), f"umount {target}")


def unshare(flags: int) -> None:
    _check(_libc.unshare(flags), "unshare")


def idmapped_clone(source: str, target: str, userns_fd: int) -> None:
    """Attach at ``target`` a read-only view of ``source`` whose owners are shifted by ``userns_fd``."""
    fd = open_tree(source, OPEN_TREE_CLONE | O_CLOEXEC | AT_RECURSIVE)
    try:
        attr = MountAttr(attr_set=MOUNT_ATTR_IDMAP | MOUNT_ATTR_RDONLY | MOUNT_ATTR_NODEV,
                         attr_clr=0, propagation=0, userns_fd=userns_fd)
        mount_setattr(fd, attr, AT_EMPTY_PATH | AT_RECURSIVE)
        move_mount_to(fd, target)
    finally:
        os.close(fd)


def mounts_under(prefix: str) -> list[str]:
    """Mount points at or below ``prefix``, deepest first."""
    points = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            point = line.split()[4].encode().decode("unicode_escape")
            if point == prefix or point.startswith(prefix.rstrip("/") + "/"):
                points.append(point)
    return sorted(points, key=len, reverse=True)
