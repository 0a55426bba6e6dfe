"""Hostile jobs against the disk limit: nothing a job does takes it past ``--disk``, and whatever
it made, teardown and ``sandpit reap`` remove (worker/sandbox/disk.py says how).

Attacks: nested subvolumes and snapshots (the btrfs ioctls, with the command's high bits set too),
in the workspace and in the overlay's upper dir; reflinks (cp --reflink, FICLONE, FICLONERANGE,
copy_file_range); hard links; sparse files and fallocate; floods of inodes, hard links, xattrs and
inline files. Subvolumes that got past the filter anyway are planted from the host, as a job that
found another way would leave them, to hold teardown, reap and the disk_quota verdict to the tree.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.conftest import require
from tests.sandbox.conftest import FULL_RUNTIMES, Runner
from worker.sandbox.reaper import leftovers
from worker.sandbox.request import Limits
from worker.sandbox.runtime import runtime_problem

MiB = 1 << 20
SANDPIT = [sys.executable, "-m", "worker"]

# Tries the subvolume ioctls on argv[1]: "subvol" makes a subvolume there, "snap" makes one and
# snapshots it (or, refused, snapshots argv[1] itself); each call first with the command's upper
# 32 bits set (the kernel ignores them, so must the filter), then plain. Then writes 100 MiB into
# whatever it made, or into argv[1]: past the limit either way.
NESTING_JOB = r"""
import errno, fcntl, os, sys
IOCTL = {"subvol": 0x5000940E, "subvol_v2": 0x50009418, "snap": 0x50009401, "snap_v2": 0x50009417}
target, kind, v2 = sys.argv[1], sys.argv[2], sys.argv[3] == "v2"

def call(op, name, src_fd=0):
    args = bytearray(4096)
    args[0:8] = src_fd.to_bytes(8, "little")
    at = 56 if v2 else 8
    args[at:at + len(name)] = name.encode()
    fd = os.open(target, os.O_RDONLY | os.O_DIRECTORY)
    for high in (1 << 32, 0):
        try:
            fcntl.ioctl(fd, IOCTL[op + ("_v2" if v2 else "")] | high, args)
            print(op, "made", flush=True)
            return True
        except OSError as exc:
            print(op, "refused", errno.errorcode[exc.errno], flush=True)
    return False

dest = target
if call("subvol", "sub"):
    dest = os.path.join(target, "sub")
    if kind == "snap" and call("snap", "snap", os.open(dest, os.O_RDONLY)):
        dest = os.path.join(target, "snap")
elif kind == "snap":
    call("snap", "snap", os.open(target, os.O_RDONLY))
with open(os.path.join(dest, "fill"), "wb") as f:
    for _ in range(100):
        f.write(b"x" * (1 << 20))
print("wrote 100 MiB", flush=True)
"""


def job_subvolumes(settings, job_id: str) -> list[str]:
    """What ``btrfs subvolume list`` shows of one job's disk (itself and anything below it)."""
    out = subprocess.run(["btrfs", "subvolume", "list", str(settings.scratch_dir)], capture_output=True,
                         text=True, check=True).stdout
    paths = [line.split(" path ", 1)[1] for line in out.splitlines() if " path " in line]
    return [p for p in paths if p == job_id or p.startswith(job_id + "/")]


def wait_for_disk(settings, marker: str, running: Callable[[], bool]) -> Path:
    """The job disk whose workspace holds ``marker`` (the job made it), once it appears."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and running():
        for disk in settings.scratch_dir.iterdir():
            if (disk / "workspace" / marker).exists():
                return disk
        time.sleep(0.05)
    raise AssertionError("the job never started")


def signal_job(job_id: str, sig: int) -> None:
    """Send ``sig`` to every process in the job's cgroup (found by its host cgroup path)."""
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cgroup") as f:
                paths = [line.rstrip("\n").split(":", 2)[-1] for line in f]
        except OSError:
            continue
        if any(job_id in path.split("/") for path in paths):
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), sig)


