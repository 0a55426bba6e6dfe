"""Every line of the sandbox checklist, asserted on the generated OCI config (no containers)."""

from __future__ import annotations

from typing import Any

import pytest

from worker.sandbox.request import SandboxRequest
from worker.sandbox.spec import (
    DEFAULT_CAPS,
    ID_RANGE,
    STRICT_UID,
    SpecInputs,
    build_spec,
    load_seccomp,
)

SECCOMP = load_seccomp()


def make(profile: str = "default", **kw: Any) -> dict[str, Any]:
    req_kw = {k: kw.pop(k) for k in ("argv", "env", "workdir") if k in kw}
    req = SandboxRequest(argv=req_kw.get("argv", ("true",)), env=req_kw.get("env", ()),
                         workdir=req_kw.get("workdir", "/workspace"), profile=profile)  # type: ignore[arg-type]
    inputs = dict(request=req, rootfs="/jobs/j/rootfs", workspace="/scratch/j/workspace",
                  uid_base=100_000_000, cgroups_path="/sandpit/j/ctr", seccomp=SECCOMP)
    inputs.update(kw)
    return build_spec(SpecInputs(**inputs))  # type: ignore[arg-type]


def rule_for(spec: dict[str, Any], name: str) -> list[dict[str, Any]]:
    return [r for r in spec["linux"]["seccomp"]["syscalls"] if name in r["names"]]


def test_user_namespace_maps_root_to_unprivileged_range():
    """Job root is host uid_base (never 0), for uids and gids, over a 65536 range."""
    spec = make()
    assert {"type": "user"} in spec["linux"]["namespaces"]
    for key in ("uidMappings", "gidMappings"):
        (m,) = spec["linux"][key]
        assert m == {"containerID": 0, "hostID": 100_000_000, "size": ID_RANGE}
        assert m["hostID"] != 0


def test_no_new_privileges():
    """noNewPrivileges is set in both profiles."""
    assert make()["process"]["noNewPrivileges"] is True
    assert make("strict")["process"]["noNewPrivileges"] is True


@pytest.mark.parametrize("profile, caps, uid", [
    ("default", set(DEFAULT_CAPS), 0),
    ("strict", set(), STRICT_UID),
])
def test_capabilities_per_profile(profile, caps, uid):
    """default = Docker's 14 in bounding/effective/permitted; strict = none and a non-root uid."""
    spec = make(profile)
    c = spec["process"]["capabilities"]
    assert set(c["bounding"]) == set(c["effective"]) == set(c["permitted"]) == caps
    assert c["inheritable"] == [] and c["ambient"] == []
    assert spec["process"]["user"]["uid"] == uid and spec["process"]["user"]["gid"] == uid


def test_default_caps_are_dockers_fourteen():
    """The default set is exactly Docker's default list (no SYS_ADMIN, NET_ADMIN, SYS_PTRACE...)."""
    assert len(DEFAULT_CAPS) == 14
    for dangerous in ("CAP_SYS_ADMIN", "CAP_NET_ADMIN", "CAP_SYS_PTRACE", "CAP_SYS_MODULE", "CAP_DAC_READ_SEARCH"):
        assert dangerous not in DEFAULT_CAPS


@pytest.mark.parametrize("syscall", [
    "io_uring_setup", "io_uring_enter", "io_uring_register", "unshare", "setns", "mount", "umount2",
    "pivot_root", "bpf", "perf_event_open", "keyctl", "add_key", "ptrace", "kexec_load", "init_module",
    "open_by_handle_at", "userfaultfd", "fsopen", "fsmount", "open_tree", "move_mount", "mount_setattr",
])
def test_seccomp_blocks(syscall):
    """Dangerous syscalls are not allowed by any rule, so the default action (EPERM) answers."""
    spec = make()
    assert spec["linux"]["seccomp"]["defaultAction"] == "SCMP_ACT_ERRNO"
    assert all(r["action"] != "SCMP_ACT_ALLOW" for r in rule_for(spec, syscall))


