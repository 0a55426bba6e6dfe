"""Opening a file below a directory fd without ever following a symlink (adapter, Linux).

The image store (and anything else that opens paths built from stored names) resolves them with
``openat2(2)`` and ``RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS``: the kernel
refuses ``..`` that would leave the directory, absolute paths, and a symlink in *any* component,
atomically, so a planted ``layers/<key> -> /`` cannot be raced. Kernels before 5.6 (no openat2)
get a walk of ``O_NOFOLLOW | O_DIRECTORY`` opens, one component at a time, which gives the same
answer. ctypes rather than a dependency: it is one syscall and Python has no wrapper for it.

>>> import os, tempfile
>>> d = tempfile.mkdtemp(); os.symlink("/", os.path.join(d, "up"))
>>> fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
>>> open_beneath(fd, "up/etc/passwd", os.O_RDONLY)
Traceback (most recent call last):
...
worker.sandbox.beneath.NotBeneath: up/etc/passwd: a symlink, '..' or an absolute path on the way (refused)
>>> os.close(fd); os.unlink(os.path.join(d, "up")); os.rmdir(d)
"""

from __future__ import annotations

import errno
import os

_OPENAT2 = {"x86_64": 437, "aarch64": 437}
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_BENEATH = 0x08
_have_openat2: bool | None = None  # learned on first call


class NotBeneath(OSError):
    """The path leaves the directory, or crosses a symlink; never followed."""

    def __str__(self) -> str:
        return str(self.strerror)


_ctypes_state: tuple[object, object, object] | None = None


def _openat2_call() -> tuple[object, object, object]:
    """ctypes, libc and the ``open_how`` struct, made on first use: importing ctypes costs ~4 ms,
    which ``sandpit exec``'s start-up does not pay (it opens beneath with the O_NOFOLLOW walk)."""
    global _ctypes_state
    if _ctypes_state is None:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.syscall.restype = ctypes.c_long

        class OpenHow(ctypes.Structure):
            _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]

        _ctypes_state = (ctypes, libc, OpenHow)
    return _ctypes_state


def _openat2(dir_fd: int, path: str, flags: int, mode: int, resolve: int, nr: int) -> tuple[int, int]:
    ctypes, libc, open_how = _openat2_call()
    how = open_how(flags, mode, resolve)  # type: ignore[operator]
    fd = libc.syscall(ctypes.c_long(nr), ctypes.c_int(dir_fd), path.encode(),  # type: ignore[attr-defined]
                      ctypes.byref(how), ctypes.c_size_t(ctypes.sizeof(how)))  # type: ignore[attr-defined]
    return int(fd), (ctypes.get_errno() if fd < 0 else 0)  # type: ignore[attr-defined]


def open_beneath(dir_fd: int, path: str, flags: int, mode: int = 0, *, atomic: bool = False) -> int:
    """An fd for ``path`` relative to ``dir_fd``; NotBeneath if resolving it would follow a
    symlink or leave ``dir_fd``; the usual OSError (FileNotFoundError, ...) otherwise.

    By default the path is walked one component at a time, each opened relative to the last with
    O_NOFOLLOW: as safe as openat2 here (no component can be swapped for a link between the
    steps, and ``..`` is refused) and free of ctypes on the hot path; ``atomic`` asks for openat2."""
    global _have_openat2
    if not path or path.startswith("/") or "\0" in path:
        raise NotBeneath(errno.EXDEV, f"{path!r}: not a relative path (refused)")
    flags |= os.O_CLOEXEC
    nr = _OPENAT2.get(os.uname().machine)
    if atomic and nr is not None and _have_openat2 is not False:
        fd, err = _openat2(dir_fd, path, flags, mode, RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS,
                           nr)
        if fd >= 0:
            _have_openat2 = True
            return fd
        if err == errno.ENOSYS:
            _have_openat2 = False
        elif err in (errno.ELOOP, errno.EXDEV):
            raise NotBeneath(err, f"{path}: a symlink, '..' or an absolute path on the way (refused)")
        else:
            raise OSError(err, os.strerror(err), path)
    return _walk(dir_fd, path, flags, mode)


def _refused(path: str) -> NotBeneath:
    return NotBeneath(errno.ELOOP, f"{path}: a symlink, '..' or an absolute path on the way (refused)")


def _walk(dir_fd: int, path: str, flags: int, mode: int) -> int:
    parts = path.split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise NotBeneath(errno.EXDEV, f"{path}: a symlink, '..' or an absolute path on the way (refused)")
    current = dir_fd
    try:
        for part in parts[:-1]:
            try:
                nxt = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=current)
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR) and os.path.islink(f"/proc/self/fd/{current}/{part}"):
                    raise _refused(path) from None
                raise
            if current != dir_fd:
                os.close(current)
            current = nxt
        try:
            return os.open(parts[-1], flags | os.O_NOFOLLOW, mode, dir_fd=current)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise _refused(path) from None
            raise
    finally:
        if current != dir_fd:
            os.close(current)


RESOLVE_IN_ROOT = 0x10


def open_in_root(root_fd: int, path: str, flags: int) -> int | None:
    """An fd for ``path`` resolved as if ``root_fd`` were ``/``: symlinks inside an image (``/bin ->
    usr/bin``, absolute targets) are followed but can never leave it (``openat2`` with
    ``RESOLVE_IN_ROOT``). None when the kernel has no openat2; the usual OSError otherwise."""
    nr = _OPENAT2.get(os.uname().machine)
    if nr is None or _have_openat2 is False:
        return None
    fd, err = _openat2(root_fd, path.lstrip("/"), flags | os.O_CLOEXEC, 0, RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS, nr)
    if fd >= 0:
        return fd
    if err == errno.ENOSYS:
        return None
    raise OSError(err, os.strerror(err), path)
