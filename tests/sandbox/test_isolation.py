"""Probes inside real containers proving each line of the sandbox checklist."""

from __future__ import annotations

import os

import pytest

DEFAULT_CAPEFF = 0xA80425FB  # Docker's 14 capabilities


def status_fields(text: str) -> dict[str, str]:
    return dict(line.split(":\t", 1) for line in text.splitlines() if ":\t" in line)


def test_capabilities_default_profile(run):
    """profile default: Docker's 14 capabilities (effective = bounding), nothing inheritable or ambient."""
    res, out, _ = run("cat", "/proc/self/status")
    assert res.status == "succeeded"
    f = status_fields(out)
    assert int(f["CapEff"], 16) == DEFAULT_CAPEFF == int(f["CapBnd"], 16) == int(f["CapPrm"], 16)
    assert int(f["CapInh"], 16) == 0 and int(f["CapAmb"], 16) == 0


def test_strict_profile_has_no_capabilities_and_no_root(run):
    """profile strict: no capabilities at all and a non-root uid."""
    res, out, _ = run("sh", "-c", "id -u; cat /proc/self/status", profile="strict")
    assert res.status == "succeeded"
    assert out.splitlines()[0] == "1000"
    f = status_fields(out)
    for key in ("CapEff", "CapBnd", "CapPrm", "CapInh", "CapAmb"):
        assert int(f[key], 16) == 0


def test_no_new_privs_and_seccomp_filter(run):
    """NoNewPrivs is 1 and a seccomp filter (mode 2) is active."""
    _res, out, _ = run("cat", "/proc/self/status")
    f = status_fields(out)
    assert f["NoNewPrivs"].strip() == "1"
    assert f["Seccomp"].strip() == "2"


def test_job_root_is_unprivileged_on_the_host(run):
    """uid 0 inside maps to a high, non-zero host uid."""
    _res, out, _ = run("cat", "/proc/self/uid_map", "/proc/self/gid_map")
    for line in out.splitlines():
        inside, host, size = (int(x) for x in line.split())
        assert inside == 0 and host >= 100_000 and size == 65536


@pytest.mark.parametrize("script", [
    "mount -t tmpfs none /mnt",
    "unshare -r true",
    "unshare -n true",
    "unshare -m true",
])
def test_mount_and_unshare_are_refused(run, script):
    """Creating mounts or namespaces fails with EPERM."""
    res, _out, err = run.sh(script)
    assert res.status == "failed" and res.exit_code != 0
    assert "ermission denied" in err or "not permitted" in err


@pytest.mark.parametrize("number, errno_expected", [
    (425, 1),  # io_uring_setup → EPERM
    (426, 1),  # io_uring_enter
    (427, 1),  # io_uring_register
    (435, 38),  # clone3 → ENOSYS so libc falls back to clone
    (308, 1),  # setns
    (321, 1),  # bpf
    (298, 1),  # perf_event_open
    (250, 1),  # keyctl
])
def test_blocked_syscalls(run, number, errno_expected):
    """io_uring and friends answer EPERM; clone3 answers ENOSYS."""
    res, out, _ = run("perl", "-e", f"syscall({number}, 0, 0, 0, 0); print $!+0")
    assert res.status == "succeeded"
    assert int(out.strip()) == errno_expected


def test_threads_still_work(run):
    """With clone3 refused, threads are made with clone and work."""
    res, out, _ = run("python3", "-c",
                      "import threading; r=[]; t=[threading.Thread(target=r.append, args=(i,)) for i in range(8)];"
                      "[x.start() for x in t]; [x.join() for x in t]; print(sorted(r))", image="python")
    assert res.status == "succeeded", out
    assert out.strip() == str(list(range(8)))


@pytest.mark.parametrize("path", ["/proc/sys/kernel/hostname", "/proc/sys/vm/drop_caches", "/proc/sysrq-trigger"])
def test_proc_writes_fail(run, path):
    res, _out, _err = run.sh(f"echo 1 > {path}")
    assert res.exit_code != 0


@pytest.mark.parametrize("path", ["/proc/kcore", "/proc/keys", "/proc/timer_list", "/proc/sched_debug"])
def test_masked_files_read_empty(run, path):
    """Masked /proc files read as empty (or do not exist)."""
    res, out, _ = run.sh(f"test -e {path} || exit 0; cat {path} | wc -c")
    assert res.status == "succeeded"
    assert out.strip() in ("", "0")


def test_sys_firmware_masked_and_sys_read_only(run):
    res, out, _ = run.sh("ls /sys/firmware | wc -l; touch /sys/x 2>/dev/null && echo WROTE || echo ro")
    assert res.status == "succeeded"
    assert out.split() == ["0", "ro"]


def test_dev_holds_only_expected_devices(run):
    """/dev is fresh: the standard character devices and nothing of the host's."""
    res, out, _ = run("ls", "-A", "/dev")
    assert res.status == "succeeded"
    assert set(out.split()) <= {"core", "fd", "full", "mqueue", "null", "ptmx", "pts", "random", "shm",
                                "stderr", "stdin", "stdout", "tty", "urandom", "zero", "console"}
    assert not {"sda", "vda", "kmsg", "mem", "loop0", "fuse"} & set(out.split())