def test_seccomp_clone_only_without_namespace_flags():
    """clone is allowed only when no CLONE_NEW* flag is set (masked compare)."""
    (rule,) = rule_for(make(), "clone")
    (arg,) = rule["args"]
    assert arg["op"] == "SCMP_CMP_MASKED_EQ" and arg["value"] == 0x7E020000 and arg["valueTwo"] == 0


def test_seccomp_clone3_is_enosys():
    """clone3 answers ENOSYS so libc falls back to clone (threads still work)."""
    (rule,) = rule_for(make(), "clone3")
    assert rule["action"] == "SCMP_ACT_ERRNO" and rule["errnoRet"] == 38


def test_seccomp_chroot_follows_capability():
    """chroot is allowed only when the job holds CAP_SYS_CHROOT (profile default)."""
    assert rule_for(make(), "chroot")
    assert not rule_for(make("strict"), "chroot")


def test_seccomp_rules_are_plain_oci():
    """Docker-only keys (includes, comment) never reach the runtime."""
    for rule in make()["linux"]["seccomp"]["syscalls"]:
        assert set(rule) <= {"names", "action", "args", "errnoRet"}


@pytest.mark.parametrize("path", [
    # Docker's list
    "/proc/acpi", "/proc/asound", "/proc/interrupts", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
    "/proc/sched_debug", "/proc/scsi", "/proc/timer_list", "/proc/timer_stats", "/sys/firmware",
    "/sys/devices/virtual/powercap",
    # and what else names the host, its kernel build or sandpit's paths
    "/proc/cmdline", "/proc/config.gz", "/proc/kallsyms", "/proc/modules", "/proc/iomem", "/proc/kmsg",
    "/sys/kernel/vmcoreinfo", "/sys/kernel/debug", "/sys/kernel/tracing", "/sys/kernel/security",
    "/sys/kernel/btf", "/sys/kernel/notes", "/sys/devices/virtual/block", "/sys/devices/virtual/dmi",
])
def test_masked_paths(path):
    assert path in make()["linux"]["maskedPaths"]


@pytest.mark.parametrize("path", [
    "/proc/self/mountinfo", "/proc/mounts", "/proc/meminfo", "/proc/stat", "/proc/cpuinfo", "/proc/loadavg",
    "/proc/uptime", "/proc/self/status", "/sys/fs/cgroup", "/sys/devices/system/cpu", "/sys/kernel/mm",
])
def test_what_df_ps_and_runtimes_read_is_not_masked(path):
    """df and mount read mountinfo; ps, top, free, nproc and language runtimes read these."""
    masked = make()["linux"]["maskedPaths"]
    assert not any(path == m or path.startswith(m + "/") for m in masked)


@pytest.mark.parametrize("path", ["/proc/sys", "/proc/sysrq-trigger", "/proc/bus", "/proc/fs", "/proc/irq"])
def test_readonly_paths(path):
    assert path in make()["linux"]["readonlyPaths"]


def mount_at(spec: dict[str, Any], dest: str) -> dict[str, Any]:
    (m,) = [m for m in spec["mounts"] if m["destination"] == dest]
    return m


def test_fresh_tmpfs_dev_and_sized_shm():
    """/dev is a new tmpfs; /dev/shm has a size."""
    spec = make()
    assert mount_at(spec, "/dev")["type"] == "tmpfs"
    shm = mount_at(spec, "/dev/shm")
    assert shm["type"] == "tmpfs" and any(o.startswith("size=") for o in shm["options"])


def test_proc_and_sys_options():
    """/proc is nosuid,noexec,nodev; /sys is read-only."""
    spec = make()
    assert {"nosuid", "noexec", "nodev"} <= set(mount_at(spec, "/proc")["options"])
    assert "ro" in mount_at(spec, "/sys")["options"]


def test_sys_without_owned_netns_is_empty_tmpfs():
    """With a host-owned netns, /sys is an empty read-only tmpfs, never the host's sysfs."""
    sys_mount = mount_at(make(netns_path="/proc/1/fd/3"), "/sys")
    assert sys_mount["type"] == "tmpfs" and "ro" in sys_mount["options"]


