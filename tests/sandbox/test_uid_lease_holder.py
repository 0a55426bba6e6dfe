"""A uid slot whose worker died while its job's container still runs is never leased again until
the container is gone (worker/sandbox/leases.py): the flock died with the worker, the cgroup did not."""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import require, require_root
from worker.sandbox.cgroups import CGROUP_ROOT, is_v2

# a child that leases slot 0 for the cgroup, puts a long-lived process into it (the "container"),
# says so, and waits to be SIGKILLed as a worker would be
_WORKER = """
import subprocess, sys, time
from pathlib import Path
from worker.sandbox.leases import lease_uid_slot
registry, procs, holder = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
slot, lease = lease_uid_slot(100_000_000, 4, 65536, registry=registry, holder=holder)
job = subprocess.Popen(["sleep", "300"], start_new_session=True)
with open(procs, "w") as f:
    f.write(str(job.pid))
print(slot, job.pid, flush=True)
time.sleep(300)
"""


@pytest.fixture
def job_cgroup() -> Iterator[tuple[str, Path]]:
    """A job cgroup of a test instance (``/sandpit-<hex>/<job>``), removed with its processes."""
    require_root()
    parent = f"sandpit-{secrets.token_hex(4)}"
    base = CGROUP_ROOT if is_v2() else CGROUP_ROOT / "pids"
    require(base.is_dir(), f"needs the pids cgroup hierarchy at {base}")
    directory = base / parent / "job-1"
    directory.mkdir(parents=True)
    try:
        yield f"/{parent}/job-1", directory
    finally:
        for _ in range(100):
            pids = (directory / "cgroup.procs").read_text().split()
            if not pids:
                break
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)
            time.sleep(0.02)
        for d in (directory, directory.parent):
            with contextlib.suppress(OSError):
                d.rmdir()


def test_a_slot_whose_dead_holder_left_a_live_job_is_skipped(tmp_path: Path, job_cgroup: tuple[str, Path]) -> None:
    """The worker holding slot 0 is SIGKILLed while its job's process lives on in the job cgroup:
    the next lease skips slot 0 (gets 1); once the job's processes are gone slot 0 is free again."""
    from worker.sandbox.leases import lease_uid_slot

    holder, directory = job_cgroup
    registry = tmp_path / "uids"
    worker = subprocess.Popen([sys.executable, "-c", _WORKER, str(registry), str(directory / "cgroup.procs"), holder],
                              stdout=subprocess.PIPE, text=True, cwd=Path(__file__).parents[2])
    try:
        assert worker.stdout is not None
        slot, job_pid = (int(x) for x in worker.stdout.readline().split())
        assert slot == 0
    finally:
        worker.send_signal(signal.SIGKILL)
        worker.wait()
        if worker.stdout is not None:
            worker.stdout.close()
    assert (directory / "cgroup.procs").read_text().split() == [str(job_pid)]  # the job outlived its worker

    slot, lease = lease_uid_slot(100_000_000, 4, 65536, registry=registry, holder="/sandpit/other-job")
    assert slot == 1, "a slot whose job still runs was handed out again"
    lease.release()

    os.kill(job_pid, signal.SIGKILL)
    for _ in range(200):
        if not (directory / "cgroup.procs").read_text().split():
            break
        time.sleep(0.01)
    slot, lease = lease_uid_slot(100_000_000, 4, 65536, registry=registry, holder="/sandpit/other-job")
    assert slot == 0
    assert (registry / "100000000-65536.lock").read_text().split("\n")[1] == "/sandpit/other-job"
    lease.release()


def test_a_lease_file_naming_no_sandpit_cgroup_is_not_followed(tmp_path: Path) -> None:
    """A lease file whose holder line is not a sandpit job cgroup (``..``, another tree) is ignored:
    the slot is leased as free, nothing outside sandpit's cgroups is read."""
    from worker.sandbox.leases import lease_uid_slot

    registry = tmp_path / "uids"
    registry.mkdir()
    for text in ("1\n/sandpit/../../\n", "1\n/system.slice/sshd.service\n", "1\n", ""):
        (registry / "100000000-65536.lock").write_text(text)
        slot, lease = lease_uid_slot(100_000_000, 4, 65536, registry=registry)
        assert slot == 0, text
        lease.release()
