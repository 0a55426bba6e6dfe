"""Putting files into a job's workspace before it starts: the project's source and the artifacts
of the jobs it depends on.

The source tree is the user's own (trusted) and is copied as it is, symlinks as symlinks. Artifact
files are placed relative to an fd of the workspace, every directory opened with O_NOFOLLOW, so a
symlink in the source tree (``dist -> /etc``) can never redirect a write onto the host.
Everything ends up owned by the job's user.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from worker.errors import SandboxError


@dataclass(frozen=True)
class Seed:
    source_dir: Path | None = None
    source_files: tuple[str, ...] | None = None  # None: the whole source_dir
    files: tuple[tuple[str, Path], ...] = field(default=())  # (path in workspace, host file)


def plant_seed(seed: Seed, workspace: Path, uid: int) -> None:
    if seed.source_dir is not None:
        copy_source(seed.source_dir, workspace, uid, seed.source_files)
    for rel, src in seed.files:
        place_file(workspace, rel, src, uid)


def copy_source(src: Path, dest: Path, uid: int, only: Iterable[str] | None) -> None:
    names = sorted(only) if only is not None else sorted(_walk(src))
    for rel in names:
        if rel.startswith("/") or ".." in rel.split("/"):
            continue
        s = src / rel
        try:
            st = os.lstat(s)
        except FileNotFoundError:
            continue
        d = dest / rel
        _makedirs(d.parent, dest, uid)
        if stat.S_ISLNK(st.st_mode):
            os.symlink(os.readlink(s), d)
        elif stat.S_ISREG(st.st_mode):
            shutil.copyfile(s, d, follow_symlinks=False)
            os.chmod(d, stat.S_IMODE(st.st_mode))
        elif stat.S_ISDIR(st.st_mode):
            d.mkdir(exist_ok=True)
        else:
            continue
        os.lchown(d, uid, uid)


def _walk(root: Path) -> Iterable[str]:
    for dirpath, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if d != ".git"]
        rel_dir = os.path.relpath(dirpath, root)
        for name in files + [d for d in dirs if os.path.islink(os.path.join(dirpath, d))]:
            yield name if rel_dir == "." else f"{rel_dir}/{name}"


def _makedirs(path: Path, top: Path, uid: int) -> None:
    missing = []
    while path != top and not path.exists():
        missing.append(path)
        path = path.parent
    for d in reversed(missing):
        d.mkdir()
        os.lchown(d, uid, uid)


def place_file(workspace: Path, rel: str, src: Path, uid: int) -> None:
    """Copy host file ``src`` to ``workspace/rel`` without following any symlink on the way."""
    parts = [p for p in rel.split("/") if p not in ("", ".")]
    if not parts or ".." in parts:
        raise SandboxError(f"refusing to place {rel!r} in the workspace")
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(workspace, flags)
    try:
        for part in parts[:-1]:
            with contextlib.suppress(FileExistsError):
                os.mkdir(part, 0o755, dir_fd=fd)
                os.chown(part, uid, uid, dir_fd=fd, follow_symlinks=False)
            try:
                sub = os.open(part, flags, dir_fd=fd)
            except OSError as exc:
                raise SandboxError(f"cannot place {rel}: {part} is not a plain directory") from exc
            os.close(fd)
            fd = sub
        with contextlib.suppress(FileNotFoundError):
            st = os.stat(parts[-1], dir_fd=fd, follow_symlinks=False)
            if not stat.S_ISREG(st.st_mode):
                raise SandboxError(f"cannot place {rel}: something that is not a file is in the way")
        out = os.open(parts[-1], os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644,
                      dir_fd=fd)
        try:
            with open(src, "rb") as f:
                while chunk := f.read(1 << 20):
                    os.write(out, chunk)
            os.fchown(out, uid, uid)
        finally:
            os.close(out)
    finally:
        os.close(fd)