def test_no_host_mounts_but_workspace():
    """The only bind mount is the job's workspace (plus resolv.conf when networking)."""
    binds = [m for m in make()["mounts"] if m["type"] == "bind"]
    assert [m["destination"] for m in binds] == ["/workspace"]
    assert binds[0]["source"] == "/scratch/j/workspace"
    assert {"nosuid", "nodev"} <= set(binds[0]["options"])


def test_namespaces_include_cgroup_and_fresh_net():
    kinds = {n["type"] for n in make()["linux"]["namespaces"]}
    assert kinds == {"pid", "ipc", "uts", "mount", "user", "cgroup", "network"}
    (net,) = [n for n in make()["linux"]["namespaces"] if n["type"] == "network"]
    assert "path" not in net


def test_rlimits():
    """core dumps off; nofile bounded."""
    rl = {r["type"]: r for r in make(nofile=4096)["process"]["rlimits"]}
    assert rl["RLIMIT_CORE"]["hard"] == rl["RLIMIT_CORE"]["soft"] == 0
    assert rl["RLIMIT_NOFILE"]["hard"] == 4096


def test_environment_is_allow_list_only(monkeypatch):
    """Nothing of the worker's environment leaks; request env wins over image env."""
    monkeypatch.setenv("SANDPIT_LEAK_PROBE", "secret")
    spec = make(env=(("FOO", "job"),), image_env=(("FOO", "image"), ("BAR", "image")))
    env = dict(e.split("=", 1) for e in spec["process"]["env"])
    assert "SANDPIT_LEAK_PROBE" not in env
    assert env["FOO"] == "job" and env["BAR"] == "image"
    assert set(env) == {"PATH", "LANG", "CI", "SANDPIT", "HOME", "HOSTNAME", "FOO", "BAR"}


def test_no_terminal_no_hooks_private_propagation():
    """stdin is not a terminal (sandpit gives /dev/null); no hooks; private rootfs propagation."""
    spec = make()
    assert spec["process"]["terminal"] is False
    assert "hooks" not in spec
    assert spec["linux"]["rootfsPropagation"] == "private"


@pytest.mark.parametrize("workdir, ok", [
    ("/workspace", True), ("/workspace/sub/", True), ("/", True),
    ("relative", False), ("/proc", False), ("/proc/self/cwd", False), ("/sys/x", False),
    ("/dev", False), ("/workspace/../proc", False),
])
def test_cwd_is_validated(workdir, ok):
    """cwd must be absolute, free of '..', and never under /proc, /sys or /dev."""
    if ok:
        assert make(workdir=workdir)["process"]["cwd"].startswith("/")
    else:
        with pytest.raises(ValueError):
            make(workdir=workdir)


def test_runsc_has_no_host_user_namespace():
    """For runsc (its own kernel) the spec carries no user namespace or id maps."""
    spec = make(userns=False)
    assert "uidMappings" not in spec["linux"]
    assert {"type": "user"} not in spec["linux"]["namespaces"]


def test_hosts_file_of_a_job_with_services_is_bound_read_only():
    """A job with services gets sandpit's /etc/hosts (its services' names): a read-only bind, no
    exec, no devices, no setuid; a job without gets none (the image's)."""
    (hosts,) = [m for m in make(hosts_file="/jobs/j/hosts/hosts")["mounts"] if m["destination"] == "/etc/hosts"]
    assert hosts["source"] == "/jobs/j/hosts/hosts" and hosts["type"] == "bind"
    assert {"ro", "nosuid", "nodev", "noexec"} <= set(hosts["options"])
    assert not [m for m in make()["mounts"] if m["destination"] == "/etc/hosts"]


def test_a_services_user_replaces_the_profiles():
    """A service runs as its image's User (uid and gid inside the user namespace); the mapping and
    the profile's capabilities stay as they are."""
    spec = make(user=(999, 998))
    assert spec["process"]["user"] == {"uid": 999, "gid": 998, "additionalGids": []}
    assert spec["linux"]["uidMappings"][0]["hostID"] == 100_000_000
    assert make("strict", user=(0, 0))["process"]["capabilities"]["bounding"] == []
