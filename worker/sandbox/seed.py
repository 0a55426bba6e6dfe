"""Putting files into a job's workspace before it starts: the project's source and the artifacts
of the jobs it depends on.

The source tree is copied as it is, symlinks as symlinks, and artifact files are placed, all
relative to directory fds: every directory of the workspace is opened with O_NOFOLLOW, and every
source file is opened beneath the source's fd with no symlink on the way (``openat2``), so neither a
symlink in the source (``dist -> /etc``, or a listing that names ``a/b`` where ``a`` is a link) nor
one already in the workspace can redirect a read or a write onto the host. The source may come from
a stranger's repository, so it is treated as hostile. Everything ends up owned by the job's user.
"""

from __future__ import annotations

import contextlib
import os
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
    from worker.sandbox.beneath import NotBeneath, open_beneath

    names = sorted(only) if only is not None else sorted(_walk(src))
    src_fd = os.open(src, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    dest_fd = os.open(dest, _DIR_FLAGS)
    src_dirs: dict[str, int] = {"": src_fd}
    dest_dirs: dict[str, int] = {"": dest_fd}
    try:
        for rel in names:
            parts = [p for p in rel.split("/") if p not in ("", ".")]
            if not parts or rel.startswith("/") or ".." in parts:
                continue
            parent, leaf = "/".join(parts[:-1]), parts[-1]
            try:
                if parent not in src_dirs:
                    src_dirs[parent] = open_beneath(src_fd, parent, os.O_PATH | os.O_DIRECTORY)
                st = os.stat(leaf, dir_fd=src_dirs[parent], follow_symlinks=False)
            except (NotBeneath, FileNotFoundError, NotADirectoryError):
                continue  # gone, or reached through a symlink: never followed
            if parent not in dest_dirs:
                dest_dirs[parent] = _dest_dir(dest_fd, parts[:-1], uid, rel)
            d = dest_dirs[parent]
            if stat.S_ISLNK(st.st_mode):
                os.symlink(os.readlink(leaf, dir_fd=src_dirs[parent]), leaf, dir_fd=d)
            elif stat.S_ISREG(st.st_mode):
                _copy_file(src_dirs[parent], leaf, d, stat.S_IMODE(st.st_mode))
            elif stat.S_ISDIR(st.st_mode):
                with contextlib.suppress(FileExistsError):
                    os.mkdir(leaf, 0o755, dir_fd=d)
            else:
                continue
            os.chown(leaf, uid, uid, dir_fd=d, follow_symlinks=False)
    finally:
        for fd in (*src_dirs.values(), *dest_dirs.values()):
            os.close(fd)


_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _copy_file(src_dir: int, name: str, dest_dir: int, mode: int) -> None:
    inp = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=src_dir)
    try:
        out = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode & 0o777,
                      dir_fd=dest_dir)
        try:
            # sendfile: an in-kernel copy between any two regular files (what shutil.copyfile uses)
            while os.sendfile(out, inp, None, 1 << 30) > 0:
                pass
            os.fchmod(out, mode)
        finally:
            os.close(out)
    finally:
        os.close(inp)


def _dest_dir(top_fd: int, parts: list[str], uid: int, rel: str) -> int:
    """An fd of ``top/parts...``, each directory made (owned by ``uid``) or opened with O_NOFOLLOW."""
    fd = os.dup(top_fd)
    try:
        for part in parts:
            with contextlib.suppress(FileExistsError):
                os.mkdir(part, 0o755, dir_fd=fd)
                os.chown(part, uid, uid, dir_fd=fd, follow_symlinks=False)
            try:
                sub = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except OSError as exc:
                raise SandboxError(f"cannot place {rel}: {part} is not a plain directory") from exc
            os.close(fd)
            fd = sub
    except BaseException:
        os.close(fd)
        raise
    return fd


def _walk(root: Path) -> Iterable[str]:
    for dirpath, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if d != ".git"]
        rel_dir = os.path.relpath(dirpath, root)
        for name in files + [d for d in dirs if os.path.islink(os.path.join(dirpath, d))]:
            yield name if rel_dir == "." else f"{rel_dir}/{name}"


def place_file(workspace: Path, rel: str, src: Path, uid: int) -> None:
    """Copy host file ``src`` to ``workspace/rel`` without following any symlink on the way."""
    parts = [p for p in rel.split("/") if p not in ("", ".")]
    if not parts or ".." in parts:
        raise SandboxError(f"refusing to place {rel!r} in the workspace")
    top = os.open(workspace, _DIR_FLAGS)
    try:
        fd = _dest_dir(top, parts[:-1], uid, rel)
    finally:
        os.close(top)
    try:
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
