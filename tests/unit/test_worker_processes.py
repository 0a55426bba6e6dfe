"""A worker of several processes (worker/service/processes.py): its children's commands, shares
and slot numbers, without starting a worker; their one budget (worker/service/shared_budget.py)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tests.conftest import REPO
from worker.errors import ConfigError
from worker.executor import ConcurrentSlots
from worker.service.processes import ID_BASE_ENV, SHARE_ENV, children_of, parse_share, split
from worker.service.shared_budget import SharedBudget, ledger_directory


def test_children_get_their_slots_share_and_first_id() -> None:
    kids = children_of(["sandpit", "worker"], 5, 2, {"KEEP": "1"})
    assert [k.argv for k in kids] == [["sandpit", "worker", "--concurrency", "3"],
                                      ["sandpit", "worker", "--concurrency", "2"]]
    assert [(k.env[SHARE_ENV], k.env[ID_BASE_ENV], k.env["KEEP"]) for k in kids] == [("0/2", "0", "1"),
                                                                                      ("1/2", "3", "1")]


@pytest.mark.parametrize(("concurrency", "processes"), [(1, 2), (3, 0), (2, -1)])
def test_impossible_splits_are_refused(concurrency: int, processes: int) -> None:
    with pytest.raises(ConfigError, match="--processes"):
        split(concurrency, processes)


@pytest.mark.parametrize("text", ["x", "1/1", "-1/2", "1/", "/2", "1/2/3"])
def test_a_malformed_share_is_refused(text: str) -> None:
    with pytest.raises(ConfigError, match=SHARE_ENV):
        parse_share(text)


GiB = 1 << 30


def test_the_processes_of_a_worker_admit_within_one_budget(tmp_path: Path) -> None:
    """Two processes' budgets on one ledger (8 GiB, 4 CPUs): each reports half; a job larger than
    half runs in either while the sum fits; one that would pass the whole waits until the other
    process gives back, then runs."""
    a = SharedBudget(tmp_path / "w", 0, 2, 8 * GiB, 4.0)
    b = SharedBudget(tmp_path / "w", 1, 2, 8 * GiB, 4.0)
    assert (a.memory_bytes, a.cpus) == (4 * GiB, 2.0)
    held = a.take(5 * GiB, 1.0)  # more than its half: it runs, as in a one-process worker
    small = b.take(3 * GiB, 1.0)
    assert a.admitted() == b.admitted() == (8 * GiB, 2.0)
    granted = threading.Event()
    waiter = threading.Thread(target=lambda: (b.take(2 * GiB, 1.0), granted.set()))
    waiter.start()
    assert not granted.wait(0.2)  # 5 + 3 + 2 GiB would pass the 8 of the whole
    a.give(*held)
    assert granted.wait(5)
    waiter.join()
    b.give(*small)
    assert a.admitted() == (2 * GiB, pytest.approx(1.0))


def test_a_job_larger_than_the_worker_runs_alone_in_it(tmp_path: Path) -> None:
    a = SharedBudget(tmp_path / "w", 0, 2, 8 * GiB, 4.0)
    b = SharedBudget(tmp_path / "w", 1, 2, 8 * GiB, 4.0)
    assert a.take(64 * GiB, 16.0) == (8 * GiB, 4.0)
    granted = threading.Event()
    waiter = threading.Thread(target=lambda: (b.take(1, 0.1), granted.set()))
    waiter.start()
    assert not granted.wait(0.2)
    a.give(8 * GiB, 4.0)
    assert granted.wait(5)
    waiter.join()


_HOLD = """
import sys, time
from pathlib import Path
from worker.service.shared_budget import SharedBudget
budget = SharedBudget(Path(sys.argv[1]), 1, 2, 8 << 30, 4.0)
budget.take(6 << 30, 1.0)
print("held", flush=True)
time.sleep(60)
"""


def test_what_a_dead_process_held_is_given_back_by_its_replacement(tmp_path: Path) -> None:
    """A real second process takes 6 GiB and is killed: its ledger file still counts (nothing
    else knows it died), until its replacement starts and writes 0."""
    a = SharedBudget(tmp_path / "w", 0, 2, 8 * GiB, 4.0)
    with subprocess.Popen([sys.executable, "-c", _HOLD, str(tmp_path / "w")], stdout=subprocess.PIPE,
                          cwd=REPO) as other:
        try:
            assert other.stdout is not None and other.stdout.readline() == b"held\n"
            assert a.admitted() == (6 * GiB, 1.0)
        finally:
            other.kill()
    assert a.admitted() == (6 * GiB, 1.0)
    SharedBudget(tmp_path / "w", 1, 2, 8 * GiB, 4.0)  # its replacement
    assert a.admitted() == (0, 0.0)
    assert a.take(8 * GiB, 4.0) == (8 * GiB, 4.0)


def test_ledgers_of_gone_supervisors_are_removed(tmp_path: Path) -> None:
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True).stdout.strip()
    (tmp_path / "admission" / gone).mkdir(parents=True)
    (tmp_path / "admission" / str(os.getpid())).mkdir()
    (tmp_path / "admission" / "notes").mkdir()
    assert ledger_directory(tmp_path, 1) == tmp_path / "admission" / "1"
    assert sorted(p.name for p in (tmp_path / "admission").iterdir()) == sorted([str(os.getpid()), "notes"])


def test_slots_are_numbered_from_the_process_base() -> None:
    slots = ConcurrentSlots(3)
    a, b = slots.take(), slots.take()
    slots.give(a)
    assert (a, b, slots.take(), slots.take()) == (3, 4, 3, 5)


@pytest.mark.parametrize("command", ["worker", "up"])
def test_the_commands_refuse_an_impossible_split_before_starting_anything(command: str) -> None:
    """``sandpit worker``/``up --processes 3 --concurrency 2``: exit 2 with the reason, nothing started
    (``up`` would otherwise restart a worker that cannot start, with back-off, for ever)."""
    argv = [sys.executable, "-m", "worker", command, "--processes", "3", "--concurrency", "2"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "SANDPIT_STATE_DIR": "/nonexistent/sandpit"})
    assert done.returncode == 2
    assert done.stderr == "sandpit: --processes 3 needs at least 3 job slots (--concurrency 2)\n"
