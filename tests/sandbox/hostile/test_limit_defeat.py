"""Limits that the job's neighbours could defeat: a reader that never reads sandpit's stdout, one
that goes away (``| head``), output written a byte at a time to inflate the host's log file, and a
job that hits its pids limit and handles the failed fork itself before the next live poll.

The ``sandpit exec`` cases run the real console script, its stdout piped into a real process.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.sandbox.test_cli_and_teardown import cli_env
from worker.sandbox.logs import read_log
from worker.sandbox.reaper import leftovers
from worker.sandbox.request import Limits

KiB = 1024
SANDPIT = str(Path(sys.executable).parent / "sandpit")
#: the most one stored record can add past the limit: the note that says the limit was reached
NOTE_BYTES = 256


@pytest.fixture()
def stalled_reader() -> Iterator[subprocess.Popen[bytes]]:
    """A process whose stdin is a pipe it never reads (alive until the test ends). Every sandpit
    process the test started is waited for after the reader is gone, so that even a sandpit that
    blocks on its stdout (the defect) ends and tears its job down."""
    reader = subprocess.Popen(["sleep", "120"], stdin=subprocess.PIPE)
    yield reader
    reader.kill()
    reader.wait()
    if reader.stdin is not None:
        reader.stdin.close()
    _end_started()


@pytest.fixture(autouse=True)
def _every_sandpit_ended() -> Iterator[None]:
    """After each test (also one without a stalled reader), every sandpit process it started has
    ended and its pipes are closed here, not by the garbage collector in a later test (a warning)."""
    yield
    _end_started()


def _end_started() -> None:
    for proc in _started:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
        for pipe in (proc.stdin, proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()
    _started.clear()


_started: list[subprocess.Popen[bytes]] = []


def start_exec(settings, runtime, *args: str, stdout, stderr) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([SANDPIT, "exec", *args], env=cli_env(settings, runtime), stdin=subprocess.DEVNULL,
                            stdout=stdout, stderr=stderr)
    _started.append(proc)
    return proc


def test_timeout_holds_while_nothing_reads_stdout(settings, runtime, stalled_reader, tmp_path, no_leftovers):
    """``sandpit exec --timeout 2s -- yes | <a reader that never reads>``: the job ends at its
    deadline (its writes block, as on a full pipe) and sandpit exits while the reader is still
    alive, instead of blocking on its own stdout with the deadline unchecked."""
    err = tmp_path / "stderr"
    with err.open("wb") as err_file:
        proc = start_exec(settings, runtime, "--timeout", "2s", "--", "yes",
                          stdout=stalled_reader.stdin, stderr=err_file)
        assert stalled_reader.stdin is not None
        stalled_reader.stdin.close()  # only sandpit holds the pipe's write end
        code = proc.wait(timeout=30)
    assert stalled_reader.poll() is None, "sandpit waited for the reader to go away"
    text = err.read_text()
    assert "Traceback" not in text
    assert "[reason: timeout]" in text, text
    assert code in (137, 143)  # stopped at the deadline (yes, as pid 1, ignores SIGTERM: grace, SIGKILL)


def test_json_record_says_timeout_while_stderr_is_not_read(settings, runtime, stalled_reader, no_leftovers):
    """With ``--json`` the job's output goes to stderr: a stalled stderr reader does not stop the
    deadline either, and the record on stdout says timeout."""
    proc = start_exec(settings, runtime, "--json", "--timeout", "1s", "--", "sh", "-c", "yes >&2",
                      stdout=subprocess.PIPE, stderr=stalled_reader.stdin)
    assert stalled_reader.stdin is not None
    stalled_reader.stdin.close()
    out, _ = proc.communicate(timeout=30)
    assert stalled_reader.poll() is None
    record = json.loads(out)
    assert (record["status"], record["reason"]) == ("failed", "timeout")
    assert os.path.getsize(record["log"]) > 64 * KiB  # the job did write before it blocked


def test_cancel_holds_while_nothing_reads_stdout(settings, runtime, stalled_reader, tmp_path, no_leftovers):
    """Ctrl-C (SIGINT) stops the job and sandpit while its stdout is blocked."""
    err = tmp_path / "stderr"
    with err.open("wb") as err_file:
        proc = start_exec(settings, runtime, "--timeout", "60s", "--", "yes",
                          stdout=stalled_reader.stdin, stderr=err_file)
        assert stalled_reader.stdin is not None
        stalled_reader.stdin.close()
        _wait_for_container(settings)
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=30)
    assert stalled_reader.poll() is None
    text = err.read_text()
    assert "Traceback" not in text
    assert "cancelled" in text, text
    assert code != 0


def _wait_for_container(settings, timeout_s: float = 20) -> None:
    jobs = settings.jobs_dir
    give_up = time.monotonic() + timeout_s
    while time.monotonic() < give_up:
        if jobs.is_dir() and any((d / "config.json").exists() for d in jobs.iterdir()):
            time.sleep(0.3)  # the runtime is starting it
            return
        time.sleep(0.02)
    raise AssertionError("the job never started")


def test_reader_going_away_ends_quietly(settings, runtime, no_leftovers):
    """``sandpit exec -- yes | head -1``: the command sees the broken pipe (as pid 1 it cannot die
    of SIGPIPE: yes says "Broken pipe" and exits), sandpit exits 141 as a pipeline's writer whose
    reader went away; no traceback; everything torn down."""
    sandpit = start_exec(settings, runtime, "--", "yes", stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    head = subprocess.Popen(["head", "-1"], stdin=sandpit.stdout, stdout=subprocess.PIPE)
    assert sandpit.stdout is not None
    sandpit.stdout.close()
    first, _ = head.communicate(timeout=60)
    assert sandpit.stderr is not None
    err = sandpit.stderr.read()
    sandpit.wait(timeout=60)
    assert first == b"y\n"
    assert b"Traceback" not in err and b"BrokenPipe" not in err, err
    assert sandpit.returncode == 141, err  # the status of a pipeline writer whose reader went away
    assert leftovers(settings) == []


def test_reader_going_away_with_json_still_ends_quietly(settings, runtime, no_leftovers):
    """``--json`` and a stdout reader that takes one byte of the record and goes: quiet."""
    sandpit = start_exec(settings, runtime, "--json", "--", "sh", "-c", "exit 3",
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    head = subprocess.Popen(["head", "-c", "1"], stdin=sandpit.stdout, stdout=subprocess.PIPE)
    assert sandpit.stdout is not None and sandpit.stderr is not None
    sandpit.stdout.close()
    first, _ = head.communicate(timeout=60)
    err = sandpit.stderr.read()
    sandpit.wait(timeout=60)
    assert first == b"{"
    assert b"Traceback" not in err and b"BrokenPipe" not in err, err
    assert sandpit.returncode in (3, 141)  # 141 if the record's write found head gone


ONE_BYTE_WRITES = """
import os, sys
data = sys.argv[1].encode()
while True:
    for b in data:
        os.write(1, bytes([b]))
