"""The only I/O of the pipeline language: read a pipeline file and its local includes from disk.

Everything else in this package is pure and takes the texts this module returns. Paths stay
inside the repository (the nearest folder above the file holding ``.git``, else the file's own
folder): ``..`` and symlinks that lead outside are not followed.

>>> import tempfile, pathlib
>>> root = pathlib.Path(tempfile.mkdtemp())
>>> _ = (root / "ci.yml").write_text("include: lib.yml\\n")
>>> _ = (root / "lib.yml").write_text("a: {script: [x]}\\n")
>>> sorted(load_pipeline(root / "ci.yml").files)
['ci.yml', 'lib.yml']
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from pipelines.language.globs import compile_glob
from pipelines.language.includes import local_include_patterns

_MAX_FILES = 150
_MAX_LISTED = 200_000
_MAX_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True)
class LoadedPipeline:
    files: dict[str, str]  # repository-relative path -> text, entry first
    entry: str
    root: Path
    existing: frozenset[str]  # every file of the work tree, for rules:exists


def find_repository_root(path: Path) -> Path:
    for folder in [path.parent, *path.parent.parents]:
        if (folder / ".git").exists():
            return folder
    return path.parent


def list_files(root: Path) -> frozenset[str]:
    """Repository-relative paths of the work tree (``.git`` skipped, capped at 200,000)."""
    found: list[str] = []
    for folder, dirs, names in os.walk(root):
        dirs[:] = [d for d in dirs if d != ".git"]
        base = Path(folder).relative_to(root)
        found.extend((base / name).as_posix() for name in names)
        if len(found) > _MAX_LISTED:
            break
    return frozenset(found)


def _read_inside(root: Path, relative: str) -> str | None:
    path = (root / relative).resolve()
    if not path.is_relative_to(root.resolve()) or not path.is_file() or path.stat().st_size > _MAX_BYTES:
        return None
    return path.read_text(encoding="utf-8", errors="replace")


def load_pipeline(path: Path, root: Path | None = None) -> LoadedPipeline:
    """The entry file and, transitively, every ``include: local`` file it names that exists.

    Raises OSError when the entry file itself cannot be read.
    """
    path = path.absolute()
    root = (root or find_repository_root(path)).absolute()
    entry = path.relative_to(root).as_posix() if path.is_relative_to(root) else path.name
    files: dict[str, str] = {entry: path.read_text(encoding="utf-8", errors="replace")}
    existing = list_files(root)
    queue = [entry]
    while queue and len(files) < _MAX_FILES:
        current = queue.pop(0)
        for pattern in local_include_patterns(files[current], current):
            if any(char in pattern for char in "*?[{"):
                regex = compile_glob(pattern, include=True)
                names = sorted(name for name in existing if regex.match(name))
            else:
                names = [pattern]
            for name in names:
                if name in files:
                    continue
                text = _read_inside(root, name)
                if text is not None:
                    files[name] = text
                    queue.append(name)
    return LoadedPipeline(files, entry, root, existing)
