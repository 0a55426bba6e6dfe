"""A real ``git daemon`` on a free loopback port serving bare repositories the test writes.

:class:`GitServer` makes repositories (``create``) and commits to them (``commit``: files to
write, symlinks as ``Link(target)``, submodules as ``Gitlink(sha)``, ``None`` to delete) through
a work tree of its own, pushed to the bare repository the daemon serves; each commit's id is
returned. The daemon is stopped by
pid when the block ends.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from tests.conftest import require


@dataclass(frozen=True)
class Link:
    target: str


@dataclass(frozen=True)
class Gitlink:
    """A submodule entry of the tree: the commit ``sha`` recorded at that path."""

    sha: str


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def git(cwd: Path, *args: str) -> str:
    env = {"PATH": os.environ["PATH"], "HOME": str(cwd), "GIT_CONFIG_NOSYSTEM": "1",
           "GIT_AUTHOR_NAME": "Ada", "GIT_AUTHOR_EMAIL": "ada@example.org",
           "GIT_COMMITTER_NAME": "Ada", "GIT_COMMITTER_EMAIL": "ada@example.org"}
    return subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True).stdout.strip()


@dataclass
class GitServer:
    root: Path
    port: int
    works: dict[str, Path] = field(default_factory=dict)

    def url(self, name: str) -> str:
        return f"git://127.0.0.1:{self.port}/{name}.git"

    def create(self, name: str, branch: str = "main") -> None:
        work = self.root / "work" / name
        work.mkdir(parents=True)
        git(work, "init", "-q", "-b", branch)
        git(self.root, "init", "-q", "--bare", f"{name}.git")
        git(work, "remote", "add", "origin", str(self.root / f"{name}.git"))
        self.works[name] = work

    def commit(self, name: str, files: Mapping[str, str | Link | Gitlink | None], message: str = "change",
               branch: str = "main", executable: tuple[str, ...] = ()) -> str:
        work = self.works[name]
        for path, content in files.items():
            target = work / path
            if content is None:
                git(work, "rm", "-q", "-r", "--", path)
                continue
            if isinstance(content, Gitlink):
                git(work, "update-index", "--add", "--cacheinfo", f"160000,{content.sha},{path}")
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            if target.is_symlink() or target.exists():
                target.unlink()
            if isinstance(content, Link):
                target.symlink_to(content.target)
            else:
                target.write_text(content)
            git(work, "add", *(["--chmod=+x"] if path in executable else []), "--", path)
        git(work, "commit", "-q", "--allow-empty", "-m", message)
        git(work, "push", "-q", "origin", f"HEAD:refs/heads/{branch}")
        return git(work, "rev-parse", "HEAD")

    def tag(self, name: str, tag: str) -> None:
        git(self.works[name], "tag", tag)
        git(self.works[name], "push", "-q", "origin", f"refs/tags/{tag}")


@contextlib.contextmanager
def git_server(root: Path) -> Iterator[GitServer]:
    require(shutil.which("git") is not None, "needs git")
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    proc = subprocess.Popen(["git", "daemon", "--export-all", f"--base-path={root}", "--listen=127.0.0.1",
                             f"--port={port}", "--reuseaddr", str(root)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    server = GitServer(root, port)
    try:
        deadline = time.monotonic() + 10
        while True:
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", port)) == 0:
                    break
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("git daemon did not start")
            time.sleep(0.02)
        yield server
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)
