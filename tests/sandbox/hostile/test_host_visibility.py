"""What a job (or another local user) can learn of the host.

- inside a job, /proc/self/mountinfo (and ``mount``) name no host path of sandpit's (state dir,
  run dir) and not the job id, under every runtime, while ``df`` and ``mount`` keep working;
- the host's boot command line, kernel configuration, symbols, vmcoreinfo and the loop device's
  backing file (the scratch disk's host path) read as nothing;
- on the host, nothing sandpit keeps (logs, artifacts, images, the database, the API token, a
  running job's files) can be opened by another local user, including in a state dir an older
  sandpit left 0755/0644.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipelines.record import replace
from tests.conftest import require, require_tools
from tests.sandbox.conftest import Runner
from tests.sandbox.network.conftest import world  # noqa: F401 - the fixture, shared
from worker.sandbox.engine import Engine
from worker.sandbox.request import SandboxRequest
from worker.sandbox.runtime import runtime_problem

ALL_RUNTIMES = ["crun", "runc", "runsc"]
NOBODY = 65534
# run as nobody: print every path (one per line on stdin) that it could open for reading
OPENER = """
import sys
for path in sys.stdin.read().splitlines():
    try:
        open(path, "rb").close()
    except OSError:
        continue
    print(path)
"""


@pytest.fixture(params=ALL_RUNTIMES)
def any_run(request, engine, no_leftovers) -> Runner:
    problem = runtime_problem(request.param)
    require(problem is None, f"runtime {request.param}: {problem}")
    return Runner(engine, request.param)


def opened_by_nobody(paths: list[str]) -> list[str]:
    """The paths a process with uid/gid 65534 and no groups can open."""
    require_tools("setpriv")
    proc = subprocess.run(["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
                           sys.executable, "-c", OPENER], input="\n".join(paths), capture_output=True,
                          text=True, timeout=120, check=True)
    return proc.stdout.splitlines()


# -- inside the job ------------------------------------------------------------------------------

def test_mountinfo_names_no_host_path_and_no_job_id(any_run, settings):
    """The overlay's layers are named by fd, the workspace is an overlay of its own (a btrfs bind
    showed ``/<job id>/workspace`` and ``subvol=/<job id>``)."""
    res, out, err = any_run.sh("cat /proc/self/mountinfo; echo ==; cat /proc/self/mounts; echo ==; mount")
    assert res.status == "succeeded", err
    assert "/workspace" in out
    for host_text in (str(settings.state_dir), str(settings.run_dir), str(res.job_id)):
        assert host_text not in out, f"{host_text!r} shows in the job's mount table"


def test_df_and_mount_still_work(any_run):
    res, out, err = any_run.sh("df / /workspace && mount >/dev/null && echo fine")
    assert res.status == "succeeded", err
    assert out.rstrip().endswith("fine")


@pytest.mark.parametrize("path", ["/proc/cmdline", "/sys/kernel/vmcoreinfo", "/proc/kallsyms",
                                  "/proc/config.gz", "/sys/kernel/notes", "/proc/iomem"])
def test_host_kernel_files_read_as_nothing(run, path):
    """Masked (crun, runc): empty or unreadable, never the host's content."""
    res, out, _err = run.sh(f"cat {path} 2>/dev/null | wc -c")
    assert res.status == "succeeded"
    assert out.strip() == "0", f"{path} showed {out.strip()} bytes of the host"


def test_loop_devices_do_not_name_the_scratch_file(run, settings):
    """sysfs names a loop device's backing file, which is sandpit's scratch disk on the host."""
    res, out, _err = run.sh("cat /sys/block/loop*/loop/backing_file /sys/class/block/*/loop/backing_file "
                            "2>/dev/null; grep -rIs . /sys/devices/virtual/block 2>/dev/null | head -50; true")
    assert res.status == "succeeded"
    assert str(settings.state_dir) not in out and "scratch.img" not in out


# -- on the host -----------------------------------------------------------------------------------

def _files_under(root: Path) -> list[str]:
    found = []
    for dirpath, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if not os.path.ismount(os.path.join(dirpath, d))]
        found += [os.path.join(dirpath, f) for f in files]
    return found


