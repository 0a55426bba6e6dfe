"""``sandpit engine``: ``sandpit exec`` through a resident engine keeps exec's whole contract (output,
exit status, messages, records, Ctrl-C, a reader that goes away), the client's death cancels its job,
the engine's stop cancels its jobs, and whatever does not come from this user with these settings
is declined or refused before anything runs (worker/cli/resident.py, worker/cli/resident_client.py)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.sandbox.test_cli_and_teardown import cli_env
from worker.cli.resident_client import ENGINE_DIR, MAGIC, SOCKET_NAME, encode_request
from worker.sandbox.reaper import leftovers

SANDPIT = [sys.executable, "-m", "worker"]
REPO = Path(__file__).resolve().parents[2]
NOBODY = 65534


class Resident:
    """A ``sandpit -v engine`` process on the test state dir, its log in a file."""

    def __init__(self, settings, env: dict[str, str], log: Path, cwd: Path | None = None) -> None:
        self.settings, self.env, self.log_path = settings, env, log
        self.dir = Path(settings.state_dir) / ENGINE_DIR
        self.sock = self.dir / SOCKET_NAME
        with log.open("wb") as sink:  # the child has its own copy of the fd
            self.proc = subprocess.Popen([*SANDPIT, "-v", "engine"], env=env, stdin=subprocess.DEVNULL,
                                         stdout=subprocess.DEVNULL, stderr=sink, cwd=cwd)
        deadline = time.monotonic() + 30
        while "serving sandpit exec" not in self.log():
            assert self.proc.poll() is None, f"the engine exited: {self.log()}"
            assert time.monotonic() < deadline, f"the engine never served: {self.log()}"
            time.sleep(0.05)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def served(self, pid: int) -> list[str]:
        return re.findall(rf"pid {pid}: exec .*: exit status (\d+)(.*)", self.log())

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=60)


@pytest.fixture()
def env(settings) -> dict[str, str]:
    return cli_env(settings, "crun")


@pytest.fixture()
def resident(settings, env, tmp_path, no_leftovers):
    engine = Resident(settings, env, tmp_path / "engine.log")
    try:
        yield engine
    finally:
        assert engine.stop() == 0, engine.log()
        assert not engine.sock.exists()  # the socket goes with the engine


def sandpit_exec(env: dict[str, str], *args: str, **kw) -> tuple[subprocess.CompletedProcess[str], int]:
    proc = subprocess.Popen([*SANDPIT, "exec", *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, **kw)
    out, err = proc.communicate(timeout=60)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err), proc.pid


CASES = {
    "output and exit status": ["--", "sh", "-c", "echo out; echo err >&2; exit 7"],
    "timeout": ["--timeout", "1s", "--", "sleep", "30"],
    "out of memory": ["--memory", "32M", "--", "sh", "-c", "x=$(head -c 100M /dev/zero | tr '\\0' a)"],
    "unknown image": ["--image", "no-such-image", "--", "true"],
    "no command": ["--"],
    "bad size": ["--memory", "lots", "--", "true"],
    "artifact": ["--artifact", "r.txt", "--", "sh", "-c", "echo data > r.txt; echo kept"],
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_resident_exec_is_exec(resident, env, case):
    """The same command through the engine and in its own process: the same exit status, stdout and
    stderr, byte for byte; the engine says it served the one and not the other."""
    there, pid = sandpit_exec(env, *CASES[case])
    here, own_pid = sandpit_exec({**env, "SANDPIT_RESIDENT": "off"}, *CASES[case])
    assert (there.returncode, there.stdout, there.stderr) == (here.returncode, here.stdout, here.stderr)
    assert "Traceback" not in there.stderr
    assert resident.served(pid) == [(str(there.returncode), "")]
    assert resident.served(own_pid) == []


def test_resident_json_record(resident, env):
    p, pid = sandpit_exec(env, "--json", "--artifact", "r.txt", "--", "sh", "-c", "echo hi; echo data > r.txt")
    assert p.returncode == 0 and resident.served(pid)
    record = json.loads(p.stdout)
    assert record["status"] == "succeeded" and record["exit_code"] == 0
    assert record["artifacts"][0]["path"] == "r.txt" and record["artifacts"][0]["size"] == 5
    assert p.stderr == "hi\n"  # the job's stdout goes to stderr with --json, as in-process
    # the record is kept as an in-process exec's: `sandpit artifacts` finds the job
    listed = subprocess.run([*SANDPIT, "artifacts", record["job_id"], "--list"], env=env, capture_output=True,
                            text=True, timeout=60)
    assert listed.returncode == 0 and "r.txt" in listed.stdout


def test_reader_going_away_exits_141(resident, env):
    proc = subprocess.Popen([*SANDPIT, "exec", "--", "yes"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    assert proc.stdout is not None
    assert proc.stdout.read(4) == b"y\ny\n"
    proc.stdout.close()
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 141 and resident.served(proc.pid) == [("141", "")]
    assert b"Broken pipe" in err


def _started(env, *cmd: str, cwd: Path | None = None) -> subprocess.Popen[str]:
    proc = subprocess.Popen([*SANDPIT, "exec", "--timeout", "60s", "--", *cmd], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=cwd)
    import select

    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], 30)
    assert ready and proc.stdout.readline() == "started\n", "the job never started"
    return proc


def test_ctrl_c_of_the_client_cancels_the_job(resident, env, settings):
    proc = _started(env, "sh", "-c", "echo started; sleep 60")
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode != 0 and "the job was cancelled" in err
    assert resident.served(proc.pid)[0][1] == " (cancelled)"
    assert leftovers(settings) == []


def test_killed_client_cancels_the_job(resident, env, settings):
    """SIGKILL leaves the client no time to say anything: its connection's end is the cancel."""
    proc = _started(env, "sh", "-c", "echo started; sleep 60")
    proc.kill()
    proc.communicate(timeout=30)
    deadline = time.monotonic() + 30
    while not resident.served(proc.pid):
        assert time.monotonic() < deadline, resident.log()
        time.sleep(0.05)
    assert resident.served(proc.pid)[0][1] == " (cancelled)"
    assert leftovers(settings) == []


