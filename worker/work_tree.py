"""A project's files as ``sandpit run`` and ``sandpit submit`` see them, and the tar ``submit`` sends (adapter).

The files of a git work tree are its tracked and its untracked-but-not-ignored files
(``git ls-files --cached --others --exclude-standard``), the rule ``sandpit run`` seeds every
job's ``/workspace`` with; outside git, every file of the folder (``.git`` skipped).
:func:`tree_archive` packs them into a gzipped tar in memory for ``POST /api/v1/runs``
(``source.archive``): regular files with their executable bit, symlinks as links (their target
is never read), nothing else; the API checks it again entry by entry.

>>> import tempfile
>>> root = Path(tempfile.mkdtemp()); _ = (root / "a.txt").write_text("x")
>>> tree_files(root)
('a.txt',)
"""

from __future__ import annotations

import io
import os
import stat
import subprocess
import tarfile
from pathlib import Path


def git_listing(root: Path) -> tuple[str, ...] | None:
    """The work tree's files as git lists them; None when ``root`` is not in a git work tree."""
    proc = subprocess.run(["git", "-C", str(root), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        return None
    return tuple(sorted({f for f in proc.stdout.split("\0") if f and ((root / f).exists() or (root / f).is_symlink())}))


def tree_files(root: Path) -> tuple[str, ...]:
    """:func:`git_listing`, or every file under ``root`` outside git (``.git`` skipped, links not followed)."""
    listed = git_listing(root)
    if listed is not None:
        return listed
    found: list[str] = []
    for folder, dirs, names in os.walk(root):
        dirs[:] = [d for d in dirs if d != ".git"]
        base = os.path.relpath(folder, root)
        links = [d for d in dirs if os.path.islink(os.path.join(folder, d))]
        found.extend(n if base == "." else f"{base}/{n}" for n in [*names, *links])
    return tuple(sorted(found))


def tree_archive(root: Path, files: tuple[str, ...]) -> bytes:
    """A gzipped tar of ``files`` under ``root`` (see the module docstring)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz", compresslevel=6, format=tarfile.PAX_FORMAT) as tar:
        for name in files:
            path = root / name
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                continue
            info = tarfile.TarInfo(name)
            info.mtime = int(st.st_mtime)
            if stat.S_ISLNK(st.st_mode):
                info.type, info.linkname = tarfile.SYMTYPE, os.readlink(path)
                tar.addfile(info)
            elif stat.S_ISREG(st.st_mode):
                info.size, info.mode = st.st_size, 0o755 if st.st_mode & 0o111 else 0o644
                with open(path, "rb") as handle:
                    tar.addfile(info, handle)
    return buffer.getvalue()
