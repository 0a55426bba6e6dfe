"""Which shell runs a job's script in an image, found once per image (adapter: reads the image).

GitLab Runner's docker executor runs a job's script with the first of ``/usr/local/bin/bash``,
``/usr/bin/bash`` and ``/bin/bash`` that the image has, else ``/bin/sh``; bash gets ``pipefail``
besides ``errexit``. sandpit does the same, so ``[[ ]]``, arrays, ``source`` and ``set -o pipefail``
behave as on GitLab. The runner probes with a script in every job; sandpit looks in the image's
tree once (three ``openat2`` calls resolved inside the image, never following a link out of it)
and remembers the answer per image key, so no job pays for it.

>>> import tempfile, os
>>> root = tempfile.mkdtemp(); os.makedirs(f"{root}/usr/bin"); os.symlink("usr/bin", f"{root}/bin")
>>> detect_shell(root)
'/bin/sh'
>>> open(f"{root}/usr/bin/bash", "w").close(); os.chmod(f"{root}/usr/bin/bash", 0o755)
>>> detect_shell(root)
'/usr/bin/bash'
"""

from __future__ import annotations

import os
import stat
import threading

from worker.sandbox.beneath import open_in_root

BASH_CANDIDATES = ("/usr/local/bin/bash", "/usr/bin/bash", "/bin/bash")
SH = "/bin/sh"

_cache: dict[str, str] = {}
_lock = threading.Lock()


def detect_shell(rootfs: str | os.PathLike[str]) -> str:
    """The shell GitLab Runner would pick in this image tree."""
    root_fd = os.open(rootfs, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for candidate in BASH_CANDIDATES:
            found = is_executable(root_fd, candidate)
            if found is None:
                return SH  # no openat2 on this kernel: never resolve an image's links on the host
            if found:
                return candidate
        return SH
    finally:
        os.close(root_fd)


def is_executable(root_fd: int, path: str) -> bool | None:
    """Whether ``path``, resolved inside the image tree ``root_fd`` (never out of it), is an
    executable regular file; None when this kernel cannot resolve it so (no openat2)."""
    try:
        fd = open_in_root(root_fd, path, os.O_PATH)
    except OSError:
        return False
    if fd is None:
        return None
    try:
        st = os.fstat(fd)
    finally:
        os.close(fd)
    return stat.S_ISREG(st.st_mode) and bool(st.st_mode & 0o111)


def shell_for_image(key: str, rootfs: str | os.PathLike[str]) -> str:
    """``detect_shell`` once per image key (a layer is never changed after it is built)."""
    with _lock:
        found = _cache.get(key)
    if found is None:
        found = detect_shell(rootfs)
        with _lock:
            _cache[key] = found
    return found


def is_bash(shell: str) -> bool:
    return shell.endswith("/bash")