def test_stopping_the_engine_cancels_its_jobs_and_answers_the_client(settings, env, tmp_path, no_leftovers):
    engine = Resident(settings, env, tmp_path / "engine.log")
    try:
        proc = _started(env, "sh", "-c", "echo started; sleep 60")
        engine.proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode != 0 and "the job was cancelled" in err
        assert engine.proc.wait(timeout=30) == 0
        assert not engine.sock.exists()
        # with the engine gone, exec runs in its own process
        p, _ = sandpit_exec(env, "--", "sh", "-c", "echo alone")
        assert (p.returncode, p.stdout) == (0, "alone\n")
    finally:
        engine.stop()


def test_other_settings_are_declined_and_run_in_process(resident, env, settings):
    other = {**env, "SANDPIT_SCRATCH_SIZE": str(settings.scratch_bytes + 1024**3)}
    p, pid = sandpit_exec(other, "--", "sh", "-c", "echo mine")
    assert (p.returncode, p.stdout) == (0, "mine\n")
    assert resident.served(pid) == []
    assert f"declined pid {pid}: other settings (SANDPIT_SCRATCH_SIZE)" in resident.log()


def test_arguments_for_argparse_are_declined_and_worded_by_the_client(resident, env):
    p, pid = sandpit_exec(env, "--mem", "64M", "--", "true")  # an abbreviation: argparse's to judge
    assert p.returncode == 0 and resident.served(pid) == []
    assert f"declined pid {pid}: arguments for argparse" in resident.log()
    p, pid = sandpit_exec(env, "--memory", "64M", "--", "true", stdin=subprocess.DEVNULL)
    assert p.returncode == 0 and resident.served(pid)
    p, pid = sandpit_exec(env, "--network", "sideways", "--", "true")
    assert p.returncode == 2 and "invalid choice" in p.stderr and resident.served(pid) == []


def test_a_second_engine_is_refused(resident, env, tmp_path):
    p = subprocess.run([*SANDPIT, "engine"], env=env, capture_output=True, text=True, timeout=60)
    assert p.returncode == 125 and "a resident engine already serves" in p.stderr
    assert resident.proc.poll() is None and resident.sock.exists()


