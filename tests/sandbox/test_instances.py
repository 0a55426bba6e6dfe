"""Several sandpit instances on one host (worker/sandbox/instance.py): an instance with another run dir
and state dir never sees, judges or kills another's jobs, and never hands out the same host uids.

The tests' own instance is the default one (``settings``); a second instance gets a state dir and run
dir of its own under a temporary directory, a small scratch filesystem of its own and the built
images of the default store (a symlink: the image store is only read). Whatever a test leaves of
the second instance (mounts, its scratch loop device, its cgroup parent) is removed afterwards.
A third instance, with no scratch at all, plays "another worker starting up" and reaps.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from pipelines.files.locks import is_held
from pipelines.job_record import JobRecord
from worker.sandbox.cgroups import cgroup_parent, v1_hierarchies
from worker.sandbox.engine import Engine
from worker.sandbox.instance import forget_instance, uid_registry
from worker.sandbox.mounts import MNT_DETACH, umount
from worker.sandbox.reaper import leftovers, reap
from worker.sandbox.request import SandboxRequest
from worker.settings import Settings

SANDPIT = [sys.executable, "-m", "worker"]
SCRATCH_BYTES = 256 * 1024**2  # btrfs wants ≥ 109 MiB


@dataclass
class Instance:
    settings: Settings
    base: Path

    def env(self, runtime: str) -> dict[str, str]:
        return {"PATH": os.environ["PATH"], "SANDPIT_STATE_DIR": str(self.settings.state_dir),
                "SANDPIT_RUN_DIR": str(self.settings.run_dir), "SANDPIT_RUNTIME": runtime,
                "SANDPIT_SCRATCH_SIZE": str(self.settings.scratch_bytes)}


def _mounts_under(base: Path) -> list[str]:
    prefix = str(base) + "/"
    with open("/proc/self/mountinfo") as f:
        return [line.split()[4] for line in f if line.split()[4].startswith(prefix)]


def _remove_instance(instance: Instance) -> None:
    """Everything the instance made: its leftovers (reaped), its mounts (layer views, user namespace
    pins, the scratch filesystem, whose loop device goes with it), its cgroup parent, its dirs."""
    s = instance.settings
    with contextlib.suppress(Exception):
        reap(s)
    for point in sorted(_mounts_under(instance.base), key=len, reverse=True):
        if point == str(s.scratch_dir):
            subprocess.run(["umount", point], capture_output=True, check=False)  # frees the loop device
        with contextlib.suppress(OSError):
            umount(point, MNT_DETACH)
    parent = cgroup_parent(s.instance_id)
    for hierarchy in v1_hierarchies():
        with contextlib.suppress(FileNotFoundError):
            (hierarchy / parent).rmdir()
    assert _mounts_under(instance.base) == [], "never remove a tree with mounts in it"
    forget_instance(s.run_dir, s.state_dir)
    shutil.rmtree(instance.base, ignore_errors=True)


def _make_instance(name: str, default: Settings, *, scratch: bool) -> Instance:
    # not under pytest's tmp_path: that is 0700, and a job's runtime (host uid of the job) must
    # traverse the path to its rootfs
    base = Path(tempfile.mkdtemp(prefix=f"sandpit-{name}-"))
    base.chmod(0o711)
    state = base / "state"
    state.mkdir(parents=True)
    if scratch:
        (state / "images").symlink_to(default.state_dir / "images")
    s = Settings(state_dir=state, run_dir=base / "run", scratch_bytes=SCRATCH_BYTES)
    return Instance(s, base)


@pytest.fixture()
def second(settings: Settings) -> Iterator[Instance]:
    """A second instance that can run jobs (its own scratch filesystem, the default images)."""
    instance = _make_instance("second", settings, scratch=True)
    try:
        yield instance
    finally:
        _remove_instance(instance)
    assert _mounts_under(instance.base) == []
    loops = subprocess.run(["losetup", "-j", str(instance.settings.state_dir / "scratch.img")],
                           capture_output=True, text=True, check=False).stdout
    assert loops == "", loops


@pytest.fixture()
def third(settings: Settings) -> Iterator[Instance]:
    """A third instance that only reaps (a worker of another deployment starting up)."""
    instance = _make_instance("third", settings, scratch=False)
    try:
        yield instance
    finally:
        _remove_instance(instance)


class Job:
    """A long job on a thread: ``started`` is set once it printed its first line."""

    def __init__(self, engine: Engine, runtime: str, job_id: str, script: str) -> None:
        self.started = threading.Event()
        self.out: list[bytes] = []
        self.result: JobRecord | None = None
        self.job_id = job_id

        def sink(stream: str, data: bytes) -> None:
            self.out.append(data)
            self.started.set()

        def run() -> None:
            try:
                self.result = engine.run(SandboxRequest(argv=("sh", "-c", script), runtime=runtime),
                                         sink=sink, job_id=job_id)
            finally:
                self.started.set()

        self.thread = threading.Thread(target=run, name=f"job-{job_id}")
        self.thread.start()

    def finish(self) -> tuple[JobRecord, str]:
        self.thread.join(timeout=120)
        assert self.result is not None, "the job did not finish"
        return self.result, b"".join(self.out).decode(errors="replace")


def _procs(parent: str, job_id: str) -> list[int]:
    found = []
    for hierarchy in v1_hierarchies():
        top = hierarchy / parent / job_id
        for dirpath, _dirs, _files in os.walk(top):
            with contextlib.suppress(OSError), open(os.path.join(dirpath, "cgroup.procs")) as f:
                found += [int(p) for p in f.read().split()]
    return found


LONG = "echo started; grep -E '^ *0' /proc/self/uid_map; sleep 3; echo finished"


def test_names_differ_per_instance(settings: Settings, second: Instance, third: Instance) -> None:
    """The default instance keeps today's names; every other instance has its own id and with it its
    own cgroup parent, bridge, nft tables and veth prefix."""
    ids = {settings.instance_id, second.settings.instance_id, third.settings.instance_id}
    assert settings.instance_id == "" and len(ids) == 3
    nets = [s.network() for s in (settings, second.settings, third.settings)]
    assert nets[0].bridge == "sandpit0" and nets[0].table == "sandpit"
    for attr in ("bridge", "table", "veth_prefix"):
        assert len({getattr(n, attr) for n in nets}) == 3, attr
    assert len({cgroup_parent(i) for i in ids}) == 3


def test_another_instance_reaping_leaves_running_jobs_alone(settings: Settings, engine: Engine, runtime: str,
                                                             second: Instance, third: Instance,
                                                             no_leftovers: None) -> None:
    """While a job of the default instance and one of a second instance run, a third instance's
    `sandpit reap` (a whole process, as at a worker's start and every minute) and every instance's
    `leftovers()` leave both alone: both jobs finish normally (succeeded, not killed), their cgroups
    and uid leases untouched meanwhile, and the two jobs ran under different host uids."""
    other = Engine(second.settings)
    jobs = [Job(engine, runtime, "inst-default-" + os.urandom(3).hex(), LONG),
            Job(other, runtime, "inst-second-" + os.urandom(3).hex(), LONG)]
    try:
        for job in jobs:
            job.started.wait(60)
            assert b"".join(job.out).startswith(b"started\n"), (job.out, job.result)
        parents = [cgroup_parent(settings.instance_id), cgroup_parent(second.settings.instance_id)]
        before = [_procs(parent, job.job_id) for parent, job in zip(parents, jobs, strict=True)]
        assert all(before), before
        # nothing of a live job is a leftover of any instance, its own or another's (the default
        # instance may have others' leftovers right now: other tests run on this machine too)
        for s in (settings, second.settings, third.settings):
            found = leftovers(s)
            assert [line for line in found if any(job.job_id in line for job in jobs)] == [], (s, found)
        assert leftovers(second.settings) == leftovers(third.settings) == []
        for inst in (third, second):
            done = subprocess.run([*SANDPIT, "reap"], env=inst.env(runtime), capture_output=True, text=True,
                                  timeout=120)
            assert done.returncode == 0, done.stderr
            assert done.stdout == "", done.stdout  # it found nothing of its own to remove
        after = [_procs(parent, job.job_id) for parent, job in zip(parents, jobs, strict=True)]
        for was, now in zip(before, after, strict=True):  # the job's shell lives on (its children change)
            assert set(was) & set(now), (was, now)
        held = [p for p in Path(uid_registry()).iterdir() if is_held(p)]
        assert len(held) >= 2, held
    finally:
        results = [job.finish() for job in jobs]
        other.close()
    uids = []
    for result, out in results:
        assert (result.status, result.reason, result.signal) == ("succeeded", None, None), (result, out)
        assert out.startswith("started\n") and out.endswith("finished\n"), out
        uids.append(out.split()[2])  # "0 <host uid> 65536"
    assert uids[0] != uids[1], uids
    assert leftovers(second.settings) == []


def test_a_state_dir_in_use_is_refused_to_another_run_dir(settings: Settings, runtime: str, second: Instance,
                                                          third: Instance) -> None:
    """Job dirs and disks live in the state dir, but their liveness in the run dir's locks: a
    `sandpit reap` (or exec, or worker) with a running instance's state dir and another run dir is
    refused with a message (exit 125, no traceback) instead of taking that instance's running job
    for a dead one; with the same run dir it may reap, and leaves the job alone."""
    engine = Engine(second.settings)
    job = Job(engine, runtime, "inst-shared-" + os.urandom(3).hex(), LONG)
    try:
        job.started.wait(60)
        mixed = {**second.env(runtime), "SANDPIT_RUN_DIR": str(third.settings.run_dir)}
        for command in (["reap"], ["exec", "--", "true"]):
            done = subprocess.run([*SANDPIT, *command], env=mixed, capture_output=True, text=True, timeout=120)
            assert done.returncode == 125, (command, done.stdout, done.stderr)
            assert "in use by the running sandpit instance" in done.stderr, done.stderr
            assert "Traceback" not in done.stderr
        same = subprocess.run([*SANDPIT, "reap"], env=second.env(runtime), capture_output=True, text=True,
                              timeout=120)
        assert (same.returncode, same.stdout) == (0, ""), same.stderr
    finally:
        result, out = job.finish()
        engine.close()
    assert (result.status, result.signal) == ("succeeded", None), (result, out)
    assert out.endswith("finished\n")


def test_claims_of_instances(tmp_path: Path) -> None:
    """The registry of owners: a state dir held by a live instance is refused to another run dir; two
    instances may share a run dir (they share its locks, so they judge each other's jobs rightly)."""
    from worker.errors import ConfigError
    from worker.sandbox.instance import claim_instance

    registry = str(tmp_path / "registry")
    claim_instance(tmp_path / "r1", tmp_path / "s1", registry)
    with pytest.raises(ConfigError, match="give each instance its own SANDPIT_STATE_DIR"):
        claim_instance(tmp_path / "r2", tmp_path / "s1", registry)
    claim_instance(tmp_path / "r1", tmp_path / "s2", registry)
    claim_instance(tmp_path / "r1", tmp_path / "s1", registry)  # again: already held


def test_uid_ranges_are_leased_host_wide(tmp_path: Path) -> None:
    """uid slots are leased in one registry for the whole host, named by the host range: an instance
    with the same SANDPIT_UID_BASE gets the next free slot, one with a base that is not a whole slot
    away skips every slot whose range overlaps a held one; a released range is free again."""
    from worker.sandbox.leases import lease_uid_slot

    base, size, registry = 100_000_000, 65536, tmp_path / "uids"
    held = [lease_uid_slot(base, 4, size, registry=registry)]
    held.append(lease_uid_slot(base, 4, size, registry=registry))  # another instance, same base
    shifted = base + size // 2
    held.append(lease_uid_slot(shifted, 4, size, registry=registry))
    ranges = [(b + slot * size, b + (slot + 1) * size)
              for b, (slot, _lease) in zip((base, base, shifted), held, strict=True)]
    assert [slot for slot, _ in held] == [0, 1, 2], ranges  # shifted slots 0, 1 overlap base slot 1
    for i, (lo, hi) in enumerate(ranges):
        assert all(hi <= other_lo or other_hi <= lo for other_lo, other_hi in ranges[i + 1:]), ranges
    held[0][1].release()
    assert lease_uid_slot(base, 4, size, registry=registry)[0] == 0



def test_uid_slots_held_by_an_older_sandpit_are_skipped(tmp_path: Path) -> None:
    """During an upgrade an older process of the instance still leases ``<run>/locks/uid-<slot>.lock``
    only: a slot it holds is skipped, and a slot leased now is held there too (so the older process
    skips it), until released."""
    from pipelines.files.locks import try_hold
    from worker.sandbox.leases import lease_uid_slot

    legacy, registry = tmp_path / "locks", tmp_path / "uids"
    legacy.mkdir()
    old = try_hold(legacy / "uid-0.lock")
    assert old is not None
    slot, lease = lease_uid_slot(100_000_000, 4, 65536, registry=registry, legacy_dir=legacy)
    assert slot == 1
    assert try_hold(legacy / "uid-1.lock") is None
    lease.release()
    again = try_hold(legacy / "uid-1.lock")
    assert again is not None
    again.release()
    old.release()
