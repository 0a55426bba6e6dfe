"""User namespaces that carry a job's id mapping, used to idmap image layers.

A user namespace lives as long as something refers to it. sandpit pins one per uid slot by
bind-mounting its nsfs file at ``<run_dir>/userns/<uid_base>`` (made once per boot by a
short-lived child that unshares it), so every later process opens a file instead of forking.

The pin is per run dir (per instance), but the host uids it maps are not: which job may use which
range is decided host-wide, by the lease of ``leases.lease_uid_slot`` in ``/run/sandpit-instances``,
so two instances never run jobs under the same host uids even though each pins its own namespace.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from pipelines.files.locks import hold
from worker.errors import SandboxError
from worker.sandbox.mounts import CLONE_NEWUSER, MS_BIND, mount, unshare

_fds: dict[str, int] = {}


def userns_fd(run_dir: Path, uid_base: int, size: int) -> int:
    """An fd of a user namespace mapping 0..size-1 to uid_base.. (uids and gids alike)."""
    pin = run_dir / "userns" / f"{uid_base}-{size}"
    key = str(pin)
    if key in _fds:
        return _fds[key]
    fd = _open_pinned(pin)
    if fd is None:
        pin.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        with hold(pin.parent / ".lock"):
            fd = _open_pinned(pin)
            if fd is None:
                _make_pinned(pin, uid_base, size)
                fd = _open_pinned(pin)
        if fd is None:
            raise SandboxError(f"could not pin a user namespace at {pin}")
    _fds[key] = fd
    return fd


def _open_pinned(pin: Path) -> int | None:
    try:
        fd = os.open(pin, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except FileNotFoundError:
        return None
    if _is_nsfs(fd):
        return fd
    os.close(fd)
    return None


def _is_nsfs(fd: int) -> bool:
    # every namespace file lives on the one nsfs device; the placeholder file under it does not
    return os.fstat(fd).st_dev == os.stat("/proc/self/ns/user").st_dev


def _make_pinned(pin: Path, uid_base: int, size: int) -> None:
    ready_r, ready_w = os.pipe()
    done_r, done_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: unshare, report, wait to be released, exit
        try:
            os.close(ready_r)
            os.close(done_w)
            unshare(CLONE_NEWUSER)
            os.write(ready_w, b"1")
            os.read(done_r, 1)
        finally:
            os._exit(0)
    os.close(ready_w)
    os.close(done_r)
    try:
        if os.read(ready_r, 1) != b"1":
            raise SandboxError("could not create a user namespace (unshare failed)")
        mapping = f"0 {uid_base} {size}\n"
        with open(f"/proc/{pid}/uid_map", "w") as f:
            f.write(mapping)
        with open(f"/proc/{pid}/setgroups", "w") as f:
            f.write("deny")
        with open(f"/proc/{pid}/gid_map", "w") as f:
            f.write(mapping)
        with contextlib.suppress(FileExistsError):
            pin.touch(mode=0o600, exist_ok=False)
        mount(f"/proc/{pid}/ns/user", str(pin), "", MS_BIND, "")
    finally:
        os.close(ready_r)
        os.close(done_w)
        os.waitpid(pid, 0)