def plant_nested(disk: Path, data_bytes: int) -> None:
    """Subvolumes in a job's disk as an escaped job would leave them: nested three deep (one
    below a plain directory), a snapshot, a read-only snapshot, one in the overlay upper dir,
    with ``data_bytes`` written in the deepest."""
    ws = disk / "workspace"

    def btrfs(*args: str) -> None:
        subprocess.run(["btrfs", "subvolume", *args], check=True, capture_output=True)

    btrfs("create", str(ws / "a"))
    btrfs("create", str(ws / "a" / "b"))
    (ws / "a" / "b" / "deep").mkdir()
    btrfs("create", str(ws / "a" / "b" / "deep" / "c"))
    btrfs("snapshot", str(ws / "a"), str(ws / "snap"))
    btrfs("snapshot", "-r", str(ws / "a" / "b"), str(ws / "b-ro"))
    btrfs("create", str(disk / "upper" / "nested"))
    with open(ws / "a" / "b" / "deep" / "c" / "data", "wb") as f:
        for _ in range(data_bytes // MiB):
            f.write(b"d" * MiB)
        os.fsync(f.fileno())


@pytest.fixture()
def run_one(engine, no_leftovers) -> Runner:
    """Attacks on the filesystem's accounting, which no runtime changes: the first runtime only."""
    name = FULL_RUNTIMES[0]
    problem = runtime_problem(name)
    require(problem is None, f"runtime {name}: {problem}")
    return Runner(engine, name)


def test_the_filter_refuses_the_btrfs_type_byte_but_reflinks():
    """seccomp.json: of ioctl commands with btrfs's type byte (0x94), only FICLONE, FICLONERANGE
    and FIDEDUPERANGE pass; every other type passes; the upper 32 bits never matter. Rules are
    evaluated as libseccomp does (ALLOW if any rule's masked compare matches)."""
    from worker.sandbox.spec import load_seccomp

    rules = [r for r in load_seccomp()["syscalls"] if "ioctl" in r["names"]]
    assert rules and all(r["action"] == "SCMP_ACT_ALLOW" and len(r["args"]) == 1 for r in rules)

    def allowed(cmd: int) -> bool:
        return any(all(arg["index"] == 1 and arg["op"] == "SCMP_CMP_MASKED_EQ"
                       and cmd & arg["value"] == arg["valueTwo"] for arg in r["args"]) for r in rules)

    reflinks = {0x40049409, 0x4020940D, 0xC0189436}
    for high in (0, 1 << 32, 0xFFFFFFFF << 32):
        for nr in range(256):
            for head in (0x00000000, 0x40000000, 0x50000000, 0x80000000, 0xC0180000):
                cmd = head | 0x9400 | nr
                assert allowed(high | cmd) == (cmd in reflinks), hex(high | cmd)
        for cmd in reflinks:
            assert allowed(high | cmd)
        for cmd in (0x5401, 0x541B, 0x80086601, 0xC020660B, 0x4008AE61, 0x9300 | 14, 0x9500 | 14):
            assert allowed(high | cmd), hex(cmd)  # TCGETS, FIONREAD, FS_IOC_GETFLAGS, FIEMAP, ...


@pytest.mark.parametrize("target", ["/workspace", "/var/tmp", "/"])
@pytest.mark.parametrize("kind, version", [("subvol", "v1"), ("subvol", "v2"), ("snap", "v1"),
                                           ("snap", "v2")])
def test_nested_subvolume_and_snapshot_ioctls_are_refused(run, settings, target, kind, version):
    """A job cannot make a subvolume or a snapshot (EPERM, however the command is spelled), so its
    100 MiB write hits the 32M limit: failed/disk_quota, and no subvolume of it remains."""
    res, out, err = run("python3", "-c", NESTING_JOB, target, kind, version, image="python",
                        limits=Limits(disk_bytes=32 * MiB))
    refusals = [line for line in out.splitlines() if " refused " in line]
    assert " made" not in out and len(refusals) >= 2, out  # the high-bits spelling, then the plain one
    assert all(line.endswith(" EPERM") for line in refusals), out
    assert (res.status, res.reason) == ("failed", "disk_quota"), (res.message, err[-400:])
    assert "Disk quota exceeded" in err
    assert job_subvolumes(settings, res.job_id) == []


@pytest.mark.parametrize("target", ["/workspace", "/"])
def test_under_runsc_the_ioctls_never_reach_the_host(engine, settings, no_leftovers, target):
    """gVisor answers btrfs ioctls on its own files (ENOTTY): no subvolume, and the write hits the
    limit as under the other runtimes."""
    problem = runtime_problem("runsc")
    require(problem is None, f"runsc: {problem}")
    res, out, err = Runner(engine, "runsc")("python3", "-c", NESTING_JOB, target, "snap", "v2", image="python",
                                            limits=Limits(disk_bytes=32 * MiB))
    assert " made" not in out and "refused" in out, out
    assert (res.status, res.reason) == ("failed", "disk_quota"), (res.message, err[-400:])
    assert job_subvolumes(settings, res.job_id) == []


@pytest.mark.parametrize("data_mib, outcome", [(40, ("failed", "disk_quota")), (0, ("succeeded", None))])
def test_subvolumes_that_got_past_the_filter_are_counted_and_removed(run, settings, data_mib, outcome):
    """Nested subvolumes, snapshots and a read-only snapshot in a job's disk are found in the btrfs
    tree and deleted deepest first at teardown (it used to fail: ENOTEMPTY, error/infra_error, the
    disk left behind); data in them counts, so 40 MiB there is disk_quota even though the job
    exits 0."""
    marker = f"marker-{uuid.uuid4().hex}"
    # told to end by a signal: a file planted under the workspace overlay is not seen through it
    script = (f"trap 'ls -R /workspace /var >/dev/null; exit 0' USR1; touch /workspace/{marker}; "
              "while :; do sleep 0.05; done")
    with ThreadPoolExecutor(1) as pool:
        job = pool.submit(run.sh, script, limits=Limits(disk_bytes=32 * MiB, timeout_s=60))
        disk = wait_for_disk(settings, marker, lambda: not job.done())
        try:
            plant_nested(disk, data_mib * MiB)
            assert len(job_subvolumes(settings, disk.name)) == 7
        finally:
            signal_job(disk.name, signal.SIGUSR1)
        res, _out, err = job.result(timeout=120)
    assert (res.status, res.reason) == outcome, (res.message, err[-400:])
    assert job_subvolumes(settings, disk.name) == []
    assert not disk.exists()


def test_reap_after_a_sigkilled_job_removes_its_nested_subvolumes(settings, runtime, no_leftovers):
    """A SIGKILLed sandpit leaves a disk with subvolumes nested in it; `sandpit reap` removes all
    of it (it used to fail with ENOTEMPTY on every run), and the disk is no leftover after."""
    env = {"PATH": os.environ["PATH"], "SANDPIT_STATE_DIR": str(settings.state_dir),
           "SANDPIT_RUN_DIR": str(settings.run_dir), "SANDPIT_RUNTIME": runtime,
           "SANDPIT_SCRATCH_SIZE": str(settings.scratch_bytes)}
    marker = f"marker-{uuid.uuid4().hex}"
    proc = subprocess.Popen([*SANDPIT, "exec", "--disk", "32M", "--timeout", "60s", "--", "sh", "-c",
                             f"touch /workspace/{marker}; sleep 60"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        disk = wait_for_disk(settings, marker, lambda: proc.poll() is None)
        plant_nested(disk, 8 * MiB)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
    assert f"disk {disk.name}" in leftovers(settings)
    reaped = subprocess.run([*SANDPIT, "reap"], env=env, capture_output=True, text=True, timeout=120)
    assert reaped.returncode == 0, reaped.stderr
    assert f"reaped disk {disk} and 6 subvolume(s) nested in it" in reaped.stdout, reaped.stdout
    assert job_subvolumes(settings, disk.name) == []
    assert leftovers(settings) == []


REFLINK_JOB = r"""
import fcntl, os, struct, subprocess, sys
MiB = 1 << 20

def fill(path, mib, data=None):
    done = 0
    try:
        with open(path, "wb") as f:
            for _ in range(mib):
                f.write(data or os.urandom(MiB))
                f.flush()
                done += MiB
    except OSError as exc:
        print("fill stopped:", exc, flush=True)
    return done

fill("/workspace/a", 16)
fill("/var/a", 4)
for i in range(4):
    subprocess.run(["cp", "--reflink=always", "/workspace/a", f"/workspace/cp{i}"], check=True)
subprocess.run(["cp", "--reflink=always", "/var/a", "/var/b"], check=True)
src = os.open("/workspace/a", os.O_RDONLY)
new = lambda p: os.open(p, os.O_WRONLY | os.O_CREAT, 0o644)
fcntl.ioctl(new("/workspace/ficlone"), 0x40049409, src)
fcntl.ioctl(new("/workspace/ficlonerange"), 0x4020940D, struct.pack("=qQQQ", src, 0, 0, 0))
dst, left = new("/workspace/copy_file_range"), 16 * MiB
while left:
    left -= os.copy_file_range(src, dst, left)
made = ["a", "cp0", "cp1", "cp2", "cp3", "ficlone", "ficlonerange", "copy_file_range"]
apparent = sum(os.stat(p).st_size for p in [f"/workspace/{n}" for n in made] + ["/var/a", "/var/b"])
print("apparent", apparent, flush=True)
print("fresh", fill("/workspace/fresh", 100), flush=True)
sys.exit(1)
"""


def test_reflinks_share_extents_and_the_limit_still_holds(run):
    """Reflinked copies (cp --reflink, FICLONE, FICLONERANGE, copy_file_range, in the workspace and
    in the overlay) are allowed and cost nothing, but 136 MiB of them on 20 MiB of data buy no
    fresh byte past the 32M limit: fresh data stops at what the 20 MiB left."""
    res, out, err = run("python3", "-c", REFLINK_JOB, image="python", limits=Limits(disk_bytes=32 * MiB))
    values = dict(line.split() for line in out.splitlines() if line.split()[0] in ("apparent", "fresh"))
    assert int(values["apparent"]) == 136 * MiB, (out, err[-400:])
    assert 8 * MiB <= int(values["fresh"]) <= 12 * MiB, out
    assert "Disk quota exceeded" in out
    assert (res.status, res.reason) == ("failed", "disk_quota")


def test_hard_links_hold_no_data_and_the_limit_still_holds(run):
    """A thousand hard links to a 16 MiB file are 16 GB to `du --count-links` but 16 MiB of disk; a
    fresh write then gets what is left of 32M and no more."""
    script = ("head -c 16M /dev/urandom > /workspace/big && mkdir /workspace/l /var/l && "
              "i=0; while [ $i -lt 500 ]; do ln /workspace/big /workspace/l/$i && ln /workspace/big /workspace/l/x$i; "
              "i=$((i+1)); done; "
              "du -s -b --count-links /workspace; "
              "dd if=/dev/zero of=/workspace/fresh bs=1M count=100 2>&1; echo fresh $(stat -c %s /workspace/fresh); "
              "exit 1")
    res, out, err = run.sh(script, limits=Limits(disk_bytes=32 * MiB, timeout_s=60))
    assert "fresh " in out, (res.status, res.reason, out, err[-400:])
    counted = int(out.split()[0])
    fresh = int(out.split("fresh ")[1].split()[0])
    assert counted > 1000 * 16 * MiB, out
    assert 12 * MiB <= fresh <= 16 * MiB, out
    assert "Disk quota exceeded" in out
    assert (res.status, res.reason) == ("failed", "disk_quota"), (res.message, err[-400:])


def test_sparse_files_and_fallocate_are_charged_for_what_they_hold(run):
    """1T sparse files cost nothing; fallocate of 100M is refused up front (it reserves); writing
    into the holes of a sparse file is charged like any write and stops at the limit."""
    script = r"""
import os, subprocess, sys
for path in ("/workspace/sparse", "/var/sparse"):
    with open(path, "wb") as f:
        f.truncate(1 << 40)
print("sparse", os.stat("/workspace/sparse").st_size, os.stat("/workspace/sparse").st_blocks, flush=True)
for path in ("/workspace/prealloc", "/var/prealloc"):
    p = subprocess.run(["fallocate", "-l", "100M", path], capture_output=True, text=True)
    print("fallocate", path, p.returncode, p.stderr.strip(), flush=True)
written = 0
try:
    with open("/workspace/sparse", "r+b") as f:
        for i in range(100):
            f.seek(i << 33)
            f.write(b"s" * (1 << 20))
            f.flush()
            written += 1 << 20
except OSError as exc:
    print("holes", written, exc, flush=True)
    sys.exit(1)
print("holes", written, flush=True)
"""
    res, out, err = run("python3", "-c", script, image="python", limits=Limits(disk_bytes=32 * MiB))
    assert f"sparse {1 << 40} 0" in out, (out, err[-400:])
    assert out.count("Disk quota exceeded") >= 3, out  # both fallocates and the hole filling
    holes = int(out.split("holes ")[1].split()[0])
    assert holes <= 32 * MiB, out
    assert (res.status, res.reason) == ("failed", "disk_quota")


FLOOD_JOB = r"""
import errno, os, sys
kind, where, left = sys.argv[1], sys.argv[2], int(sys.argv[3])
os.makedirs(where)
with open("/workspace/prefill", "wb") as f:
    f.write(b"p" * max(0, 16 * 2**20 - left))
n, src = 0, None
try:
    while True:
        path = os.path.join(where, f"f{n:07d}")
        if kind == "files":
            open(path, "w").close()
        elif kind == "links":
            if n % 200 == 0:
                src = path + "-src"
                open(src, "w").close()
            os.link(src, path)
        elif kind == "xattrs":
            open(path, "w").close()
            os.setxattr(path, "user.pad", b"z" * 3000)
        elif kind == "inline":
            with open(path, "w") as f:
                f.write("y" * 2000)
        n += 1
except OSError as exc:
    print(kind, n, errno.errorcode[exc.errno], flush=True)
    sys.exit(1)
"""


@pytest.mark.parametrize("kind, where, left", [
    ("files", "/workspace/flood", 1 * MiB),  # empty inodes (the rest of the disk pre-filled)
    ("links", "/workspace/flood", MiB // 2),  # directory entries only
    ("xattrs", "/workspace/flood", 16 * MiB),
    ("inline", "/var/flood", 16 * MiB),  # small files kept in the metadata tree, in the overlay
])
def test_metadata_floods_hit_the_limit(run_one, kind, where, left):
    """Inodes, links, xattrs and inline file data are charged (as tree blocks): a flood of them ends
    with EDQUOT and failed/disk_quota, not with a full scratch filesystem."""
    res, out, err = run_one("python3", "-c", FLOOD_JOB, kind, where, str(left), image="python",
                            limits=Limits(disk_bytes=16 * MiB, timeout_s=240))
    words = out.split()
    assert words[:1] == [kind] and words[2:3] == ["EDQUOT"], (res.status, res.reason, out, err[-400:])
    assert (res.status, res.reason) == ("failed", "disk_quota")
