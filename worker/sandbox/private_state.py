"""sandpit's host state is root's alone: logs, artifacts, images, the database and the API token
are never readable by another local user.

The privacy is put on the top levels, so it holds for everything beneath whatever mode a file was
written with (a log, an artifact, a ref, a SQLite journal)::

    <state> <run>            0711  the job's root (host uid_base) must pass through to its job dir
    <state>/jobs             0711  (crun and runc resolve <job>/rootfs and the bind sources as the
                                   job's root, inside its user namespace: a 0700 parent fails the
                                   container with EACCES); no listing, and each job dir is
                                   root:<job's gid> 0710, so other users get through to nothing
    every other directory    0700  logs, artifacts, images, scratch, local, redis, net, runtime, ...
    every file               0600  sandpit.db (+ -wal, -shm), api-token, scratch.img, locks

Image layers and the job disks stay usable by jobs under 0700 parents: the overlay reaches its
layers with the credentials of its mounter (root, at mount time), never the job's, and runsc's
gofer runs as host root. Measured with crun, runc and runsc, both profiles, both network modes.

``make_private`` runs at every start (the engine of ``exec``/``run``/the worker, ``sandpit up``) and
also fixes a state dir an older sandpit left 0755/0644: an upgrade closes the hole without a step
of its own. It only tightens modes of entries it owns (never follows a symlink), costs one scandir
of each top level (≈0.05 ms), and never creates anything.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

PASSAGE = 0o711  # search only: the job's root walks through to its job dir
#: top-level directories of the state dir that the job's root must pass through
PASSAGES = frozenset({"jobs"})


def make_private(state_dir: Path, run_dir: Path) -> list[str]:
    """Tighten the modes of ``state_dir``, ``run_dir`` and their entries; returns what it changed.

    >>> import tempfile; d = Path(tempfile.mkdtemp()); (d / "logs").mkdir(mode=0o755)
    >>> _ = (d / "api-token").write_text("t"); os.chmod(d / "api-token", 0o644)
    >>> [Path(p).name for p in sorted(make_private(d, d / "absent"))][1:]
    ['api-token', 'logs']
    >>> oct(os.stat(d).st_mode & 0o777), oct(os.stat(d / "api-token").st_mode & 0o777)
    ('0o711', '0o600')
    >>> import shutil; shutil.rmtree(d)
    """
    changed: list[str] = []
    for top in (state_dir, run_dir):
        if not _tighten(str(top), changed, passage=True):
            continue  # not made yet: whoever makes it comes here again at its next start
        try:
            entries = list(os.scandir(top))
        except OSError:
            continue
        for entry in entries:
            try:
                if entry.is_symlink():
                    continue
                passage = top == state_dir and entry.name in PASSAGES and entry.is_dir(follow_symlinks=False)
                _tighten(entry.path, changed, passage=passage)
            except OSError:
                continue  # removed while we looked
    return changed


def _tighten(path: str, changed: list[str], *, passage: bool) -> bool:
    """A passage gets exactly 0711; anything else loses every group and other bit. False when there
    is nothing there, or it is a symlink, or not ours (owned by another uid): left alone."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    if stat.S_ISLNK(st.st_mode) or st.st_uid != os.geteuid():
        return False
    current = stat.S_IMODE(st.st_mode)
    wanted = PASSAGE if passage else current & ~0o077
    if wanted != current:
        os.chmod(path, wanted)  # only root writes these trees: no one can swap in a link meanwhile
        changed.append(path)
    return True
