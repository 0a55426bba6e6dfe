"""crun's compiled seccomp filter, made once and handed to every job (worker/sandbox/seccomp_cache.py)."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest

from tests.conftest import require
from worker.sandbox import seccomp_cache
from worker.sandbox.engine import Engine
from worker.sandbox.request import SandboxRequest
from worker.sandbox.runtime import choose_runtime, runtime_problem


def _gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] == "Z"
    except FileNotFoundError:
        return True


def rules_text(config: dict) -> str:
    return json.dumps(config["linux"]["seccomp"], sort_keys=True, separators=(",", ":"))


@pytest.mark.parametrize("profile", ["default", "strict"])
def test_the_program_is_the_one_crun_compiles_for_the_jobs_whole_spec(settings, profile, tmp_path, no_leftovers):
    """A job run without the cache: crun compiles its whole spec's rules and keeps the program in
    the container's state; the probe's program for the same rules is byte for byte the same."""
    require(runtime_problem("crun") is None, f"crun: {runtime_problem('crun')}")
    engine = Engine(settings, compiled_seccomp=False)
    crun = choose_runtime("crun", settings.run_dir)
    job_id = "bpfcheck-" + os.urandom(4).hex()
    seen: dict[str, object] = {}
    taken = threading.Event()

    def sink(stream: str, data: bytes) -> None:
        if b"ready" in data and not taken.is_set():
            taken.set()
            config = json.loads((settings.jobs_dir / job_id / "config.json").read_text())
            seen["annotated"] = seccomp_cache.ANNOTATION in config.get("annotations", {})
            seen["rules"] = rules_text(config)
            seen["compiled"] = (crun.root / f"sandpit-{job_id}" / "seccomp.bpf").read_bytes()

    req = SandboxRequest(argv=("sh", "-c", "echo ready; sleep 1"), runtime="crun", profile=profile)
    rec = engine.run(req, sink=sink, job_id=job_id)
    assert rec.status == "succeeded", rec.message
    assert seen["annotated"] is False
    probe = seccomp_cache.compile_with(crun, str(seen["rules"]), tmp_path / "cache")
    assert probe is not None and probe == seen["compiled"]
    assert list((tmp_path / "cache").iterdir()) == []  # the probe's bundle and state are gone


def test_a_job_gets_the_program_and_keeps_the_filter(engine, settings, no_leftovers):
    """With the cache (the engine's default), crun is handed the program; the job runs under one
    filter, and a call the profile refuses (a new user namespace) is refused."""
    require(runtime_problem("crun") is None, f"crun: {runtime_problem('crun')}")
    job_id = "bpfjob-" + os.urandom(4).hex()
    seen: dict[str, object] = {}

    def sink(stream: str, data: bytes) -> None:
        seen.setdefault(stream, b"")
        seen[stream] = seen[stream] + data  # type: ignore[operator]
        if b"ready" in data and "config" not in seen:
            seen["config"] = json.loads((settings.jobs_dir / job_id / "config.json").read_text())

    script = "echo ready; grep Seccomp /proc/self/status; unshare -U true || echo refused"
    req = SandboxRequest(argv=("sh", "-c", script), runtime="crun")
    rec = engine.run(req, sink=sink, job_id=job_id)
    assert rec.status == "succeeded", rec.message
    config = seen["config"]
    assert isinstance(config, dict) and seccomp_cache.ANNOTATION in config["annotations"]
    assert config["linux"]["seccomp"]["defaultAction"] == "SCMP_ACT_ERRNO"  # the rules stay in the spec
    out = seen["out"]
    assert isinstance(out, bytes)
    assert b"Seccomp:\t2" in out and b"Seccomp_filters:\t1" in out and b"refused" in out


def test_an_entry_is_used_only_for_its_own_rules(settings, tmp_path):
    """An entry whose rules text is not the job's, or whose program is not whole instructions, is
    not used: the probe makes the right one (and the entry is rewritten)."""
    require(runtime_problem("crun") is None, f"crun: {runtime_problem('crun')}")
    crun = choose_runtime("crun", settings.run_dir)
    spec = {"linux": {"seccomp": {"defaultAction": "SCMP_ACT_ERRNO", "architectures": ["SCMP_ARCH_X86_64"],
                                  "syscalls": [{"names": ["exit_group"], "action": "SCMP_ACT_ALLOW"}]}}}
    folder = tmp_path / "seccomp"
    text = rules_text(spec)
    st = Path(crun.binary).stat()
    identity = f"{st.st_dev:x}-{st.st_ino:x}-{st.st_size:x}-{st.st_mtime_ns:x}"
    entry = seccomp_cache._entry(folder, identity, text)
    for planted in ({"rules": text.replace("exit_group", "execve"), "bpf": "AAAAAAAAAAA="},
                    {"rules": text, "bpf": "AAAA"}):
        seccomp_cache._known.clear()
        folder.mkdir(exist_ok=True)
        entry.write_text(json.dumps(planted))
        got = seccomp_cache._cached(folder, identity, text, crun)
        assert got is not None and got != planted["bpf"]
        assert json.loads(entry.read_text()) == {"rules": text, "bpf": got}
    seccomp_cache._known.clear()


def test_runc_gets_no_program(settings):
    """Only crun reads the annotation: any other runtime's spec is left as it was."""
    require(runtime_problem("runc") is None, f"runc: {runtime_problem('runc')}")
    spec = {"linux": {"seccomp": {"defaultAction": "SCMP_ACT_ERRNO", "syscalls": []}}}
    assert not seccomp_cache.add_compiled_filter(spec, choose_runtime("runc", settings.run_dir), settings.run_dir)
    assert "annotations" not in spec


def test_the_program_check():
    assert seccomp_cache.valid_program(bytes(8 * 4096)) and not seccomp_cache.valid_program(bytes(8 * 4097))


def test_reap_removes_a_probe_left_by_a_dead_process(settings):
    """A probe whose maker died (its container created, never started nor deleted) goes with the
    next reap once it is old; a fresh one (a probe under way) is left alone."""
    import subprocess
    import time

    from worker.sandbox.reaper import PROBE_STALE_S, reap

    require(runtime_problem("crun") is None, f"crun: {runtime_problem('crun')}")
    crun = choose_runtime("crun", settings.run_dir)
    folder = settings.run_dir / "seccomp"
    stale, fresh = folder / f".probe-{os.urandom(6).hex()}", folder / f".probe-{os.urandom(6).hex()}"
    for probe in (stale, fresh):
        (probe / "rootfs" / "dev").mkdir(parents=True)
        (probe / "rootfs" / "probe").touch(mode=0o700)
        config = {"ociVersion": "1.0.2", "process": {"user": {"uid": 0, "gid": 0}, "args": ["/probe"], "cwd": "/"},
                  "root": {"path": "rootfs", "readonly": True}, "mounts": [],
                  "linux": {"namespaces": [{"type": "mount"}, {"type": "pid"}, {"type": "network"}]}}
        (probe / "config.json").write_text(json.dumps(config))
    made = subprocess.run([crun.binary, "--cgroup-manager=disabled", f"--root={stale / 'state'}", "create",
                           "--bundle", str(stale), "left"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL, timeout=30)
    try:
        assert made.returncode == 0
        state = subprocess.run([crun.binary, f"--root={stale / 'state'}", "state", "left"], capture_output=True,
                               text=True, timeout=30)
        init = json.loads(state.stdout)["pid"]
        old = time.time() - PROBE_STALE_S - 60
        os.utime(stale, (old, old))
        done = reap(settings)
        assert f"seccomp probe {stale.name}" in done and not stale.exists()
        for _ in range(100):  # the probe's init was killed (and reaped by whoever adopted it)
            if _gone(init):
                break
            time.sleep(0.05)
        else:
            raise AssertionError(f"the probe's init {init} still runs")
        assert fresh.is_dir() and f"seccomp probe {fresh.name}" not in done
    finally:
        subprocess.run([crun.binary, "--cgroup-manager=disabled", f"--root={stale / 'state'}", "delete", "--force",
                        "left"], capture_output=True, timeout=30)
        import shutil

        shutil.rmtree(stale, ignore_errors=True)
        shutil.rmtree(fresh, ignore_errors=True)