def test_mount_options_of_proc_shm_and_root(run):
    """/proc nosuid,noexec,nodev; /dev/shm sized; / private (no shared propagation)."""
    _res, out, _ = run("cat", "/proc/self/mountinfo")
    lines = [line.split() for line in out.splitlines()]
    by_point = {f[4]: f for f in lines}
    proc_opts = by_point["/proc"][5].split(",")
    assert {"nosuid", "nodev", "noexec"} <= set(proc_opts)
    shm = by_point["/dev/shm"]
    assert "size=65536k" in " ".join(shm)
    root = by_point["/"]
    assert not any(tag.startswith("shared:") for tag in root[6:root.index("-")])
    # nothing of the host is mounted in: only the rootfs, kernel filesystems, masks and the workspace
    expected = {"/", "/proc", "/dev", "/dev/pts", "/dev/shm", "/dev/mqueue", "/tmp", "/sys", "/workspace"}
    extra = {p for p in by_point if p not in expected}
    assert all(p.startswith(("/proc/", "/sys/", "/dev/")) for p in extra), extra


def test_cgroup_namespace(run):
    """The job sees its own cgroup as the root."""
    _res, out, _ = run("cat", "/proc/self/cgroup")
    for line in out.splitlines():
        assert line.split(":", 2)[2] == "/"


def test_rlimits(run):
    _res, out, _ = run.sh("ulimit -c; ulimit -n")
    core, nofile = out.split()
    assert core == "0" and 0 < int(nofile) <= 65536


def test_worker_environment_does_not_leak(run, monkeypatch):
    """Only allow-listed variables reach the job."""
    monkeypatch.setenv("SANDPIT_LEAK_PROBE", "host-secret")
    res, out, _ = run("env", env=(("JOB_VAR", "1"),))
    names = {line.split("=", 1)[0] for line in out.splitlines()}
    assert res.status == "succeeded"
    assert "SANDPIT_LEAK_PROBE" not in names and "host-secret" not in out
    assert names == {"PATH", "LANG", "CI", "SANDPIT", "HOME", "HOSTNAME", "JOB_VAR"}


def test_stdin_is_dev_null_and_cwd_is_workspace(run, runtime):
    """stdin gives EOF at once (runc relays it through a pipe of its own, fed from /dev/null)."""
    res, out, _ = run.sh("readlink /proc/self/fd/0; cat; pwd; hostname")
    assert res.status == "succeeded"
    stdin, *rest = out.split()
    assert rest == ["/workspace", "sandpit"]
    assert stdin == "/dev/null" or (runtime == "runc" and stdin.startswith("pipe:"))


def test_no_network_but_loopback(run):
    """network none: only lo, and it is up."""
    _res, out, _ = run("cat", "/proc/net/dev")
    ifaces = {line.split(":")[0].strip() for line in out.splitlines()[2:]}
    assert ifaces == {"lo"}


@pytest.mark.parametrize("script", [
    "chown nobody /workspace",
    "useradd -m builder && id builder",
    "echo test > /etc/sandpit-probe && cat /etc/sandpit-probe",
])
def test_root_actions_work_under_default(run, script):
    res, _out, err = run.sh(script)
    assert res.status == "succeeded", err


@pytest.mark.parametrize("script", [
    "chown nobody /workspace",
    "useradd -m builder",
    "echo test > /etc/sandpit-probe",
])
def test_root_actions_fail_under_strict(run, script):
    res, _out, _err = run.sh(script, profile="strict")
    assert res.status == "failed"


def test_job_cannot_see_host_processes_or_files(run):
    """A fresh pid namespace and a rootfs of the image only."""
    res, out, _ = run.sh("ls /proc | grep -c '^[0-9]'; test -e /var/lib/sandpit && echo LEAK || echo ok")
    assert res.status == "succeeded"
    count, verdict = out.split()
    assert int(count) <= 4 and verdict == "ok"


def test_workspace_writes_are_private_to_the_job(run):
    """A second job does not see the first job's files (fresh upper dir and workspace)."""
    run.sh("echo one > /workspace/f; echo one > /etc/f")
    _res, out, _ = run.sh("ls /workspace /etc/f 2>&1 || true")
    assert "f" not in out.split()


def test_exit_code_passes_through(run):
    res, _out, _err = run.sh("exit 42")
    assert (res.status, res.reason, res.exit_code, res.signal) == ("failed", "exit_code", 42, None)


def test_output_order_and_log_file(run):
    """stdout and stderr arrive in order, each chunk timestamped in the log outside the sandbox."""
    from worker.sandbox.logs import read_log

    res, out, err = run.sh("echo one; sleep 0.05; echo two >&2; sleep 0.05; echo three")
    assert out == "one\nthree\n" and err == "two\n"
    chunks = read_log(res.log_path)  # type: ignore[arg-type]
    assert [c[2] for c in chunks] == ["one\n", "two\n", "three\n"]
    assert [c[1] for c in chunks] == ["out", "err", "out"]
    assert chunks[0][0] <= chunks[1][0] <= chunks[2][0]
    assert os.path.exists(res.log_path)  # type: ignore[arg-type]
