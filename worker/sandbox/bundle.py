"""A container's OCI bundle directory on the host: the job's and each of its services' (adapter).

The bundle holds only what sandpit wrote there (``config.json``, the runtime's log, emptied mount
points), so its config is written private and its removal needs no tree walk in the usual case.
"""

from __future__ import annotations

import os
from pathlib import Path


def write_private(path: Path, data: bytes) -> None:
    """A new file only root can read (0600 whatever the umask): a config holds the job's
    variables, its secrets too."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, data)
    finally:
        os.close(fd)


def remove_bundle(folder: Path) -> None:
    """Remove what sandpit wrote in ``folder``, then ``folder``; anything unexpected goes through
    rmtree (never following a symlink: ``shutil.rmtree`` unlinks links, it does not enter them)."""
    try:
        with os.scandir(folder) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    os.rmdir(entry.path)
                else:
                    os.unlink(entry.path)
        os.rmdir(folder)
    except FileNotFoundError:
        return
    except OSError:
        import shutil  # only for the unexpected: kept off the engine's import path

        shutil.rmtree(folder, ignore_errors=True)
