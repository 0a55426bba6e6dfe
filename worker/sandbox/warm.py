"""Warm sandboxes: a job's sandbox made, and its container started, before the job arrives.

Most of a short job's time in the engine is the making of its sandbox (job dir, uid slot, disk,
cgroup, rootfs, config: ~2 ms) and the runtime's start of the container (~6 of crun's ~8.5 ms).
Once a job has run, the service worker makes one more sandbox like it while the slot is idle, and
starts its container; the next job like it only has to be told what to run:

- The container's process is a *launcher*: the image's ``/bin/sh`` (or, without one, the job's
  own shell) run as ``sh -s``, reading its commands from a pipe only sandpit writes. The sandbox
  holds nothing of any job: its variables are the image's and sandpit's, never those of the job
  before it.
- A job takes a warm sandbox only when the sandbox was made for its :func:`box_key` (image,
  runtime, profile, and the limits of its cgroup and disk, which no config carries), the OCI config
  sandpit would make for it in that very sandbox is the warm one's, the process's ``args`` and
  ``env`` aside (so user, mounts, namespaces, seccomp, capabilities and rlimits are the same), and
  its first program is the one the job before it ran (its shell: so the ``exec`` finds it). Jobs
  with services, a network, files to plant in the workspace, or another runtime than crun never
  take one, nor make one.
- The launcher is then fed (:func:`launch_text`): ``unset`` of the sandbox's variables the job
  lacks, ``export`` of each of the job's variables, ``exec`` of the job's argv with stdin
  ``/dev/null``. Every name is checked and every value single-quoted, so no job data is ever shell
  syntax. The text is written whole into an empty pipe that can hold it, or not at all: a write
  that falls short kills the sandbox before the pipe closes (an ended pipe would run a cut line).
- From there the job is the cold path's: the same supervisor (limits and deadline counted from
  the feed), log, verdict, artifacts and teardown.

What differs, as a job can see it: for a moment its pid 1 was its image's ``/bin/sh`` (then the
same pid 1, argv, cwd, uid and limits), and the order of its environment is that shell's rather
than sandpit's (the same names and values). In an image without ``/bin/sh`` the launcher is the
job's shell; when that is bash, ``/proc/1/environ`` also holds ``_`` and ``SHLVL=0`` (bash's own
for the program it execs; the job's bash then sets both as it would anyway).

The pool keeps at most one sandbox per job slot (a full pool closes its oldest for the latest
job's kind), and a sandbox waits at most ``idle_s`` (the sweeper closes older ones). A warm sandbox
owns a lease like a job's, so a worker that dies leaves it to the reaper; its launcher ends by
itself once the worker is gone (its pipe's writer closed).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shlex
import signal
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from worker.sandbox.supervise import Started, start

if TYPE_CHECKING:
    from worker.sandbox.engine import Box
    from worker.sandbox.image_process import JobProcess
    from worker.sandbox.images import StoredImage
    from worker.sandbox.request import SandboxRequest
    from worker.sandbox.runtime import Runtime
    from worker.sandbox.seed import Seed

#: a shell variable name (GitLab's variables are these too); anything else keeps a job cold
NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
#: the shells a launcher may be (each reads commands from its stdin with ``-s``)
SHELLS = ("sh", "bash", "dash", "ash", "ksh", "mksh", "zsh")
#: what the launcher shell sets for itself and a job's process would not have
SHELL_OWN = ("PWD", "OLDPWD", "SHLVL")
STOP_WAIT_S = 2.0


@dataclass(eq=False)
class Afterwards:
    """What a job left for its caller once its record is out (``Engine.finish``): its sandbox's
    teardown, and what a warm sandbox for the next job like it is made from."""

    stacks: list[contextlib.ExitStack] = field(default_factory=list)
    shape: tuple[SandboxRequest, StoredImage, str] | None = None


def seed_is_empty(seed: Seed | None) -> bool:
    return seed is None or (seed.source_dir is None and not seed.files)


def warm_eligible(req: SandboxRequest, runtime_name: str, seed: Seed | None) -> bool:
    """Whether a job may take (and leave behind) a warm sandbox: a shell's ``-c`` (a pipeline job's
    command; the launcher is that shell) under crun, no network, no services, nothing planted in
    its workspace.

    >>> from worker.sandbox.request import SandboxRequest
    >>> warm_eligible(SandboxRequest(argv=("/bin/sh", "-c", "true")), "crun", None)
    True
    >>> warm_eligible(SandboxRequest(argv=("python3", "-c", "1")), "crun", None)
    False
    """
    return (runtime_name == "crun" and req.network == "none" and not req.services and seed_is_empty(seed)
            and len(req.argv) >= 2 and req.argv[1] == "-c" and os.path.basename(req.argv[0]) in SHELLS)


def launcher_for(rootfs: str | os.PathLike[str], argv0: str) -> str:
    """The launcher of a sandbox for jobs that start ``argv0`` (a shell) in the image tree
    ``rootfs``: its ``/bin/sh`` when that is an executable file (dash, busybox: neither sets a
    variable of its own for the program it execs, as bash does with ``SHLVL`` and ``_``), else
    ``argv0`` itself. Resolved inside the image, never following a link out of it."""
    from worker.sandbox.shell import is_executable

    root = os.open(rootfs, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        return "/bin/sh" if is_executable(root, "/bin/sh") else argv0
    finally:
        os.close(root)


def box_key(image_key: str, runtime_name: str, req: SandboxRequest) -> tuple[object, ...]:
    """What a job's sandbox is made from besides its OCI config: the image, the runtime, and every
    field of the request ``Engine._box`` reads (the cgroup's and the disk's limits, the profile)."""
    limits = req.limits
    return (image_key, runtime_name, req.profile, limits.memory_bytes, limits.cpus, limits.pids, limits.disk_bytes)


def launch_text(argv: Iterable[str], env: list[str], sandbox_env: list[str]) -> bytes | None:
    """The launcher's input that makes it the job: None when a name is not a shell name.

    >>> print(launch_text(["/bin/sh", "-c", "echo $A"], ["A=x'y", "PATH=/bin"], ["PATH=/bin", "B=1"]).decode(), end="")
    unset B PWD OLDPWD SHLVL
    export A='x'"'"'y'
    export PATH=/bin
    exec /bin/sh -c 'echo $A' </dev/null
    >>> launch_text(["/bin/sh"], ["A-B=1"], []) is None
    True
    """
    job = dict(entry.split("=", 1) for entry in env)
    if not all(NAME.fullmatch(name) for name in job):
        return None
    drop = [entry.split("=", 1)[0] for entry in sandbox_env]
    drop = [name for name in [*drop, *SHELL_OWN] if name not in job]
    lines = [f"unset {' '.join(drop)}"] if drop else []
    lines += [f"export {name}={shlex.quote(value)}" for name, value in job.items()]
    lines.append(f"exec {' '.join(shlex.quote(arg) for arg in argv)} </dev/null")
    return ("\n".join(lines) + "\n").encode()


def _without_process(config: dict[str, Any]) -> dict[str, Any]:
    process = {k: v for k, v in config["process"].items() if k not in ("args", "env")}
    return {**config, "process": process}


@dataclass(eq=False)
class WarmSandbox:
    stack: contextlib.ExitStack
    box: Box
    process: JobProcess  # the launcher: the image's /bin/sh (or the job's shell), run as ``<it> -s``
    argv0: str  # the first program of the jobs it is for (their shell, run by the job before)
    config: dict[str, Any]
    container_id: str
    key: tuple[object, ...]  # :func:`box_key` of the jobs it is for
    started: Started
    feed: int | None  # the launcher's stdin, written once
    made_at: float = field(default_factory=time.monotonic)
    handed: bool = False  # a job's supervisor owns the process now

    def alive(self) -> bool:
        try:  # WNOWAIT: the supervisor still gets the status
            return os.waitid(os.P_PID, self.started.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None
        except ChildProcessError:
            return False

    def feed_job(self, config: dict[str, Any], process: JobProcess) -> bool:
        """Tell the launcher to become the job whose config (made in this sandbox) is ``config``;
        False, and the sandbox untouched, when the job cannot start here."""
        if self.feed is None or not process.argv or process.argv[0] != self.argv0:
            return False
        if _without_process(config) != _without_process(self.config):
            return False
        text = launch_text(process.argv, config["process"]["env"], self.config["process"]["env"])
        if text is None or len(text) > fcntl.fcntl(self.feed, fcntl.F_GETPIPE_SZ) or not self.alive():
            return False
        try:
            written = os.write(self.feed, text)
        except OSError:
            written = -1
        if written != len(text):  # never let a cut text reach an end of input: the sandbox goes first
            self.box.cg.kill_all()
            return False
        os.close(self.feed)
        self.feed = None
        self.handed = True
        return True

    def _stop(self) -> None:
        """The launcher and its runtime ended and reaped, unless a job's supervisor has them."""
        if self.handed:
            return
        self.box.cg.kill_all()
        if self.feed is not None:
            os.close(self.feed)
            self.feed = None
        pid = self.started.pid
        deadline = time.monotonic() + STOP_WAIT_S
        while self.alive() and time.monotonic() < deadline:
            time.sleep(0.005)
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)
        for fd in (self.started.out_r, self.started.err_r):
            with contextlib.suppress(OSError):
                os.close(fd)

    def close(self) -> None:
        self.stack.close()


