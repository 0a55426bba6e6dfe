"""``sandpit worker --processes N``: one worker whose job slots are spread over N processes
(worker/service/processes.py), with a real Redis, SQLite/PostgreSQL and containers."""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path

from tests.integration.service.conftest import Service
from tests.sandbox.conftest import TEST_RUN, TEST_STATE
from worker.sandbox.reaper import leftovers
from worker.service.context import host_budget
from worker.settings import Settings


def _children(pid: int) -> list[int]:
    return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_two_processes_share_the_slots_and_number_them_apart(service: Service) -> None:
    """Both processes run jobs; jobs that run at once hold distinct CI_CONCURRENT_IDs (0 and 1:
    each process numbers its own slot from its base); SIGTERM to the worker stops both after
    their running jobs, and the worker exits 0."""
    worker = service.start_worker(concurrency=2, args=("--processes", "2"))
    deadline = time.monotonic() + 30
    while len(_children(worker.pid)) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    children = _children(worker.pid)
    assert len(children) == 2, service.worker_log(0)
    jobs_yaml = "\n".join(f'j{i}:\n  script: [\'echo "slot=$CI_CONCURRENT_ID"\', sleep 0.4]' for i in range(8))
    run_id = service.submit(jobs_yaml)
    assert service.wait(run_id) == "succeeded", service.worker_log(0)
    jobs = service.jobs(run_id).values()
    ran_by = {job.id: str(service.attempts(job.id)[0].worker_id) for job in jobs}
    assert {w.rsplit("-", 1)[1] for w in ran_by.values()} == {str(c) for c in children}
    slots: dict[str, set[str]] = {w: set() for w in ran_by.values()}
    for job in jobs:
        slots[ran_by[job.id]] |= set(re.findall(r"slot=(\d+)", Path(str(job.log_path)).read_text()))
    # each process has one slot here, so each process's jobs all held its one id, and the two differ
    assert sorted(tuple(sorted(v)) for v in slots.values()) == [("0",), ("1",)], slots
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=30) == 0
    assert not any(_alive(c) for c in children)


def test_a_child_that_dies_is_started_again(service: Service) -> None:
    """A killed process of the worker is replaced (after the back-off's first second) and the
    worker goes on running jobs."""
    worker = service.start_worker(concurrency=2, args=("--processes", "2"))
    deadline = time.monotonic() + 30
    while len(_children(worker.pid)) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    first = _children(worker.pid)
    run_id = service.submit("warm:\n  script: ['true']")  # both processes have started their services
    assert service.wait(run_id) == "succeeded"
    victim = first[0]
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while (victim in _children(worker.pid) or len(_children(worker.pid)) < 2) and time.monotonic() < deadline:
        time.sleep(0.1)
    now = _children(worker.pid)
    assert len(now) == 2 and victim not in now, service.worker_log(0)
    assert "exited with status -9" in service.worker_log(0)
    # what the killed process left (the warm sandbox it made after its job) is reaped by its
    # replacement as that starts; a SIGKILL leaves everything to a reaper
    deadline = time.monotonic() + 60
    while (left := leftovers(Settings(state_dir=TEST_STATE, run_dir=TEST_RUN))) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert left == []
    run_id = service.submit("\n".join(f"j{i}:\n  script: ['true']" for i in range(4)))
    assert service.wait(run_id) == "succeeded"


def test_the_processes_stop_when_the_worker_is_killed(service: Service) -> None:
    """``kill -9`` of the worker (nothing can pass a signal on) still stops its processes: each
    gets a SIGTERM from the kernel (PR_SET_PDEATHSIG) and shuts down warm."""
    worker = service.start_worker(concurrency=2, args=("--processes", "2"))
    deadline = time.monotonic() + 30
    while len(_children(worker.pid)) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    children = _children(worker.pid)
    run_id = service.submit("warm:\n  script: ['true']")
    assert service.wait(run_id) == "succeeded"
    worker.kill()
    worker.wait()
    deadline = time.monotonic() + 30
    while any(_alive(c) for c in children) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_alive(c) for c in children)


def test_the_processes_admit_jobs_within_one_budget(service: Service) -> None:
    """Two jobs that each ask for 60 % of the host's CPU budget (more than one process's half),
    taken by the two processes of a worker: the one budget they share lets only one run at a time,
    as in a one-process worker (split into fixed halves, each would have run in its own process at
    once, together 120 % of the budget)."""
    worker = service.start_worker(concurrency=2, args=("--processes", "2"))
    deadline = time.monotonic() + 30
    while len(_children(worker.pid)) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    warm = service.submit("\n".join(f"w{i}:\n  script: ['sleep 0.3']" for i in range(2)))
    assert service.wait(warm) == "succeeded", service.worker_log(0)
    cpus = round(host_budget().cpus * 0.6, 2)
    clock = "date +%s.%N"
    run_id = service.submit("\n".join(
        f"big{i}:\n  sandbox: {{cpus: {cpus}}}\n  script: ['{clock}', 'sleep 1', '{clock}']" for i in range(2)))
    assert service.wait(run_id) == "succeeded", service.worker_log(0)
    jobs = list(service.jobs(run_id).values())
    assert len({str(service.attempts(job.id)[0].worker_id) for job in jobs}) == 2  # one in each process
    spans = []
    for job in jobs:
        stamps = [float(t) for t in re.findall(r"(?<!\d)(\d{10}\.\d{9})(?!\d)", Path(str(job.log_path)).read_text())]
        assert len(stamps) == 2, Path(str(job.log_path)).read_text()
        spans.append(stamps)
    first, second = sorted(spans)
    assert first[1] <= second[0], spans  # the second began only after the first had ended
