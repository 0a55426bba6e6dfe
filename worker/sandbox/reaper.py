"""Cleaning up after sandpit processes that died without tearing down (SIGKILL, power loss).

Only sandpit's own objects are touched, and only those of dead owners: a job directory under
``<state>/jobs`` whose owner lease (``<run>/locks/job-<id>.lock``) no process holds, containers
named ``sandpit-*`` in sandpit's own runtime roots, cgroups under this instance's parent
(``sandpit/``, or ``sandpit-<instance id>/``), subvolumes in the scratch filesystem, and mounts under
the job directory.

A job's services (``worker/sandbox/services``) live inside those same objects, so they go with
their job: their containers are ``sandpit-<job id>.svc<N>`` (judged by the job's lease, never as a
job of their own), their cgroups ``svc<N>`` under the job's, their bundles and rootfs mounts under
the job dir, their upper dirs on the job's disk; a ``none`` job's shared namespace is held by fds
only, so it ends with its last process.

Liveness is judged by the owner leases of this instance's run dir, each object's job at the moment
that object is judged, never from a list taken before: a job takes its lease before it makes any
object and releases it after it has removed them all, so an object whose lease is free *after*
the object was seen is a dead job's. (A list of live jobs taken at the start of a reap left out
every job that started during the reap, and the reap then killed it and removed its directory; and
a job that finished between the listing of its directory and the look at its lease looked like a
leftover.) The reaper looks only at objects only this instance makes: its cgroup parent, its
runtime roots, its state dir, its bridge.
Another instance on the host (another ``SANDPIT_RUN_DIR``/``SANDPIT_STATE_DIR``) names all of those
differently (``worker/sandbox/instance.py``), so its live jobs are never seen here, let alone killed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal

from pipelines.files.locks import is_held, try_hold
from worker import TYPE_CHECKING
from worker.errors import SandboxError
from worker.sandbox.cgroups import cgroup_parent, remove_job_cgroups, v1_hierarchies
from worker.sandbox.disk import destroy_subvolume_tree, ensure_quota_consistent, is_mounted, subvolumes
from worker.sandbox.instance import claim_instance
from worker.sandbox.rootfs import unmount_all
from worker.sandbox.runtime import PREFERENCE, Runtime
from worker.sandbox.services.naming import job_of_container
from worker.settings import Settings

if TYPE_CHECKING:
    from pathlib import Path

log = logging.getLogger("sandpit.reaper")


def _runtimes(settings: Settings) -> list[Runtime]:
    found = []
    for name in PREFERENCE:
        root = settings.run_dir / "runtime" / name
        binary = shutil.which(name)
        if binary and root.is_dir():
            found.append(Runtime(name=name, binary=binary, root=root))
    return found


def is_live(settings: Settings, job_id: str) -> bool:
    """Whether a process holds job ``job_id``'s owner lease now."""
    return is_held(settings.locks_dir / f"job-{job_id}.lock")


def reap(settings: Settings) -> list[str]:
    """Remove everything dead sandpit processes left behind; returns a line per object removed."""
    claim_instance(settings.run_dir, settings.state_dir)  # never judge a state dir another run dir uses
    done: list[str] = []
    for rt in _runtimes(settings):
        for cid in rt.containers():
            if not is_live(settings, job_of_container(cid)):
                rt.kill(cid, "KILL")
                rt.delete(cid)
                rt.forget(cid)
                done.append(f"container {cid} ({rt.name})")
    parent = cgroup_parent(settings.instance_id)
    for name in _cgroup_job_names(parent):
        if not is_live(settings, name):
            _kill_cgroup_tasks(parent, name)
            try:
                removed = remove_job_cgroups(name, parent=parent)
            except OSError as exc:
                log.warning("could not remove cgroup %s yet: %s", name, exc)
                continue
            done.extend(f"cgroup {path}" for path in removed)
    if settings.jobs_dir.is_dir():
        for job_dir in sorted(settings.jobs_dir.iterdir()):
            if is_live(settings, job_dir.name):
                continue
            try:
                done.extend(f"mount {point}" for point in unmount_all(job_dir))
            except SandboxError as exc:
                log.warning("%s", exc)
                continue
            shutil.rmtree(job_dir, ignore_errors=True)
            done.append(f"job dir {job_dir}")
    done.extend(_reap_disks(settings))
    done.extend(_reap_seccomp_probes(settings))
    if settings.network().net_dir.is_dir():
        from worker.sandbox.network import reap_networks

        done.extend(reap_networks(settings.network()))
    if settings.locks_dir.is_dir():
        for path in settings.locks_dir.glob("job-*.lock"):
            try:  # removed only by a holder of its lock (pipelines/files/locks.py): a starting job's is kept
                lock = try_hold(path, create=False)
            except OSError:
                continue
            if lock is not None:
                with lock, contextlib.suppress(FileNotFoundError):
                    path.unlink()
    for line in done:
        log.info("reaped %s", line)
    return done


def _reap_disks(settings: Settings) -> list[str]:
    """Job disks of dead jobs, with every subvolume nested in them (found in the btrfs tree, not
    by walking what the job left in its directories; deepest first, see worker/sandbox/disk.py)."""
    done: list[str] = []
    scratch = settings.scratch_dir
    if not is_mounted(scratch):
        return done
    for name, subvol_id in sorted(subvolumes(scratch).items()):
        if name.startswith(".") or is_live(settings, name):
            continue
        try:
            deleted = destroy_subvolume_tree(scratch, subvol_id)
        except SandboxError as exc:
            log.warning("%s", exc)
            continue
        if deleted:
            nested = f" and {len(deleted) - 1} subvolume(s) nested in it" if len(deleted) > 1 else ""
            done.append(f"disk {scratch / name}{nested}")
    if ensure_quota_consistent(scratch):
        done.append(f"quota rescan of {scratch} (qgroups were inconsistent)")
    return done


