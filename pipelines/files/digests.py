"""Whether a stored file still holds the bytes its sha256 names: hashed once per file version.

The artifact store (worker side, ``worker.sandbox.blobs``) and the API's downloads both check a
content-addressed file before trusting it, and both go through :func:`fd_intact`. Hashing a large
file on every read would cost a full read each time, so a match is remembered in memory under
(sha256, device, inode, size, mtime, ctime): ctime cannot be set from user space, so any later
change to the file (a rewrite, a truncate, a rename over it) makes a new key and is hashed again
(to the kernel's timestamp granularity, a few ms: a rewrite in the very tick of the check could
hide, which only someone who can already write the store could try). A file whose ctime moves
while it is hashed is not called intact. The memory is bounded (``_REMEMBERED_MAX`` entries,
least recently used dropped first).

>>> import hashlib, os, tempfile
>>> fd, name = tempfile.mkstemp()
>>> _ = os.write(fd, b"abc")
>>> fd_intact(fd, hashlib.sha256(b"abc").hexdigest()), fd_intact(fd, "0" * 64)
(True, False)
>>> os.close(fd); os.unlink(name)
"""

from __future__ import annotations

import hashlib
import os
import stat
import threading
from collections import OrderedDict

__all__ = ["fd_intact", "remember_intact"]

CHUNK = 1 << 20
_REMEMBERED_MAX = 65_536

_Key = tuple[str, int, int, int, int, int]
_remembered: OrderedDict[_Key, None] = OrderedDict()
_lock = threading.Lock()


def fd_intact(fd: int, sha256: str) -> bool:
    """Whether ``fd`` is a regular file whose bytes hash to ``sha256`` (read with ``pread``, so the
    fd's offset is left alone)."""
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        return False
    key = _key(sha256, st)
    with _lock:
        if key in _remembered:
            _remembered.move_to_end(key)
            return True
    digest = hashlib.sha256()
    offset = 0
    while chunk := os.pread(fd, CHUNK, offset):
        digest.update(chunk)
        offset += len(chunk)
    if digest.hexdigest() != sha256 or os.fstat(fd).st_ctime_ns != st.st_ctime_ns:
        return False
    _remember(key)
    return True


def remember_intact(sha256: str, st: os.stat_result) -> None:
    """Note that the file version ``st`` describes holds ``sha256``'s bytes (its writer hashed them
    as it wrote them), so a reader does not hash it again."""
    _remember(_key(sha256, st))


def _key(sha256: str, st: os.stat_result) -> _Key:
    return (sha256, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _remember(key: _Key) -> None:
    with _lock:
        _remembered[key] = None
        _remembered.move_to_end(key)
        while len(_remembered) > _REMEMBERED_MAX:
            _remembered.popitem(last=False)
