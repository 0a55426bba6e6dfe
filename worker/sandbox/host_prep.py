"""``sandpit host-prep``: everything that makes this host ready for jobs, once per boot (adapter).

Each step is idempotent (a second run changes nothing and says nothing) and says what it changed:

1. cgroups on a hybrid host: controllers left on the v2 hierarchy (here ``hugetlb``) get a v1
   hierarchy of their own, because crun 1.8 refuses a hybrid host whose v2 hierarchy still has
   controllers (``worker.sandbox.runtime.HYBRID_FIX``);
2. the cgroup2 hierarchy is remounted with ``favordynmods`` (Linux >= 6.0): without it the first
   container start after any pause waits 10-15 ms for an RCU grace period (measured here);
3. the job-disk filesystem (a loop-mounted btrfs image with quotas, ``worker.sandbox.disk``) is
   mounted, and its quotas rescanned when the kernel marked them inconsistent;
4. the network policy (sandpit's nft tables) is loaded again where egress jobs have run, through
   the network package's own ``reload_if_prepared`` (a firewall reload may have flushed it).

A step that cannot be done is a warning when jobs still run without it (a kernel without
``favordynmods`` only starts containers more slowly) and an error otherwise. The engine needs only
step 3 and does it itself on first use (``Engine.scratch``); the rest is why this command exists.
"""

from __future__ import annotations

import logging
import subprocess
from pathlib import Path

from pipelines.record import record
from worker.errors import SandboxError
from worker.sandbox.cgroups import cgroup2_mounts
from worker.sandbox.runtime import hybrid_v2_controllers
from worker.settings import Settings

log = logging.getLogger("sandpit.host_prep")


@record(frozen=True)
class HostPrepReport:
    """What ``prepare_host_once`` changed (``done``, one sentence each) and could not do (``warnings``)."""

    done: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()


def prepare_host_once(settings: Settings) -> HostPrepReport:
    """Steps 1-4 above, in order; ``SandboxError`` when the job disk cannot be had."""
    from worker.sandbox.disk import ensure_quota_consistent, ensure_scratch
    from worker.sandbox.network.lifecycle import reload_if_prepared

    done: list[str] = []
    warnings: list[str] = []
    for ctrl in fix_hybrid_cgroups():
        done.append(f"moved cgroup controller {ctrl} to a v1 hierarchy (crun needs an empty v2 hierarchy here)")
    try:
        for point in favor_dynamic_cgroups():
            done.append(f"remounted {point} with favordynmods (a container start no longer waits ~12 ms "
                        "for the kernel after a pause)")
    except SandboxError as exc:
        warnings.append(f"{exc}; job start-up will be slower after pauses")
    scratch = ensure_scratch(settings.state_dir, settings.scratch_bytes)
    if ensure_quota_consistent(scratch):
        done.append("rescanned the job-disk quotas (they were inconsistent, so limits were not enforced)")
    done.append(f"job disks on {scratch}")
    if reload_if_prepared(settings.network()):
        done.append("reloaded the network policy (nft tables) for egress jobs")
    return HostPrepReport(tuple(done), tuple(warnings))


def fix_hybrid_cgroups(cgroup_root: Path = Path("/sys/fs/cgroup")) -> list[str]:
    """Mount a v1 hierarchy for each controller stuck on v2 of a hybrid host (only hugetlb/misc
    here); returns the controllers moved. Uses ``mount(8)``: a v1 cgroup mount needs its
    hierarchy's options, which the command knows how to pass."""
    moved = []
    for ctrl in hybrid_v2_controllers(cgroup_root):
        target = cgroup_root / ctrl
        target.mkdir(exist_ok=True)
        proc = subprocess.run(["mount", "-t", "cgroup", "-o", ctrl, "cgroup", str(target)],
                              capture_output=True, text=True, check=False)
        if proc.returncode == 0:
            moved.append(ctrl)
            log.info("moved cgroup controller %s from v2 to v1 so crun can run", ctrl)
        else:
            log.warning("could not move cgroup controller %s: %s", ctrl, proc.stderr.strip())
    return moved


def favor_dynamic_cgroups(mountinfo: str | None = None) -> list[str]:
    """Remount the cgroup2 hierarchy with ``favordynmods`` (Linux >= 6.0) unless it has it already;
    returns the mount points changed.

    Every container start moves its processes into cgroups. That takes the kernel's global
    threadgroup rwsem for writing, which, unless the hierarchy favours dynamic changes, first waits
    for an RCU grace period whenever no move happened in the last few ms: 10-15 ms on these machines,
    paid by the first job after any pause (every `sandpit exec`, every job of an idle service). With
    the option, forks take the slower read path (a few ns) and moves never wait. The setting is
    global, so the one cgroup2 mount (``/sys/fs/cgroup`` or, on hybrid hosts, ``.../unified``)
    suffices. Other options of the mount are kept.
    """
    from worker.sandbox.mounts import MS_REMOUNT, mount

    if mountinfo is None:
        with open("/proc/self/mountinfo") as f:
            mountinfo = f.read()
    changed = []
    for point, options in cgroup2_mounts(mountinfo):
        opts = [o for o in options.split(",") if o not in ("rw", "ro")]
        if "favordynmods" in opts:
            continue
        try:
            mount("none", point, "cgroup2", MS_REMOUNT, ",".join([*opts, "favordynmods"]))
        except OSError as exc:
            raise SandboxError(f"cannot remount {point} with favordynmods: {exc}") from exc
        changed.append(point)
    return changed
