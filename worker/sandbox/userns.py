"""User namespaces that carry a job's id mapping, used to idmap image layers.

A user namespace lives as long as a file descriptor refers to it, so a short-lived child
unshares one, the parent writes its maps and opens ``/proc/<child>/ns/user``, and the child
exits. The fd is cached per uid base for the life of the process (jobs reuse slots).
"""

from __future__ import annotations

import os
import threading

from worker.errors import SandboxError
from worker.sandbox.mounts import CLONE_NEWUSER, unshare

_cache: dict[tuple[int, int], int] = {}
_lock = threading.Lock()


def userns_fd(uid_base: int, size: int) -> int:
    """An fd of a user namespace mapping 0..size-1 to uid_base.. (uids and gids alike)."""
    key = (uid_base, size)
    with _lock:
        if key not in _cache:
            _cache[key] = _make_userns(uid_base, size)
        return _cache[key]


def _make_userns(uid_base: int, size: int) -> int:
    ready_r, ready_w = os.pipe()
    done_r, done_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: only async-signal-safe work until _exit
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
        return os.open(f"/proc/{pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
    finally:
        os.close(ready_r)
        os.close(done_w)
        os.waitpid(pid, 0)
