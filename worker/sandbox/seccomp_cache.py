"""crun's compiled seccomp filter, made once per host and reused by every job (adapter).

crun turns the spec's ``linux.seccomp`` rules into a BPF program with libseccomp on every ``run``;
measured here (crun 1.8, the default profile, 2 cores): 1.4 ms of CPU and 1.9 ms of an 11 ms run.
crun also takes a compiled program from the spec's ``run.oci.seccomp_bpf_data`` annotation (base64)
and then loads it instead of compiling the rules; the rules stay in the spec, so its flags and
everything else about the filter are read from them as before.

The program is crun's own: a probe bundle holding the very same ``linux.seccomp`` object (and
nothing else of a job: no user namespace, no mounts, an empty read-only root, no cgroup) is
``crun create``\\ d, which compiles it and writes the program to the container's state
(``seccomp.bpf``, as it does for every container, for ``crun exec``), then deleted. Nothing is
compiled here, so no rule can come out differently; tests/sandbox/test_seccomp_cache.py checks the
bytes against what crun compiled for a real job's whole spec.

The cache lives in ``<run>/seccomp`` (root's alone), one file per rules text and crun binary
(its device, inode, size and mtime: an upgrade makes a new entry), written through a unique
temporary and a rename. An entry holds the rules text it was made from and is used only for that
exact text; a program that is not whole instructions (8 bytes each, at most the kernel's 4096) is
refused. Anything that goes wrong leaves the job to crun's own compiling, as before.
"""

from __future__ import annotations

import binascii
import contextlib
import json
import os
import threading
from pathlib import Path

from worker import TYPE_CHECKING

if TYPE_CHECKING:
    from typing import Any

    from worker.sandbox.runtime import Runtime

ANNOTATION = "run.oci.seccomp_bpf_data"
BPF_MAX_BYTES = 4096 * 8  # BPF_MAXINSNS instructions of 8 bytes
PROBE_PREFIX = ".probe-"


class CompiledFilters:
    """The programs this process has looked up, by crun binary and rules text (one per engine:
    the entry point owns it, as it owns the engine)."""

    def __init__(self, run_dir: Path) -> None:
        self.folder = run_dir / "seccomp"
        self._lock = threading.Lock()
        #: (binary identity, rules text) -> base64, or None: refused
        self._known: dict[tuple[str, str], str | None] = {}

    def add(self, spec: dict[str, Any], runtime: Runtime) -> bool:
        """Add crun's compiled filter for ``spec``'s seccomp rules to ``spec``'s annotations (made
        on first use, then from the cache); False, and ``spec`` as it was, when there is none."""
        rules = spec.get("linux", {}).get("seccomp")
        if runtime.name != "crun" or not rules:
            return False
        text = json.dumps(rules, sort_keys=True, separators=(",", ":"))
        try:
            st = os.stat(runtime.binary)
        except OSError:
            return False
        identity = f"{st.st_dev:x}-{st.st_ino:x}-{st.st_size:x}-{st.st_mtime_ns:x}"
        with self._lock:
            if (identity, text) not in self._known:
                self._known[identity, text] = _cached(self.folder, identity, text, runtime)
            data = self._known[identity, text]
        if data is None:
            return False
        spec.setdefault("annotations", {})[ANNOTATION] = data
        return True


def _entry(folder: Path, identity: str, text: str) -> Path:
    # the file is picked by a checksum of the rules; the rules text inside decides
    return folder / f"{identity}-{binascii.crc32(text.encode()):08x}-{len(text):x}.json"


def _cached(folder: Path, identity: str, text: str, runtime: Runtime) -> str | None:
    path = _entry(folder, identity, text)
    found = _read(path, text)
    if found is not None:
        return found
    program = compile_with(runtime, text, folder)
    if program is None:
        return None
    data = binascii.b2a_base64(program, newline=False).decode()
    with contextlib.suppress(OSError):
        _write(path, json.dumps({"rules": text, "bpf": data}).encode())
    return data