def _connect_as_nobody(path: Path) -> bytes:
    """What a process of uid 65534 reads back after connecting to ``path`` (a
    forked child: the interpreter's own files may be closed to that uid)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 1
        try:
            os.close(r)
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            with socket.socket(socket.AF_UNIX) as s:
                s.settimeout(20)
                s.connect(str(path))
                os.write(w, b"got:" + s.recv(16))
            code = 0
        except BaseException as exc:
            os.write(w, f"error: {exc}".encode())
        finally:
            os._exit(code)
    os.close(w)
    with os.fdopen(r, "rb") as got:
        answer = got.read()
    os.waitpid(pid, 0)
    return answer


def test_a_peer_of_another_uid_is_refused(resident, env):
    """With the directory and socket opened up (as a careless admin might), another user still gets
    nothing: the engine checks the peer's uid before it reads a byte."""
    os.chmod(resident.dir, 0o711)  # noqa: S103 (the point of the test)
    os.chmod(resident.sock, 0o666)  # noqa: S103 (the point of the test)
    try:
        answer = _connect_as_nobody(resident.sock)
    finally:
        os.chmod(resident.sock, 0o600)
        os.chmod(resident.dir, 0o700)
    assert answer == b"got:"
    assert f"refused a connection of uid {NOBODY}" in resident.log()


def _raw(sock: Path, data: bytes, fds: list[int]) -> bytes:
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(str(sock))
        s.settimeout(30)
        if fds:
            socket.send_fds(s, [data], fds)
        else:
            s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        out = b""
        while chunk := s.recv(64):
            out += chunk
        return out


@pytest.mark.parametrize("what", ["no fds", "one fd", "three fds", "not the magic", "too long",
                                  "truncated", "fewer fields than arguments", "a variable without ="])
def test_forged_requests_run_nothing(resident, env, what):
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        good = encode_request(["--", "touch", "/forged"], env, "/")
        body = good[len(MAGIC) + 4:]
        data, fds = {
            "no fds": (good, []),
            "one fd": (good, [devnull]),
            "three fds": (good, [devnull] * 3),
            "not the magic": (b"XXXX" + good[4:], [devnull] * 2),
            "too long": (MAGIC + (2 << 20).to_bytes(4, "big") + body, [devnull] * 2),
            "truncated": (good[:-3], [devnull] * 2),
            "fewer fields than arguments": (MAGIC + len(b"9\0a\0/").to_bytes(4, "big") + b"9\0a\0/",
                                            [devnull] * 2),
            "a variable without =": (_with_body(b"2\0--\0true\0NOEQUALS\0/"), [devnull] * 2),
        }[what]
        assert _raw(resident.sock, data, fds) == b""
    finally:
        os.close(devnull)
    assert f"dropped a request of pid {os.getpid()}" in resident.log()
    assert "exec ['--', 'touch'" not in resident.log()
    # and it still serves
    p, pid = sandpit_exec(env, "--", "true")
    assert p.returncode == 0 and resident.served(pid)


def _with_body(body: bytes) -> bytes:
    return MAGIC + len(body).to_bytes(4, "big") + body


@pytest.mark.parametrize("plant", ["socket of another uid", "open directory", "symlinked directory"])
def test_the_client_trusts_no_planted_socket(settings, env, tmp_path, no_leftovers, plant):
    """A socket at the engine's name that is not this user's own, in a directory that is not closed
    to others (or is a symlink), is never connected to: exec runs in its own process."""
    engine_dir = Path(settings.state_dir) / ENGINE_DIR
    assert not (engine_dir / SOCKET_NAME).exists(), "an engine serves the test state dir"
    saved = None
    if engine_dir.exists():
        saved = engine_dir.with_name(engine_dir.name + f".saved-{os.getpid()}")
        engine_dir.rename(saved)
    listener = socket.socket(socket.AF_UNIX)
    try:
        where = engine_dir
        if plant == "symlinked directory":
            where = tmp_path / "elsewhere"
            where.mkdir(mode=0o700)
            engine_dir.symlink_to(where)
        else:
            engine_dir.mkdir(mode=0o700)
        listener.bind(str(where / SOCKET_NAME))
        listener.listen(4)
        listener.setblocking(False)
        if plant == "socket of another uid":
            os.chown(where / SOCKET_NAME, NOBODY, NOBODY)
        elif plant == "open directory":
            os.chmod(where, 0o755)  # noqa: S103 (the point of the test)
        assert stat.S_ISSOCK(os.lstat(where / SOCKET_NAME).st_mode)
        p, _ = sandpit_exec(env, "--", "sh", "-c", "echo here")
        assert (p.returncode, p.stdout) == (0, "here\n")
        with pytest.raises(BlockingIOError):
            listener.accept()  # nobody ever connected
    finally:
        listener.close()
        if engine_dir.is_symlink():
            engine_dir.unlink()
        else:
            (engine_dir / SOCKET_NAME).unlink(missing_ok=True)
            engine_dir.rmdir()
        if saved is not None:
            saved.rename(engine_dir)


