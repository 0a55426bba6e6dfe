"""The OCI runtime ``config.json`` of one job, as a pure function of its inputs.

Everything security-relevant about a container is decided here, so every line is
covered by a unit test on the generated document (tests/unit/sandbox/test_spec.py).

>>> from worker.sandbox.request import SandboxRequest
>>> spec = build_spec(SpecInputs(request=SandboxRequest(argv=("true",)), rootfs="/r",
...     workspace="/w", uid_base=200000, cgroups_path="/sandpit/j1/ctr", seccomp=load_seccomp()))
>>> spec["process"]["noNewPrivileges"]
True
"""

from __future__ import annotations

import json
import posixpath
from pathlib import Path

from pipelines.record import record
from worker import TYPE_CHECKING
from worker.sandbox.request import SandboxRequest, workdir_problems

if TYPE_CHECKING:
    from typing import Any

# Docker's default capability set; granted inside the user namespace only.
DEFAULT_CAPS: tuple[str, ...] = (
    "CAP_AUDIT_WRITE", "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FOWNER", "CAP_FSETID", "CAP_KILL",
    "CAP_MKNOD", "CAP_NET_BIND_SERVICE", "CAP_NET_RAW", "CAP_SETFCAP", "CAP_SETGID", "CAP_SETPCAP",
    "CAP_SETUID", "CAP_SYS_CHROOT",
)
# What a job has no use for and could learn the host from: Docker's list (the first two lines),
# then what else names the host, its kernel build or sandpit's own paths. A file is covered with
# /dev/null (reads are empty), a directory with an empty read-only tmpfs; a path this kernel does
# not have is skipped by the runtime. Kept: what ps, top, free, df, mount, nproc and language
# runtimes read (/proc/<pid>, /proc/self/mountinfo, meminfo, stat, cpuinfo, loadavg, uptime,
# /sys/fs/cgroup, /sys/devices/system/cpu, /sys/kernel/mm). runsc has a /proc and /sys of its
# own (gVisor's, which show none of these) and ignores the list.
MASKED_PATHS: tuple[str, ...] = (
    "/proc/acpi", "/proc/asound", "/proc/interrupts", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
    "/proc/sched_debug", "/proc/scsi", "/proc/timer_list", "/proc/timer_stats",
    "/sys/devices/virtual/powercap", "/sys/firmware",
    # the host's boot command line and kernel configuration
    "/proc/cmdline", "/proc/bootconfig", "/proc/config.gz",
    # the kernel's symbols, modules, memory and I/O layout: an exploit's map of the host
    "/proc/kallsyms", "/proc/modules", "/proc/iomem", "/proc/ioports", "/proc/dma", "/proc/mtrr",
    "/proc/kmsg", "/proc/kpagecgroup", "/proc/kpagecount", "/proc/kpageflags", "/proc/slabinfo",
    "/proc/vmallocinfo", "/proc/pagetypeinfo",
    "/sys/kernel/vmcoreinfo", "/sys/kernel/notes", "/sys/kernel/boot_params", "/sys/kernel/btf",
    "/sys/kernel/slab", "/sys/kernel/debug", "/sys/kernel/tracing", "/sys/kernel/security",
    # loop devices name their backing file: the host path of sandpit's scratch disk
    "/sys/devices/virtual/block",
    # the machine's vendor, model and serial numbers
    "/sys/devices/virtual/dmi",
)
READONLY_PATHS: tuple[str, ...] = (
    "/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger",
)
# Only these names ever reach a job from outside the request: nothing of the worker's own environment.
BASE_ENV: tuple[tuple[str, str], ...] = (
    ("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"),
    ("LANG", "C.UTF-8"),
    ("CI", "true"),
    ("SANDPIT", "1"),
)
ID_RANGE = 65536
STRICT_UID = 1000
NOFILE = 65536
SHM_BYTES = 64 * 1024 * 1024


@record(frozen=True)
class SpecInputs:
    request: SandboxRequest
    rootfs: str
    workspace: str  # host directory mounted at /workspace
    uid_base: int  # host uid (and gid) that job root maps to
    cgroups_path: str
    seccomp: dict[str, Any]
    image_env: tuple[tuple[str, str], ...] = ()
    netns_path: str | None = None  # None: the runtime makes a fresh one (loopback only)
    resolv_conf: str | None = None  # host file bind-mounted read-only at /etc/resolv.conf
    hosts_file: str | None = None  # host file bind-mounted read-only at /etc/hosts (a job with services)
    #: (uid, gid) inside the container instead of the profile's (the image's User), its $HOME unless
    #: the image's Env or the request sets one, and its supplementary groups
    user: tuple[int, int] | None = None
    home: str | None = None
    groups: tuple[int, ...] = ()
    hostname: str = "sandpit"
    cpu_period_us: int = 100_000
    userns: bool = True  # False only for runsc, whose own kernel is the boundary (no host userns)
    nofile: int = 1024  # the engine passes min(NOFILE, its own hard limit)


def load_seccomp() -> dict[str, Any]:
    """The seccomp profile kept as data beside this module (Docker-format rules)."""
    text = (Path(__file__).parent / "seccomp.json").read_text()
    data: dict[str, Any] = json.loads(text)
    return data


