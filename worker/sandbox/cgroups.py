"""The job's own cgroup: sandpit makes it, sets every limit on it, watches it, reads usage from it.

The OCI runtime puts the container in a child ``ctr`` of this cgroup, so limits hold for every
runtime alike (crun, runc, runsc) and usage can still be read after the runtime has removed its
child. Works on cgroup v2 and on v1/hybrid hosts (one directory per mounted v1 hierarchy).

OOM is "whole job together": v2 sets ``memory.oom.group``; on v1 the kernel only kills one
task, so the supervisor gets an eventfd from ``cgroup.event_control`` and kills the rest.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
from pathlib import Path

from pipelines.record import record
from worker.errors import SandboxError

CGROUP_ROOT = Path("/sys/fs/cgroup")
PARENT = "sandpit"  # the default instance's; others use ``cgroup_parent(instance_id)``
V1_CONTROLLERS = ("memory", "pids", "cpu", "cpuacct")


@record(frozen=True)
class Usage:
    cpu_s: float
    memory_peak_bytes: int
    pids_peak: int
    oom_kills: int
    pids_limit_hits: int


def is_v2(root: Path = CGROUP_ROOT) -> bool:
    return (root / "cgroup.controllers").exists()


def v1_hierarchies(root: Path = CGROUP_ROOT) -> list[Path]:
    """Every mounted v1 hierarchy (and the v2 one of a hybrid host), where the runtime may mkdir."""
    found = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            mnt = fields[4]
            fstype = fields[fields.index("-") + 1]
            if fstype in ("cgroup", "cgroup2") and mnt.startswith(str(root)):
                found.append(Path(mnt))
    return found


def cgroup_parent(instance_id: str) -> str:
    """The parent cgroup of an instance's jobs: ``sandpit`` for the default instance, else
    ``sandpit-<id>``, a sibling (not a child) so that no instance's reaper, nor an older version's,
    ever lists another's jobs as its own (see ``worker/sandbox/instance.py``).

    >>> cgroup_parent(""), cgroup_parent("9ccc3dce")
    ('sandpit', 'sandpit-9ccc3dce')
    """
    from worker.sandbox.instance import instance_names

    return instance_names(instance_id).cgroup_parent


class JobCgroup:
    """Context manager for ``<hierarchy>/<parent>/<name>``; ``close()`` removes it everywhere."""

    def __init__(self, name: str, *, memory_bytes: int, cpus: float, pids: int,
                 root: Path = CGROUP_ROOT, cpu_period_us: int = 100_000, parent: str = PARENT) -> None:
        self.name = name
        self.parent = parent
        self.root = root
        self.v2 = is_v2(root)
        self.oom_eventfd: int | None = None
        self._closed = False
        self.dirs: dict[str, Path] = {}
        self._refusals = ForkRefusals(f"/{parent}/{name}")  # before the job can fork at all
        try:
            if self.v2:
                self._make_v2(memory_bytes, cpus, pids, cpu_period_us)
            else:
                self._make_v1(memory_bytes, cpus, pids, cpu_period_us)
        except OSError as exc:
            self.close()
            raise SandboxError(f"cannot create the job's cgroup {name}: {exc}") from exc

    @property
    def runtime_path(self) -> str:
        """``cgroupsPath`` for the OCI spec: a child of this cgroup."""
        return f"/{self.parent}/{self.name}/ctr"

    # -- creation ------------------------------------------------------------------------
    def _make_v2(self, memory_bytes: int, cpus: float, pids: int, period: int) -> None:
        parent = self.root / self.parent
        if not parent.exists():
            parent.mkdir(exist_ok=True)
        _enable_controllers(self.root)
        _enable_controllers(parent)
        d = parent / self.name
        d.mkdir()
        self.dirs["unified"] = d
        _write(d / "memory.max", memory_bytes)
        _write(d / "memory.swap.max", 0)
        _write(d / "memory.oom.group", 1)
        _write(d / "pids.max", pids)
        _write(d / "cpu.max", f"{max(1000, int(cpus * period))} {period}")
        _enable_controllers(d)

    def _make_v1(self, memory_bytes: int, cpus: float, pids: int, period: int) -> None:
        for ctrl in V1_CONTROLLERS:
            d = self.root / ctrl / self.parent / self.name
            d.mkdir(parents=True)
            self.dirs[ctrl] = d
        mem = self.dirs["memory"]
        _write(mem / "memory.limit_in_bytes", memory_bytes)
        if (mem / "memory.memsw.limit_in_bytes").exists():
            _write(mem / "memory.memsw.limit_in_bytes", memory_bytes)
        _write(mem / "memory.swappiness", 0)
        _write(self.dirs["pids"] / "pids.max", pids)
        _write(self.dirs["cpu"] / "cpu.cfs_period_us", period)
        _write(self.dirs["cpu"] / "cpu.cfs_quota_us", max(1000, int(cpus * period)))
        efd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        ctl = os.open(mem / "memory.oom_control", os.O_RDONLY | os.O_CLOEXEC)
        try:
            _write(mem / "cgroup.event_control", f"{efd} {ctl}")
        finally:
            os.close(ctl)
        self.oom_eventfd = efd

    # -- reading -------------------------------------------------------------------------
    def pids_limit_hits(self) -> int:
        """Forks refused by the pids limit anywhere in the job, live or after the job has ended.

        The counters: ``pids.events`` ``max`` of the job cgroup and of the runtime's ``ctr`` child.
        Where a refusal is counted depends on the host. cgroup v2 on Linux >= 6.14 counts it
        hierarchically, in the job cgroup that sandpit keeps. Older v2 kernels, and v1 on every
        kernel (this project's hosts: 6.18, pids on v1), count it only in the cgroup of the
        process that forked, ``ctr``, and crun and runc remove ``ctr`` (recursively, even with a
        child sandpit made in it: tried) before ``run`` returns; v1's pids.events also has no
        poll/inotify notification (tried). So a job that hits the limit and exits within one
        poll interval (a shell printing "Cannot fork" and exiting) left no counter to read. The
        kernel's log keeps the end-of-job record: the first refusal in a cgroup is logged
        ("cgroup: fork rejected by pids controller in <path>"), and each job's ``ctr`` is new.
        ``ForkRefusals`` reads it from /dev/kmsg, from a position taken before the job started.
        """
        base = self.dirs.get("unified") or self.dirs["pids"]
        hits = _kv(base / "pids.events").get("max", 0)
        for child in ("ctr",):
            hits += _kv(base / child / "pids.events").get("max", 0)
        return max(hits, self._refusals.read())

    def oom_kills(self) -> int:
        if self.v2:
            return _kv(self.dirs["unified"] / "memory.events").get("oom_kill", 0)
        return _kv(self.dirs["memory"] / "memory.oom_control").get("oom_kill", 0)

    def usage(self) -> Usage:
        try:
            if self.v2:
                d = self.dirs["unified"]
                cpu_s = _kv(d / "cpu.stat").get("usage_usec", 0) / 1e6
                peak = _int(d / "memory.peak")
                pids_peak = _int(d / "pids.peak")
            else:
                cpu_s = _int(self.dirs["cpuacct"] / "cpuacct.usage") / 1e9
                peak = _int(self.dirs["memory"] / "memory.max_usage_in_bytes")
                pids_peak = _int(self.dirs["pids"] / "pids.peak")
            return Usage(cpu_s=round(cpu_s, 6), memory_peak_bytes=peak, pids_peak=pids_peak,
                         oom_kills=self.oom_kills(), pids_limit_hits=self.pids_limit_hits())
        except OSError:
            return Usage(0.0, 0, 0, 0, 0)

    def pids(self) -> list[int]:
        """Every process in the job (all descendants), from the host's pid namespace."""
        base = self.dirs.get("unified") or self.dirs["pids"]
        found: list[int] = []
        for dirpath, _dirs, _files in os.walk(base):
            with contextlib.suppress(OSError), open(os.path.join(dirpath, "cgroup.procs")) as f:
                found.extend(int(p) for p in f.read().split())
        return found

    def kill_all(self) -> None:
        """SIGKILL every process of the job, without asking the runtime."""
        unified = self.dirs.get("unified")
        if unified is not None and (unified / "cgroup.kill").exists():
            with contextlib.suppress(OSError):
                _write(unified / "cgroup.kill", 1)
                return
        for _ in range(50):
            pids = self.pids()
            if not pids:
                return
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)

    # -- teardown ------------------------------------------------------------------------
    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._refusals.close()
        if self.oom_eventfd is not None:
            os.close(self.oom_eventfd)
            self.oom_eventfd = None
        remove_job_cgroups(self.name, self.root, fast=True, parent=self.parent)