def test_resident_off_never_connects(resident, env):
    p, pid = sandpit_exec({**env, "SANDPIT_RESIDENT": "off"}, "--", "true")
    assert p.returncode == 0
    assert f"pid {pid}" not in resident.log()


def test_idle_engine_stops_by_itself(settings, env, tmp_path, no_leftovers):
    log = tmp_path / "idle.log"
    with log.open("wb") as sink:
        proc = subprocess.Popen([*SANDPIT, "engine", "--idle", "1s"], env=env, stderr=sink,
                                stdout=subprocess.DEVNULL)
    try:
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "idle for 1s, stopping" in log.read_text()
    assert not (Path(settings.state_dir) / ENGINE_DIR / SOCKET_NAME).exists()


def test_a_declined_clients_names_reach_the_engines_log_escaped(resident, env):
    """The names of a declined client's settings are its data: a terminal sequence in one is shown
    escaped, never sent to the terminal the engine logs to."""
    p, pid = sandpit_exec({**env, "SANDPIT_X\x1b]0;owned\x07": "1"}, "--", "true")
    assert p.returncode == 0 and resident.served(pid) == []
    assert "\x1b" not in resident.log() and "\x07" not in resident.log()
    assert f"declined pid {pid}: other settings ('SANDPIT_X\\x1b]0;owned\\x07')" in resident.log()


def test_doctor_says_whether_an_engine_serves(settings, env, tmp_path, no_leftovers):
    def line() -> str:
        out = subprocess.run([*SANDPIT, "doctor"], env=env, capture_output=True, text=True, timeout=120).stdout
        return next(text for text in out.splitlines() if text.startswith("resident engine"))

    engine = Resident(settings, env, tmp_path / "engine.log")
    try:
        assert line().split()[2] == "ok"
    finally:
        assert engine.stop() == 0
    assert line().split()[2] == "skip"
    assert "dropped a request" not in engine.log()  # the doctor looked without connecting


def test_an_engine_whose_code_changed_declines_and_retires(settings, env, tmp_path, no_leftovers):
    """An upgrade under a running engine (here: a file of a copy of sandpit's tree that the
    engine runs from, rewritten): the next client is declined and runs the job with the code on
    disk; the job the engine already runs is not cancelled but finishes; then the engine exits 0
    by itself, its socket gone, so no job ever runs on code older than what is installed."""
    code = tmp_path / "code"
    for package in ("worker", "pipelines"):
        shutil.copytree(REPO / package, code / package, ignore=shutil.ignore_patterns("__pycache__"))
    copied = {**env, "PYTHONPATH": str(code), "SANDPIT_IMAGES_DIR": str(REPO / "images")}
    engine = Resident(settings, copied, tmp_path / "engine.log", cwd=code)  # `-m` puts the cwd first
    try:
        running = _started(copied, "sh", "-c", "echo started; sleep 2; echo finished", cwd=code)
        edited = code / "worker" / "cli" / "exec_options.py"
        edited.write_text(edited.read_text() + "\n# upgraded\n")
        p, pid = sandpit_exec(copied, "--", "sh", "-c", "echo here", cwd=code)
        assert (p.returncode, p.stdout) == (0, "here\n")
        assert f"declined pid {pid}: sandpit's files changed since this engine started" in engine.log()
        out, _ = running.communicate(timeout=30)
        assert (running.returncode, out) == (0, "finished\n")  # its first line was read by _started
        assert engine.served(running.pid) == [("0", "")]  # the engine ran it, to its end
        assert engine.proc.wait(timeout=30) == 0
        assert "stopping once its jobs end" in engine.log() and not engine.sock.exists()
    finally:
        engine.stop()
