"""Retention on its own: ``sandpit exec`` starts a detached collection when one is due (and leaves
a record, so its artifacts can be copied out), ``sandpit run`` collects before it starts; both at
most once per ``SANDPIT_GC_EVERY``. Through the real ``sandpit`` process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from tests.sandbox.test_cli_and_teardown import cli_env
from worker.local import records as local_records
from worker.local.retention import stamp_path


def plant_old_record(settings) -> Path:
    """A record of an exec 30 days old, with its log; returns the log's path."""
    ident = "gcprobe" + os.urandom(4).hex()
    logs = settings.state_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    log = logs / f"{ident}.jsonl"
    log.write_text('{"t": 0, "s": "out", "d": "old\\n"}\n')
    local_records.write_record(settings.state_dir, {
        "kind": "exec", "id": ident, "created": time.time() - 30 * 86400, "status": "succeeded",
        "jobs": [{"id": ident, "name": "exec", "status": "succeeded", "logs": [log.name], "artifacts": []}]})
    return log


def make_due(settings) -> None:
    stamp = stamp_path(settings)
    stamp.parent.mkdir(parents=True, exist_ok=True)
    stamp.touch()
    os.utime(stamp, (time.time() - 3600, time.time() - 3600))


def sandpit(settings, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "worker", *args], env={**cli_env(settings, "crun"), **env},
                          capture_output=True, text=True, timeout=120)


def test_exec_starts_a_due_collection_in_the_background_and_leaves_a_record(settings, no_leftovers, tmp_path):
    log = plant_old_record(settings)
    make_due(settings)
    p = sandpit(settings, "exec", "--json", "--artifact", "out.txt", "--", "sh", "-c", "echo kept > out.txt",
                SANDPIT_GC_EVERY="10m")
    assert p.returncode == 0, p.stderr
    deadline = time.monotonic() + 60
    while log.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not log.exists(), "the detached collection did not remove the 30-day-old exec's log"
    assert time.time() - stamp_path(settings).stat().st_mtime < 120  # the next exec within 10m spawns none

    job_id = json.loads(p.stdout)["job_id"]
    got = sandpit(settings, "artifacts", job_id, "-o", str(tmp_path / "out"))
    assert got.returncode == 0, got.stderr
    assert (tmp_path / "out" / "out.txt").read_text() == "kept\n"


def test_a_collection_that_is_not_due_does_not_run(settings, no_leftovers):
    log = plant_old_record(settings)
    stamp = stamp_path(settings)
    stamp.parent.mkdir(parents=True, exist_ok=True)
    stamp.touch()  # collected just now
    p = sandpit(settings, "exec", "--", "true", SANDPIT_GC_EVERY="10m")
    assert p.returncode == 0, p.stderr
    time.sleep(2)
    assert log.exists()
    make_due(settings)
    off = sandpit(settings, "exec", "--", "true", SANDPIT_GC_EVERY="0")  # 0: never automatically
    assert off.returncode == 0
    time.sleep(2)
    assert log.exists()
    gc = sandpit(settings, "gc")  # waits for a collection another process may have started meanwhile
    assert gc.returncode == 0 and "removed" in gc.stdout, gc.stderr
    assert not log.exists()


def test_run_collects_before_it_starts(settings, no_leftovers, tmp_path):
    log = plant_old_record(settings)
    make_due(settings)
    (tmp_path / "p.yml").write_text("j:\n  script: [echo hi]\n")
    p = sandpit(settings, "run", str(tmp_path / "p.yml"), SANDPIT_GC_EVERY="10m")
    assert p.returncode == 0, p.stderr
    assert not log.exists()