def _write(path: Path, data: bytes) -> None:
    """``path`` replaced whole (:func:`pipelines.files.temps.write_atomic` in its directory)."""
    from pipelines.files.temps import write_atomic

    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    folder = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        write_atomic(folder, path.name, data)
    finally:
        os.close(folder)


def valid_program(program: bytes) -> bool:
    """Whole 8-byte instructions, at least one, at most the kernel's limit.

    >>> valid_program(bytes(16)), valid_program(bytes(12)), valid_program(b"")
    (True, False, False)
    """
    return 0 < len(program) <= BPF_MAX_BYTES and len(program) % 8 == 0


def _read(path: Path, text: str) -> str | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        entry = json.loads(os.read(fd, 4 * BPF_MAX_BYTES + len(text) + 4096))
        if entry.get("rules") != text or not valid_program(binascii.a2b_base64(entry["bpf"])):
            return None
        return str(entry["bpf"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError, binascii.Error):
        return None
    finally:
        os.close(fd)


def compile_with(runtime: Runtime, text: str, folder: Path) -> bytes | None:
    """The program crun compiles for the seccomp rules ``text`` (a probe container, created and
    deleted; its bundle and state in a fresh directory under ``folder``, removed after), or None."""
    from pipelines.files.locks import hold

    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    probe = folder / f"{PROBE_PREFIX}{os.urandom(6).hex()}"
    # held for the probe's whole life, taken before its directory exists: a probe whose lock is
    # free belongs to a process that died between create and delete (its init waits for ever),
    # and the reaper removes it at once (worker/sandbox/reaper.py)
    try:
        lock = hold(probe_lock(probe))
    except OSError:
        return None
    with lock:
        try:
            return _probe(runtime, text, probe)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(probe_lock(probe))  # while it is held: no reaper ever finds it free


def probe_lock(probe: Path) -> Path:
    return probe.with_name(probe.name + ".lock")


def _probe(runtime: Runtime, text: str, probe: Path) -> bytes | None:
    import shutil
    import subprocess

    name = f"seccomp-probe-{os.urandom(6).hex()}"
    binary = runtime.launch or runtime.binary
    base = [binary, "--cgroup-manager=disabled", f"--root={probe / 'state'}"]
    env = runtime.run_env()
    try:
        (probe / "rootfs" / "dev").mkdir(parents=True, mode=0o700)
        fd = os.open(probe / "rootfs" / "probe", os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o700)
        os.close(fd)  # never run: a created container waits for ``start``
        config = {"ociVersion": "1.0.2",
                  "process": {"terminal": False, "user": {"uid": 0, "gid": 0}, "args": ["/probe"], "cwd": "/",
                              "env": ["PATH=/"], "noNewPrivileges": True},
                  "root": {"path": "rootfs", "readonly": True}, "mounts": [],
                  "linux": {"namespaces": [{"type": "mount"}, {"type": "pid"}, {"type": "network"}],
                            "seccomp": json.loads(text)}}
        _write(probe / "config.json", json.dumps(config).encode())
        try:
            # no pipes: the created container's init holds its stdio open until it is deleted
            made = subprocess.run([*base, "create", "--bundle", str(probe), name], env=env,
                                  stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                  timeout=30, check=False)
            if made.returncode != 0:
                return None
            with open(probe / "state" / name / "seccomp.bpf", "rb") as f:
                program = f.read(BPF_MAX_BYTES + 1)
        finally:  # whatever happened, the probe's init (waiting for a start that never comes) goes
            subprocess.run([*base, "delete", "--force", name], env=env, stdin=subprocess.DEVNULL,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=30, check=False)
        return program if valid_program(program) else None
    except (OSError, subprocess.SubprocessError):
        return None
    finally:
        shutil.rmtree(probe, ignore_errors=True)
