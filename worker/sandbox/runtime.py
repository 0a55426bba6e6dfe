"""Driving an OCI runtime (crun, runc, runsc) directly: no daemon, no shim.

Each runtime keeps its container state under a root of sandpit's own
(``<run_dir>/runtime/<name>``), so ``sandpit reap`` sees sandpit's containers and nothing else.
The runtime process is started with posix_spawn; it runs the container in the foreground and
its stdout/stderr are the pipes sandpit reads.

crun is started from a read-only view of its binary (:func:`read_only_view`), made once per host
and binary, rather than from the binary itself: it otherwise makes such a view of itself on every
``run`` (bind, read-only remount, exec from it, lazy unmount), so that a job cannot overwrite the
host's runtime through ``/proc/<pid>/exe`` (CVE-2019-5736). Measured here (crun 1.8, kernel 6.18):
that costs about 2 ms of an 11 ms ``crun run``. The protection is the same: the runtime that
touches the job runs from a read-only mount, which crun takes for its own clone when
``_LIBCONTAINER_CLONED_BINARY`` is set (its check: that variable, and the executable on a
read-only mount). runc 1.1 makes its clone in ``runc init``, whose environment it builds itself,
so a view would save it nothing: it is started as it is.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from pipelines.record import record
from worker.errors import RuntimeUnavailable

PREFERENCE = ("crun", "runc", "runsc")
HYBRID_FIX = (
    "crun 1.8 refuses a cgroup-v1 'hybrid' host whose v2 hierarchy still has controllers ({ctrls}). "
    "Move them to v1 once per boot with `sandpit host-prep` (it mounts the hugetlb v1 hierarchy), "
    "or choose --runtime runc"
)


#: runsc's ``--network`` for each job network mode. Never ``host``: that hands the job's sockets to
#: the host kernel (gVisor's "hostinet"), so the job talks to the host's network stack directly and
#: its own loopback is the namespace's, which nobody brought up (``none`` had no working 127.0.0.1).
#: ``none`` is gVisor's netstack with a loopback and nothing else; ``sandbox`` is the netstack too,
#: given the veth, addresses and routes sandpit put in the job's netns (so the egress policy on the
#: host side of the veth still decides everything the job sends).
RUNSC_NETWORK = {"none": "none", "egress": "sandbox"}


#: the runtimes whose ``run`` re-executes itself from a read-only clone unless started from one
CLONING = ("crun",)
CLONED_ENV = "_LIBCONTAINER_CLONED_BINARY"
#: all a runtime's process is given of an environment: nothing of sandpit's own
RUNTIME_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}


@record(frozen=True)
class Runtime:
    name: str
    binary: str
    root: Path
    network: str = "none"  # the job network mode (none|egress); only runsc's flags depend on it
    #: a read-only view of ``binary`` that ``run`` starts from (see the module docstring), or None
    launch: str | None = None

    def for_network(self, mode: str) -> Runtime:
        """This runtime for a job whose network mode is ``mode``; RuntimeUnavailable when this
        host's runsc cannot give a job that network (see :func:`runsc_netstack_problem`)."""
        if mode not in RUNSC_NETWORK:
            raise ValueError(f"unknown network mode {mode!r}")
        if self.name == "runsc" and RUNSC_NETWORK[mode] == "sandbox":
            problem = runsc_netstack_problem(self.binary)
            if problem:
                raise RuntimeUnavailable(problem)
        return self if mode == self.network else Runtime(self.name, self.binary, self.root, mode, self.launch)

    def base(self) -> list[str]:
        cmd = [self.binary, f"--root={self.root}"]
        if self.name == "runsc":
            cmd += [f"--network={RUNSC_NETWORK[self.network]}"]
        return cmd

    def run_argv(self, bundle: Path, container_id: str, log_file: Path) -> list[str]:
        # the runtime's own errors go to log_file, so the job's stderr carries only the job's output
        logging_opts = [f"--log={log_file}", "--log-format=json"]
        return [self.launch or self.binary, *logging_opts, *self.base()[1:], "run", "--bundle", str(bundle),
                container_id]

    def run_env(self) -> dict[str, str]:
        """The environment ``run`` gets: :data:`RUNTIME_ENV`, and the clone marker when it starts
        from its read-only view."""
        env = dict(RUNTIME_ENV)
        if self.launch is not None:
            env[CLONED_ENV] = "1"
        return env

    def kill(self, container_id: str, signal_name: str) -> None:
        import subprocess

        subprocess.run([*self.base(), "kill", "--all", container_id, signal_name],
                       capture_output=True, check=False, timeout=30)

    def delete(self, container_id: str) -> None:
        import subprocess

        subprocess.run([*self.base(), "delete", "--force", container_id],
                       capture_output=True, check=False, timeout=30)

    def containers(self) -> list[str]:
        """Ids of the containers this runtime still has state for under sandpit's root."""
        if not self.root.is_dir():
            return []
        ids = set()
        for entry in self.root.iterdir():
            # crun/runc keep a directory per container; runsc keeps "<sandbox>_sandbox:<id>.state" files
            name = entry.name.split("_sandbox:", 1)[0]
            if name.startswith("sandpit-"):
                ids.add(name)
        return sorted(ids)

    def has_state(self, container_id: str) -> bool:
        if self.name == "runsc":
            return any(p.name.startswith(container_id + "_sandbox:") for p in self.root.iterdir())
        return (self.root / container_id).exists()

    def forget(self, container_id: str) -> None:
        """Remove state files the runtime left after a crash (never following links)."""
        for entry in self.root.iterdir():
            if entry.name == container_id or entry.name.startswith(container_id + "_sandbox:"):
                if entry.is_dir() and not entry.is_symlink():
                    import shutil

                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    with contextlib.suppress(FileNotFoundError):
                        entry.unlink()


