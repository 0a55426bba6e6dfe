"""Hostile jobs: each limit ends the job with its own reason while the host stays healthy."""

from __future__ import annotations

import os
import shutil

from worker.sandbox.request import Limits

MiB = 1 << 20


def test_memory_bomb_is_oom_killed(run):
    """A job allocating without bound is killed with reason oom, usage shows the peak at the limit."""
    res, _out, _err = run.sh("x=a; while true; do x=$x$x; done", limits=Limits(memory_bytes=64 * MiB))
    assert (res.status, res.reason) == ("failed", "oom")
    assert res.signal == 9
    assert 32 * MiB < res.usage.memory_peak_bytes <= 64 * MiB


def test_oom_kills_the_whole_job_together(run):
    """When one process blows the memory limit, its siblings die with it (no half-alive job)."""
    res, out, _ = run("python3", "-c", """
import os, subprocess, time
sleeper = subprocess.Popen(['sleep', '60'])
print('started', flush=True)
b = []
while True:
    b.append(bytearray(8 << 20))
""", image="python", limits=Limits(memory_bytes=96 * MiB, timeout_s=20))
    assert res.reason == "oom"
    assert "started" in out
    assert res.duration_s < 15  # the sleeper did not keep the job alive until the timeout


def test_fork_bomb_hits_pids_limit(run):
    res, _out, _err = run.sh("f(){ f|f& }; f; sleep 5", limits=Limits(pids=32))
    assert (res.status, res.reason) == ("failed", "pids_limit")
    assert res.usage.pids_peak <= 32


def test_busy_loop_is_held_to_its_cpu_quota(run):
    """cpus=0.5: a 2-second busy loop gets about one second of CPU."""
    res, _out, _err = run.sh('timeout 2 sh -c "while :; do :; done"; exit 0',
                             limits=Limits(cpus=0.5))
    assert res.status == "succeeded"
    assert res.usage.cpu_s < 0.75 * res.duration_s


def test_timeout_kills_a_sigterm_trapping_job(run):
    """A job that ignores SIGTERM still dies: SIGTERM to all, grace, then SIGKILL."""
    res, _out, _err = run.sh('trap "" TERM; sleep 100 & while true; do sleep 1; done',
                             limits=Limits(timeout_s=1, grace_s=0.5))
    assert (res.status, res.reason, res.signal) == ("failed", "timeout", 9)
    assert 1 <= res.duration_s < 10


def test_timeout_with_sigterm_obeyed(run):
    """A job that exits on SIGTERM is stopped during the grace period."""
    res, _out, _err = run.sh("trap 'exit 143' TERM; while true; do sleep 0.1; done",
                             limits=Limits(timeout_s=1, grace_s=10))
    assert res.reason == "timeout"
    assert res.duration_s < 5


def test_disk_filler_fails_and_host_disk_is_untouched(run, settings):
    """Writing past --disk fails inside the job (EDQUOT) with reason disk_quota."""
    free_before = shutil.disk_usage(settings.state_dir).free
    res, _out, err = run.sh("dd if=/dev/zero of=/workspace/fill bs=1M count=200; "
                            "dd if=/dev/zero of=/var/fill bs=1M count=200",
                            limits=Limits(disk_bytes=32 * MiB))
    assert (res.status, res.reason) == ("failed", "disk_quota")
    assert "Disk quota exceeded" in err
    assert shutil.disk_usage(settings.state_dir).free > free_before - 64 * MiB


def test_disk_limit_covers_the_root_filesystem_too(run):
    """Writes to the image's own directories (the overlay upper dir) count against --disk."""
    res, _out, err = run.sh("dd if=/dev/zero of=/var/fill bs=1M count=200", limits=Limits(disk_bytes=32 * MiB))
    assert res.reason == "disk_quota", err


def test_a_job_that_carries_on_past_a_full_disk_and_exits_0_succeeds(run):
    """A full disk is a verdict only on a job that failed: one that meets EDQUOT, carries on and
    exits 0 succeeded (only data in nested subvolumes, past --disk, overrides its exit code)."""
    res, _out, err = run.sh("dd if=/dev/zero of=/workspace/fill bs=1M count=100 || echo carried on",
                            limits=Limits(disk_bytes=16 * MiB))
    assert "Disk quota exceeded" in err
    assert (res.status, res.reason) == ("succeeded", None)


def test_log_flood_is_cut_at_the_limit(run):
    res, out, _err = run("yes", "flood", limits=Limits(log_bytes=64 * 1024))
    assert (res.status, res.reason) == ("failed", "log_limit")
    # the limit counts what the log file stores (each "\n" is 2 bytes of JSON), and the live
    # reader gets exactly what is stored
    assert 48 * 1024 < len(out) < 64 * 1024
    assert os.path.getsize(res.log_path) <= 64 * 1024 + 256  # type: ignore[arg-type]


def test_usage_is_reported(run):
    res, _out, _err = run.sh("head -c 20000000 /dev/zero | cat > /dev/null; sleep 0.1 & wait")
    assert res.status == "succeeded"
    assert res.usage.cpu_s > 0
    assert res.usage.memory_peak_bytes > 0
    assert res.usage.pids_peak >= 2


def test_host_stays_healthy_after_hostile_jobs(run):
    """After the bombs, an ordinary job still runs normally."""
    run.sh("x=a; while true; do x=$x$x; done", limits=Limits(memory_bytes=32 * MiB))
    run.sh("f(){ f|f& }; f", limits=Limits(pids=16))
    res, out, _ = run("echo", "fine")
    assert res.status == "succeeded" and out == "fine\n"


def test_quota_accounting_stays_consistent_across_jobs(run, settings):
    """Job disks come and go without leaving btrfs qgroups inconsistent (limits would stop holding)."""
    import subprocess

    for _ in range(8):
        run.sh("head -c 3000000 /dev/zero > /workspace/f; sync")
    shown = subprocess.run(["btrfs", "qgroup", "show", str(settings.scratch_dir)], capture_output=True, text=True)
    assert "inconsistent" not in shown.stdout + shown.stderr
    res, _out, _err = run.sh("dd if=/dev/zero of=/workspace/fill bs=1M count=100", limits=Limits(disk_bytes=16 * MiB))
    assert res.reason == "disk_quota"