def job_env(inputs: SpecInputs) -> list[str]:
    """Allow-listed base (and the user's HOME), then the image's env, then the request's, later names
    winning.

    >>> from worker.sandbox.request import SandboxRequest
    >>> env = job_env(SpecInputs(SandboxRequest(argv=("x",), env=(("A", "1"),)), "/r", "/w", 1, "/c", {}))
    >>> "A=1" in env and "HOME=/root" in env
    True
    """
    merged: dict[str, str] = dict(BASE_ENV)
    if inputs.home is not None:
        merged["HOME"] = inputs.home
    else:
        merged["HOME"] = "/root" if inputs.request.profile == "default" else "/workspace"
    merged["HOSTNAME"] = inputs.hostname
    merged.update(inputs.image_env)
    merged.update(inputs.request.env)
    return [f"{name}={value}" for name, value in merged.items()]


def seccomp_for(profile: dict[str, Any], caps: tuple[str, ...]) -> dict[str, Any]:
    """The OCI ``linux.seccomp`` object: rules gated on capabilities the job lacks are dropped."""
    rules = []
    for rule in profile["syscalls"]:
        needed = rule.get("includes", {}).get("caps", [])
        if any(cap not in caps for cap in needed):
            continue
        # shallow: the document is serialised, never mutated, so rule values are shared with the profile
        rules.append({k: v for k, v in rule.items() if k not in ("includes", "comment")})
    return {
        "defaultAction": profile["defaultAction"],
        "defaultErrnoRet": profile.get("defaultErrnoRet", 1),
        "architectures": list(profile["architectures"]),
        "syscalls": rules,
    }


def _mounts(inputs: SpecInputs) -> list[dict[str, Any]]:
    ro_sys = ["nosuid", "noexec", "nodev", "ro"]
    mounts: list[dict[str, Any]] = [
        {"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]},
        {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
         "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
        {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
         "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]},
        {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
         "options": ["nosuid", "noexec", "nodev", "mode=1777", f"size={SHM_BYTES}"]},
        {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]},
        {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs",
         "options": ["nosuid", "nodev", "mode=1777", "size=65536k"]},
    ]
    if inputs.netns_path is None:
        # A network namespace owned by the job's user namespace may mount its own sysfs.
        mounts.append({"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ro_sys})
    else:
        # sysfs cannot be mounted for a netns owned by the host's user namespace; an empty
        # read-only tmpfs keeps the host's /sys out of the job entirely.
        mounts.append({"destination": "/sys", "type": "tmpfs", "source": "tmpfs",
                       "options": [*ro_sys, "size=4k"]})
    mounts.append({"destination": "/workspace", "type": "bind", "source": inputs.workspace,
                   "options": ["rbind", "rw", "nosuid", "nodev", "rprivate"]})
    if inputs.resolv_conf is not None:
        mounts.append({"destination": "/etc/resolv.conf", "type": "bind", "source": inputs.resolv_conf,
                       "options": ["bind", "ro", "nosuid", "nodev", "noexec", "rprivate"]})
    if inputs.hosts_file is not None:
        mounts.append({"destination": "/etc/hosts", "type": "bind", "source": inputs.hosts_file,
                       "options": ["bind", "ro", "nosuid", "nodev", "noexec", "rprivate"]})
    return mounts


def _resources(inputs: SpecInputs) -> dict[str, Any]:
    # Memory, cpu and pids limits are set by sandpit on the job's parent cgroup (cgroups.py), so
    # they hold for every runtime and the OOM/pids events are seen there; the runtime's own
    # child cgroup only gets the device policy.
    del inputs
    return {"devices": [{"allow": False, "access": "rwm"}]}


def build_spec(inputs: SpecInputs) -> dict[str, Any]:
    """The complete OCI ``config.json`` document for one job."""
    req = inputs.request
    problems = workdir_problems(req.workdir)
    if problems:
        raise ValueError(problems[0])
    strict = req.profile == "strict"
    caps: tuple[str, ...] = () if strict else DEFAULT_CAPS
    uid = STRICT_UID if strict else 0
    gid = uid
    if inputs.user is not None:
        uid, gid = inputs.user
    id_map = [{"containerID": 0, "hostID": inputs.uid_base, "size": ID_RANGE}]
    kinds = ("pid", "ipc", "uts", "mount", "user", "cgroup") if inputs.userns else ("pid", "ipc", "uts", "mount")
    namespaces: list[dict[str, str]] = [{"type": t} for t in kinds]
    net: dict[str, str] = {"type": "network"}
    if inputs.netns_path is not None:
        net["path"] = inputs.netns_path
    namespaces.append(net)
    linux: dict[str, Any] = {
        "uidMappings": id_map,
        "gidMappings": id_map,
        "namespaces": namespaces,
        "cgroupsPath": inputs.cgroups_path,
        "resources": _resources(inputs),
        "seccomp": seccomp_for(inputs.seccomp, caps),
        "maskedPaths": list(MASKED_PATHS),
        "readonlyPaths": list(READONLY_PATHS),
        "rootfsPropagation": "private",
    }
    if not inputs.userns:
        del linux["uidMappings"], linux["gidMappings"]
    return {
        "ociVersion": "1.0.2",
        "process": {
            "terminal": False,
            "user": {"uid": uid, "gid": gid, "additionalGids": list(inputs.groups)},
            "args": list(req.argv),
            "env": job_env(inputs),
            "cwd": posixpath.normpath(req.workdir),
            "capabilities": {
                "bounding": list(caps), "effective": list(caps), "permitted": list(caps),
                "inheritable": [], "ambient": [],
            },
            "rlimits": [
                {"type": "RLIMIT_CORE", "hard": 0, "soft": 0},
                {"type": "RLIMIT_NOFILE", "hard": inputs.nofile, "soft": inputs.nofile},
            ],
            "noNewPrivileges": True,
            "oomScoreAdj": 500,
        },
        "root": {"path": inputs.rootfs, "readonly": False},
        "hostname": inputs.hostname,
        "mounts": _mounts(inputs),
        "linux": linux,
    }