def test_nothing_of_the_state_opens_for_another_user(engine, settings, runtime, no_leftovers):
    """After a real job (log, artifact) and the database ``sandpit up`` uses, another uid opens none
    of the state's files, and none of a running job's (its rootfs, workspace, config.json)."""
    from pipelines.store.db import default_url, make_engine, migrate

    migrate(default_url(settings.state_dir))
    make_engine(default_url(settings.state_dir)).dispose()
    token = settings.state_dir / "api-token"
    if not token.exists():  # as `sandpit up` writes it
        token.touch(mode=0o600)
        token.write_text("test-token")
    job_id = "hostvis-" + os.urandom(4).hex()
    job_dir = settings.jobs_dir / job_id
    seen: list[list[str]] = []
    checked = threading.Event()

    def sink(stream: str, data: bytes) -> None:
        if b"ready" in data and not checked.is_set():
            checked.set()  # the job is running: its files are there
            paths = [str(job_dir / "config.json"), str(job_dir / "rootfs" / "etc" / "passwd"),
                     str(job_dir / "workspace" / "mine.txt"), str(job_dir / "rootfs" / "workspace" / "mine.txt")]
            seen.append(opened_by_nobody(paths))

    req = SandboxRequest(argv=("sh", "-c", "echo secret > mine.txt; chmod 644 mine.txt; echo ready; sleep 1"),
                         runtime=runtime, artifacts=("mine.txt",), env=(("TOKEN", "hunter2"),))
    res = engine.run(req, sink=sink, job_id=job_id)
    assert res.status == "succeeded", res.message
    assert seen == [[]], f"another user opened a running job's files: {seen}"
    assert res.artifacts and res.log_path
    files = _files_under(settings.state_dir)
    assert res.log_path in files and str(settings.state_dir / "sandpit.db") in files and str(token) in files
    assert opened_by_nobody(files) == []
    assert opened_by_nobody(_files_under(settings.run_dir)) == []


@pytest.fixture()
def open_dir() -> Iterator[Path]:
    """A directory every user can walk into (pytest's tmp_path is under a 0700 one)."""
    path = Path(tempfile.mkdtemp(prefix="sandpit-hostvis-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def test_a_state_dir_left_open_by_an_older_sandpit_is_closed_at_start(open_dir, settings):
    """0755 directories and 0644 files from before: the engine's start makes them root's alone."""
    tmp_path = open_dir
    state, rundir = tmp_path / "state", tmp_path / "run"
    for d in ("logs", "artifacts/ab", "images/refs", "images/layers/k/rootfs/etc", "jobs", "local"):
        (state / d).mkdir(parents=True, mode=0o755)
    (rundir / "locks").mkdir(parents=True, mode=0o755)
    files = {"logs/j.jsonl": "log", "artifacts/ab/cdef": "artifact", "images/refs/debian.json": "{}",
             "images/layers/k/rootfs/etc/passwd": "root:x", "sandpit.db": "db", "api-token": "t0ken"}
    for name, text in files.items():
        (state / name).write_text(text)
        os.chmod(state / name, 0o644)
    (rundir / "locks" / "job-x.lock").write_text("")
    os.chmod(tmp_path, 0o755)  # noqa: S103 - an older sandpit's modes, on purpose
    for p in [state, rundir, *state.rglob("*"), *rundir.rglob("*")]:
        os.chmod(p, 0o755 if p.is_dir() else 0o644)
    paths = [str(state / name) for name in files] + [str(rundir / "locks" / "job-x.lock")]
    assert len(opened_by_nobody(paths)) == len(paths)  # the hole, as an older sandpit left it
    Engine(replace(settings, state_dir=state, run_dir=rundir))
    assert opened_by_nobody(paths) == []
    assert (state / "sandpit.db").stat().st_mode & 0o777 == 0o600
    assert (state / "api-token").stat().st_mode & 0o777 == 0o600
    assert state.stat().st_mode & 0o777 == 0o711 and (state / "jobs").stat().st_mode & 0o777 == 0o711
    assert (state / "logs").stat().st_mode & 0o777 == 0o700


def test_jobs_still_run_in_every_runtime_and_profile(any_run):
    """The private state does not lock the job's own root out of its rootfs and workspace."""
    for profile in ("default", "strict"):
        res, out, err = any_run.sh("echo data > /workspace/f && cat /workspace/f /etc/hostname", profile=profile)
        assert res.status == "succeeded", err
        assert out.startswith("data\n")
    assert json.dumps(res.to_json())


def test_egress_mountinfo_names_no_host_path_and_no_job_id(settings, runtime, world, no_leftovers):  # noqa: F811
    """With a network: resolv.conf and /sys are mounted too; neither names the host's paths."""
    engine = Engine(settings, network=world.settings, host_network=world.network)
    res, out, err = Runner(engine, runtime).sh("cat /proc/self/mountinfo; cat /etc/resolv.conf", network="egress")
    assert res.status == "succeeded", err
    assert "/etc/resolv.conf" in out and "nameserver" in out
    for host_text in (str(settings.state_dir), str(settings.run_dir), str(res.job_id)):
        assert host_text not in out, f"{host_text!r} shows in the job's mount table"