#: the first gVisor release whose ``--network=sandbox`` tells a job's netns from the host's on
#: kernels that give every netns its own ``net.core.rmem_default`` (older releases judged by that
#: file and refuse every namespace: "cannot run with network enabled in root network namespace")
RUNSC_NETSTACK_SINCE = 20240801
_runsc_problems: dict[str, str | None] = {}


def runsc_netstack_problem(binary: str) -> str | None:
    """Why this runsc cannot run an egress job (its netstack on sandpit's veth), or None.

    Measured here: Debian 12's runsc 0.0~20221219 with ``--network=sandbox`` fails every egress
    job on kernel 6.18 as above. ``--network=host`` would work but hands the job's sockets to the
    host kernel, so sandpit refuses the job up front instead (infra_error, a message naming the fix).
    """
    if binary not in _runsc_problems:
        import re
        import subprocess

        try:
            text = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10,
                                  check=False).stdout
        except (OSError, subprocess.TimeoutExpired):
            text = ""
        found = re.search(r"(?:release-|0\.0~)(\d{8})", text)
        version = int(found.group(1)) if found else 0
        _runsc_problems[binary] = None if version >= RUNSC_NETSTACK_SINCE else (
            f"this runsc ({text.splitlines()[0].strip() if text else 'version unknown'}) cannot give a job "
            f"a network of its own on this kernel (gVisor releases before {RUNSC_NETSTACK_SINCE} take every "
            "network namespace for the host's); run egress jobs with --runtime crun or runc, or install "
            "a newer runsc. sandpit never runs them with runsc --network=host.")
    return _runsc_problems[binary]


def which(name: str) -> str | None:
    """The executable ``name`` on PATH, like ``shutil.which`` (whose import costs ~5 ms of start-up)."""
    for folder in os.environ.get("PATH", os.defpath).split(os.pathsep):
        candidate = os.path.join(folder or ".", name)
        if os.access(candidate, os.X_OK) and not os.path.isdir(candidate):
            return candidate
    return None