class ForkRefusals:
    """The kernel log's record of pids-limit refusals in one job's cgroups (see
    ``JobCgroup.pids_limit_hits`` for why the counters are not enough).

    A reader of /dev/kmsg gets the records logged after it seeked to the end, so opening one per
    job just before the job starts sees exactly that job's period. The path in the message is the
    cgroup's path from its hierarchy's root; it is matched as ``.../<parent>/<job>`` or below (the
    job id is random, so no other job's record matches, and a job cannot write kernel records: its
    /dev has no kmsg). Without /dev/kmsg (no CAP_SYSLOG, a container without it) this reads
    nothing and the counters are all there is.
    """

    PREFIX = "cgroup: fork rejected by pids controller in"

    def __init__(self, cgroup_path: str, kmsg: str = "/dev/kmsg") -> None:
        self.marker = cgroup_path.rstrip("/") + "/"
        self.count = 0
        self._fd: int | None = None
        self._path_next = False  # the message was split: its path is the next record
        try:
            fd = os.open(kmsg, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            return
        try:
            os.lseek(fd, 0, os.SEEK_END)
        except OSError:
            os.close(fd)
            return
        self._fd = fd

    def read(self) -> int:
        """Take the records logged since the last call; the refusals seen so far."""
        while self._fd is not None:
            try:
                record = os.read(self._fd, 8192)
            except BlockingIOError:
                break
            except BrokenPipeError:
                continue  # records were overwritten before we read them; the position moved on
            except OSError:
                break
            if not record:
                break
            self.take(record)
        return self.count

    def take(self, record: bytes) -> None:
        """One /dev/kmsg record: ``<prio>,<seq>,<usec>,<flags>;<message>\\n`` (then key=value lines).

        >>> r = ForkRefusals("/sandpit/abc", kmsg="/nonexistent")
        >>> r.take(b"6,101,5,-;cgroup: fork rejected by pids controller in /sandpit/abc/ctr\\n")
        >>> r.take(b"6,102,5,-;cgroup: fork rejected by pids controller in /sandpit/abcd/ctr\\n")
        >>> r.count
        1
        """
        message = record.partition(b";")[2].split(b"\n", 1)[0].decode("utf-8", "replace")
        if message.startswith(self.PREFIX):
            path = message[len(self.PREFIX):].strip()
        elif self._path_next:
            path = message.strip()
        else:
            return
        self._path_next = not path
        if path and self.marker in path + "/":
            self.count += 1

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def remove_job_cgroups(name: str, root: Path = CGROUP_ROOT, *, fast: bool = False,
                       parent: str = PARENT) -> list[Path]:
    """rmdir ``<parent>/<name>`` (deepest first) in every hierarchy; returns what was removed.

    ``fast`` (a job's own teardown): the hierarchies are the ones this process saw at start, and
    the tree is the job cgroup plus the runtime's ``ctr`` child, so no walk is needed unless
    something else is in there.
    """
    removed = []
    for hierarchy in (_hierarchies_cached(root) if fast else v1_hierarchies(root)) or [root]:
        top = hierarchy / parent / name
        if fast:
            try:
                with contextlib.suppress(FileNotFoundError):
                    _rmdir_retry(top / "ctr")
                _rmdir_retry(top)
                removed.append(top)
                continue
            except FileNotFoundError:
                continue
            except OSError:
                pass  # something else inside: walk it below
        if not top.is_dir():
            continue
        for dirpath, _dirs, _files in sorted(os.walk(top), key=lambda t: -len(t[0])):
            with contextlib.suppress(FileNotFoundError):
                _rmdir_retry(Path(dirpath))
        removed.append(top)
    return removed


_hierarchy_cache: dict[Path, list[Path]] = {}


def _hierarchies_cached(root: Path) -> list[Path]:
    # cgroup hierarchies are mounted once at boot (or by host-prep); reading mountinfo per job
    # costs more than everything else in teardown on a host with many mounts
    if root not in _hierarchy_cache:
        _hierarchy_cache[root] = v1_hierarchies(root)
    return _hierarchy_cache[root]


def _rmdir_retry(path: Path) -> None:
    for _ in range(100):
        try:
            path.rmdir()
            return
        except OSError as exc:
            if exc.errno != 16:  # EBUSY: the last task is still exiting
                raise
            os.sched_yield()
    path.rmdir()


def _enable_controllers(d: Path) -> None:
    wanted = {"memory", "pids", "cpu"}
    have = set((d / "cgroup.controllers").read_text().split())
    enabled = set((d / "cgroup.subtree_control").read_text().split())
    missing = (wanted & have) - enabled
    if missing:
        _write(d / "cgroup.subtree_control", " ".join(f"+{c}" for c in sorted(missing)))


def _write(path: Path, value: object) -> None:
    with open(path, "w") as f:
        f.write(str(value))


def _int(path: Path) -> int:
    try:
        return int(path.read_text().split()[0])
    except (FileNotFoundError, IndexError, ValueError):
        return 0


def _kv(path: Path) -> dict[str, int]:
    out = {}
    try:
        for line in path.read_text().splitlines():
            key, _, value = line.partition(" ")
            if value.strip().lstrip("-").isdigit():
                out[key] = int(value)
    except (FileNotFoundError, NotADirectoryError):
        pass
    except OSError as exc:
        # ENODEV: the cgroup was removed between open and read (the runtime removing ``ctr`` while
        # the supervisor polls its pids.events); it counts as gone, like a missing file
        if exc.errno != errno.ENODEV:
            raise
    return out


def cgroup2_mounts(mountinfo: str) -> list[tuple[str, str]]:
    """(mount point, super options) of every cgroup2 mount in ``mountinfo`` text.

    >>> cgroup2_mounts("35 25 0:30 / /sys/fs/cgroup/unified rw,relatime shared:9 - cgroup2 cgroup2 rw,nsdelegate")
    [('/sys/fs/cgroup/unified', 'rw,nsdelegate')]
    """
    found = []
    for line in mountinfo.splitlines():
        fields = line.split()
        if "-" not in fields:
            continue
        sep = fields.index("-")
        if fields[sep + 1:sep + 2] == ["cgroup2"] and len(fields) > sep + 3:
            found.append((fields[4].replace("\\040", " "), fields[sep + 3]))
    return found