def start_warm(stack: contextlib.ExitStack, runtime: Runtime, box: Box, process: JobProcess, argv0: str,
               config: dict[str, Any], container_id: str, key: tuple[object, ...]) -> WarmSandbox:
    """The container of ``box`` (its config.json written) started with its launcher waiting on a
    pipe; ``stack`` then stops it first when it closes."""
    feed_r, feed_w = os.pipe2(os.O_CLOEXEC)
    try:
        started = start(runtime, box.job_dir, container_id, stdin_fd=feed_r)
    except BaseException:
        os.close(feed_w)
        raise
    finally:
        os.close(feed_r)
    os.set_blocking(feed_w, False)
    warm = WarmSandbox(stack, box, process, argv0, config, container_id, key, started, feed_w)
    stack.callback(warm._stop)
    return warm


class WarmPool:
    """The warm sandboxes of one engine: at most ``capacity``, each at most ``idle_s`` old."""

    def __init__(self, capacity: int, idle_s: float) -> None:
        self.capacity = capacity
        self.idle_s = idle_s
        self._lock = threading.Lock()
        self._ready: list[WarmSandbox] = []
        self._closed = False

    def make_room(self) -> bool:
        """Room for one more sandbox, the oldest closed if there is none (the latest job's kind is
        the likeliest next); False when the pool is closed."""
        with self._lock:
            if self._closed:
                return False
            old = self._ready.pop(0) if len(self._ready) >= self.capacity else None
        _close_all([old] if old else [])
        return True

    def add(self, warm: WarmSandbox) -> bool:
        """Keep ``warm``; False (the caller closes it) when the pool is full or closed."""
        with self._lock:
            if self._closed or len(self._ready) >= self.capacity:
                return False
            self._ready.append(warm)
            return True

    def take(self, key: tuple[object, ...]) -> WarmSandbox | None:
        """A live warm sandbox made for jobs of ``key`` (:func:`box_key`), out of the pool (the
        newest first); stale or dead ones met on the way are closed."""
        found, stale = None, []
        now = time.monotonic()
        with self._lock:
            for warm in reversed(self._ready):
                if now - warm.made_at > self.idle_s or not warm.alive():
                    stale.append(warm)
                elif warm.key == key:
                    found = warm
                    break
            for warm in [*stale, *([found] if found else [])]:
                self._ready.remove(warm)
        _close_all(stale)
        return found

    def expire(self) -> int:
        """Close the sandboxes older than ``idle_s`` (the sweeper's call); how many."""
        now = time.monotonic()
        with self._lock:
            old = [w for w in self._ready if now - w.made_at > self.idle_s]
            self._ready = [w for w in self._ready if w not in old]
        _close_all(old)
        return len(old)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            ready, self._ready = self._ready, []
        _close_all(ready)

    def __len__(self) -> int:
        with self._lock:
            return len(self._ready)


def _close_all(sandboxes: list[WarmSandbox]) -> None:
    for warm in sandboxes:
        try:
            warm.close()
        except Exception:
            import logging

            logging.getLogger("sandpit.engine").exception("closing warm sandbox %s failed", warm.container_id)
