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
        folder.mkdir(exist_ok=True)
        entry.write_text(json.dumps(planted))
        got = seccomp_cache._cached(folder, identity, text, crun)
        assert got is not None and got != planted["bpf"]
        assert json.loads(entry.read_text()) == {"rules": text, "bpf": got}


def test_runc_gets_no_program(settings):
    """Only crun reads the annotation: any other runtime's spec is left as it was."""
    require(runtime_problem("runc") is None, f"runc: {runtime_problem('runc')}")
    spec = {"linux": {"seccomp": {"defaultAction": "SCMP_ACT_ERRNO", "syscalls": []}}}
    filters = seccomp_cache.CompiledFilters(settings.run_dir)
    assert not filters.add(spec, choose_runtime("runc", settings.run_dir))
    assert "annotations" not in spec


def test_the_program_check():
    assert seccomp_cache.valid_program(bytes(8 * 4096)) and not seccomp_cache.valid_program(bytes(8 * 4097))


_MAKER = """
import os, subprocess, sys, time
from pathlib import Path
from worker.sandbox import seccomp_cache
from worker.sandbox.runtime import choose_runtime
real = subprocess.run
def run(argv, *a, **k):
    done = real(argv, *a, **k)
    if "create" in argv:  # the probe's container is created: say so, and never get to delete it
        os.write(1, b"created\\n")
        time.sleep(600)
    return done
subprocess.run = run
seccomp_cache.compile_with(choose_runtime("crun", Path(sys.argv[1])), sys.argv[2], Path(sys.argv[3]))
"""


def test_a_probe_whose_maker_died_is_a_leftover_and_reap_removes_it_at_once(settings, tmp_path):
    """A process SIGKILLed between the probe's ``crun create`` and its ``delete`` leaves a created
    container whose init waits for ever (and keeps the runtime's read-only view busy): while its
    maker lives it is nobody's leftover; once the maker is dead the leftover check names it and
    ``reap`` deletes the container and removes the probe, however young it is."""
    import signal
    import subprocess
    import sys
    import time

    from worker.sandbox.reaper import _reap_seccomp_probes, leftovers
    from worker.settings import Settings

    require(runtime_problem("crun") is None, f"crun: {runtime_problem('crun')}")
    text = json.dumps({"defaultAction": "SCMP_ACT_ERRNO", "architectures": ["SCMP_ARCH_X86_64"],
                       "syscalls": [{"names": ["exit_group"], "action": "SCMP_ACT_ALLOW"}]},
                      sort_keys=True, separators=(",", ":"))
    host = Settings(state_dir=tmp_path / "state", run_dir=tmp_path / "run")
    folder = host.run_dir / "seccomp"
    maker = subprocess.Popen([sys.executable, "-c", _MAKER, str(settings.run_dir), text, str(folder)],
                             stdout=subprocess.PIPE, cwd=Path(__file__).resolve().parents[2])
    inits: list[int] = []
    try:
        assert maker.stdout is not None and maker.stdout.readline() == b"created\n"
        probes = [p for p in folder.iterdir() if p.is_dir()]
        assert len(probes) == 1 and (folder / (probes[0].name + ".lock")).exists()
        state = probes[0] / "state"
        inits = [int(json.loads((state / name / "status").read_text())["pid"]) for name in os.listdir(state)]
        assert inits and not any(_gone(pid) for pid in inits)
        assert not [x for x in leftovers(host) if "seccomp probe" in x]  # its maker lives
        maker.send_signal(signal.SIGKILL)
        maker.wait(timeout=30)
        assert f"seccomp probe {probes[0].name}" in leftovers(host)
        assert _reap_seccomp_probes(host) == [f"seccomp probe {probes[0].name}"]
        for _ in range(100):  # killed by the delete (and reaped by whoever adopted it)
            if all(_gone(pid) for pid in inits):
                break
            time.sleep(0.05)
        else:
            raise AssertionError(f"the probe's init {inits} still runs")
        assert list(folder.iterdir()) == []
        assert not [x for x in leftovers(host) if "seccomp probe" in x]
    finally:
        if maker.poll() is None:
            maker.kill()
            maker.wait()
        assert maker.stdout is not None
        maker.stdout.close()
        for pid in inits:
            if not _gone(pid):
                os.kill(pid, signal.SIGKILL)