"""


@pytest.mark.parametrize("pattern", ["x", "\x01\x1b\t\\\"", "\u00e9\u20ac"],
                         ids=["ascii", "escaped-in-json", "multibyte"])
def test_log_file_is_held_to_the_limit_in_stored_bytes(run, pattern):
    """A job writing one byte per write(2) cannot make the host's log file bigger than the limit
    (plus the one note that says it was reached): reads are coalesced into records, and what is
    counted is the record bytes stored, JSON overhead and escapes included."""
    limit = 64 * KiB
    res, out, _err = run("python3", "-c", ONE_BYTE_WRITES, pattern, image="python",
                         limits=Limits(log_bytes=limit, timeout_s=60))
    assert (res.status, res.reason) == ("failed", "log_limit")
    size = os.path.getsize(res.log_path)  # type: ignore[arg-type]
    assert size <= limit + NOTE_BYTES, size
    chunks = read_log(res.log_path)  # type: ignore[arg-type]
    assert chunks[-1][1] == "sys" and "log limit" in chunks[-1][2]
    stored = "".join(text for _t, stream, text in chunks if stream == "out")
    assert len(stored) > limit // 8  # the job got a fair share of its limit, not a handful of bytes
    assert len(chunks) < limit // 64  # records hold many reads each
    assert len(out) <= limit


def test_log_file_holds_many_small_records_of_slow_writers(run):
    """Small writes spread over time still count their record overhead against the limit."""
    limit = 8 * KiB
    res, _out, _err = run.sh("while :; do printf x; sleep 0.001; done", limits=Limits(log_bytes=limit, timeout_s=60))
    assert (res.status, res.reason) == ("failed", "log_limit")
    assert os.path.getsize(res.log_path) <= limit + NOTE_BYTES  # type: ignore[arg-type]


FORK_FAILS_THEN_EXITS = [
    # dash prints "Cannot fork" and exits 2 at once: nothing of the job is left for a live poll
    "for i in $(seq 50); do sleep 5 & done",
    # the failed fork is handled and the job exits 0
    "(for i in $(seq 50); do sleep 5 & done) 2>/dev/null; exit 0",
]


@pytest.mark.parametrize("script", FORK_FAILS_THEN_EXITS, ids=["cannot-fork", "handled-exit-0"])
def test_pids_limit_hit_is_seen_after_the_job_exits(run, script):
    """The pids limit refused a fork and the job ended within microseconds: the result is still
    failed/pids_limit, read from the kernel's record of the refusal at the end of the job."""
    for _ in range(3):
        res, _out, _err = run.sh(script, limits=Limits(pids=8))
        assert (res.status, res.reason) == ("failed", "pids_limit"), res
