"""Step marks (pipelines/trace.py): off unless configured; one whole line per mark; a symlink at the
trace file's name is refused; both settings read SANDPIT_TRACE_FILE."""

from __future__ import annotations

import os
import threading

import pytest

from api.settings import ApiSettings
from pipelines import trace
from worker.settings import Settings


@pytest.fixture(autouse=True)
def _off_after():
    yield
    trace.configure(None)


def test_marks_are_whole_lines_in_order(tmp_path):
    path = tmp_path / "trace.log"
    trace.mark("before")  # off: nothing, nowhere
    trace.configure(path)
    threads = [threading.Thread(target=lambda i=i: [trace.mark(f"t{i}") for _ in range(200)]) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    trace.mark("last")
    trace.configure(None)
    trace.mark("after")
    lines = path.read_text().splitlines()
    assert len(lines) == 801 and lines[-1].split(" ")[2] == "last"
    stamps = []
    for line in lines:
        ns, pid, label, thread = line.split(" ")
        assert int(pid) == os.getpid() and label in {"t0", "t1", "t2", "t3", "last"} and int(thread) > 0
        stamps.append(int(ns))
    assert stamps[-1] >= max(stamps[:-1])
    assert os.stat(path).st_mode & 0o777 == 0o600


def test_a_symlink_at_the_name_is_refused(tmp_path):
    target = tmp_path / "elsewhere"
    target.write_text("")
    (tmp_path / "trace.log").symlink_to(target)
    with pytest.raises(OSError):
        trace.configure(tmp_path / "trace.log")
    assert target.read_text() == ""


def test_settings_read_the_trace_file():
    assert Settings.from_env({}).trace_file is None
    assert str(Settings.from_env({"SANDPIT_TRACE_FILE": "/tmp/t"}).trace_file) == "/tmp/t"
    env = {"SANDPIT_DATABASE_URL": "sqlite:///x.db", "SANDPIT_TRACE_FILE": "/tmp/t"}
    assert str(ApiSettings.from_env(env).trace_file) == "/tmp/t"
    assert ApiSettings.from_env({"SANDPIT_DATABASE_URL": "sqlite:///x.db"}).trace_file is None