def hybrid_v2_controllers(cgroup_root: Path = Path("/sys/fs/cgroup")) -> list[str]:
    """Controllers still on the v2 hierarchy of a hybrid host (empty on pure v1 or v2 hosts)."""
    unified = cgroup_root / "unified" / "cgroup.controllers"
    if (cgroup_root / "cgroup.controllers").exists() or not unified.exists():
        return []
    return unified.read_text().split()


def runtime_problem(name: str) -> str | None:
    """Why ``name`` cannot run jobs on this host, or None when it can."""
    if name not in PREFERENCE:
        return f"unknown runtime {name!r}: choose one of {', '.join(PREFERENCE)}"
    if which(name) is None:
        return f"{name} is not installed: apt-get install {name}"
    if name == "crun":
        ctrls = hybrid_v2_controllers()
        if ctrls:
            return HYBRID_FIX.format(ctrls=", ".join(ctrls))
    return None


def choose_runtime(requested: str | None, run_dir: Path) -> Runtime:
    """The requested runtime if it works here, else the first that does; a clear error if none."""
    names = [requested] if requested else list(PREFERENCE)
    problems = []
    for name in names:
        problem = runtime_problem(name)
        if problem is None:
            binary = which(name)
            assert binary is not None
            root = run_dir / "runtime" / name
            root.mkdir(parents=True, exist_ok=True, mode=0o700)
            launch = read_only_view(binary, run_dir / "bin" / name) if name in CLONING else None
            return Runtime(name=name, binary=binary, root=root, launch=launch)
        problems.append(f"{name}: {problem}")
    raise RuntimeUnavailable("no OCI runtime works on this host:\n  " + "\n  ".join(problems))


def _is_view_of(view: str, source: os.stat_result) -> bool:
    """Whether ``view`` is a read-only mount of the very file ``source`` describes: a bind of a
    file has its inode; a package upgrade replaces the binary (a new inode), so an old view no
    longer matches."""
    try:
        st = os.stat(view)
        return (st.st_dev, st.st_ino) == (source.st_dev, source.st_ino) and bool(
            os.statvfs(view).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def read_only_view(binary: str, view: Path) -> str | None:
    """The path of a read-only bind mount of ``binary`` at ``view`` (made, or remade after the
    binary changed, under a lock; kept for later processes), or None when one cannot be made
    here: the runtime then makes its own clone, as it would without sandpit."""
    try:
        source = os.stat(binary)
        if _is_view_of(str(view), source):
            return str(view)
        from pipelines.files.locks import hold
        from worker.sandbox.mounts import MS_BIND, MS_NODEV, MS_NOSUID, MS_RDONLY, MS_REMOUNT, mount, umount

        view.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        with hold(view.parent / ".lock"):
            if _is_view_of(str(view), source):
                return str(view)
            while True:  # an older view (a replaced binary): lazily, a runtime may be starting from it
                try:
                    umount(str(view))
                except OSError:
                    break
            fd = os.open(view, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o700)
            os.close(fd)
            mount(binary, str(view), "", MS_BIND, "")
            mount("", str(view), "", MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV, "")
            return str(view) if _is_view_of(str(view), source) else None
    except OSError:
        return None


def spawn(argv: list[str], stdout_fd: int, stderr_fd: int, env: dict[str, str], stdin_fd: int | None = None) -> int:
    """posix_spawn the runtime with stdin ``stdin_fd`` (None: /dev/null), the given output fds and
    ``env`` (:meth:`Runtime.run_env`); returns its pid."""
    devnull = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    try:
        actions = [
            (os.POSIX_SPAWN_DUP2, devnull if stdin_fd is None else stdin_fd, 0),
            (os.POSIX_SPAWN_DUP2, stdout_fd, 1),
            (os.POSIX_SPAWN_DUP2, stderr_fd, 2),
        ]
        return os.posix_spawn(argv[0], argv, env, file_actions=actions, setsigdef=(2, 15))
    finally:
        os.close(devnull)