def _seccomp_probes(settings: Settings) -> list[Path]:
    """The probe directories of the seccomp cache (worker/sandbox/seccomp_cache.py), each with a
    lock its maker holds for the probe's whole life, taken before the directory exists: a probe
    whose lock is free is a dead maker's."""
    from worker.sandbox.seccomp_cache import PROBE_PREFIX

    folder = settings.run_dir / "seccomp"
    if not folder.is_dir():
        return []
    return [probe for probe in sorted(folder.iterdir()) if probe.name.startswith(PROBE_PREFIX)
            and not probe.name.endswith(".lock") and not probe.is_symlink() and probe.is_dir()]


def _reap_seccomp_probes(settings: Settings) -> list[str]:
    """Dead makers' probes of the seccomp cache: their container (created, never started: its
    init waits for a ``start`` that never comes, from the runtime's read-only view) is deleted,
    their folder and lock file removed, under the probe's lock, taken here."""
    import subprocess

    from worker.sandbox.seccomp_cache import probe_lock

    done = []
    binary = shutil.which("crun") or "crun"
    for probe in _seccomp_probes(settings):
        try:
            lock = try_hold(probe_lock(probe))
        except OSError:
            continue
        if lock is None:
            continue  # its maker lives
        with lock:
            try:
                state = probe / "state"
                for name in os.listdir(state) if state.is_dir() else []:
                    subprocess.run([binary, "--cgroup-manager=disabled", f"--root={state}", "delete", "--force",
                                    name], capture_output=True, timeout=30, check=False)
            except (OSError, subprocess.SubprocessError):
                continue
            shutil.rmtree(probe, ignore_errors=True)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(probe_lock(probe))
        done.append(f"seccomp probe {probe.name}")
    return done


def _cgroup_job_names(parent: str) -> set[str]:
    """Job cgroups under this instance's ``parent`` (never another instance's: see the docstring)."""
    names: set[str] = set()
    for hierarchy in v1_hierarchies():
        top = hierarchy / parent
        if top.is_dir():
            names.update(p.name for p in top.iterdir() if p.is_dir())
    return names


def _kill_cgroup_tasks(parent: str, name: str) -> None:
    for hierarchy in v1_hierarchies():
        top = hierarchy / parent / name
        for dirpath, _dirs, _files in os.walk(top):
            with contextlib.suppress(OSError), open(os.path.join(dirpath, "cgroup.procs")) as f:
                for pid in f.read().split():
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(int(pid), signal.SIGKILL)


def containers(settings: Settings) -> list[str]:
    """Every container sandpit's runtimes have state for, live or not."""
    return [c for rt in _runtimes(settings) for c in rt.containers()]


def leftovers(settings: Settings) -> list[str]:
    """What of sandpit's is still on the host and belongs to no running job (used by tests: must be
    empty between jobs). A job whose owner lease is held is running, here or in another process, so
    its objects are not leftovers: tests stay exact while other jobs run on the machine. Each object
    seen is judged by its job's lease *after* it was seen, and counts only if it is still there
    then: a job removes its objects before it releases its lease, so one that finished meanwhile
    is not taken for a leftover (the module's docstring)."""
    claim_instance(settings.run_dir, settings.state_dir)

    def dead(job_id: str) -> bool:
        return not is_held(settings.locks_dir / f"job-{job_id}.lock")

    def mount_points() -> set[str]:
        with open("/proc/self/mountinfo") as f:
            return {line.split()[4] for line in f}

    found = []
    for rt in _runtimes(settings):
        found += [f"container {c}" for c in rt.containers() if dead(job_of_container(c)) and rt.has_state(c)]
    parent = cgroup_parent(settings.instance_id)
    dead_cgroups = [n for n in sorted(_cgroup_job_names(parent)) if dead(n)]
    still_cgroups = _cgroup_job_names(parent)
    found += [f"cgroup {n}" for n in dead_cgroups if n in still_cgroups]
    if settings.jobs_dir.is_dir():
        found += [f"job dir {d.name}" for d in sorted(settings.jobs_dir.iterdir()) if dead(d.name) and d.is_dir()]
    prefix = str(settings.jobs_dir) + "/"
    seen = [p for p in sorted(mount_points()) if p.startswith(prefix) and dead(p[len(prefix):].split("/", 1)[0])]
    still = mount_points()
    found += [f"mount {p}" for p in seen if p in still]
    if is_mounted(settings.scratch_dir):
        # what sandpit made there (subvolumes, from the btrfs tree) and anything else left in it
        def names() -> set[str]:
            return {p.name for p in settings.scratch_dir.iterdir()} | set(subvolumes(settings.scratch_dir))

        gone = [name for name in sorted(names()) if dead(name)]
        now = names()
        found += [f"disk {name}" for name in gone if name in now]
    from worker.sandbox.seccomp_cache import probe_lock

    dead_probes = [probe for probe in _seccomp_probes(settings) if not is_held(probe_lock(probe))]
    found += [f"seccomp probe {probe.name}" for probe in dead_probes if probe.is_dir()]
    return found
