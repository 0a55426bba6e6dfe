"""``sandpit reap`` and the leftover check while jobs start and finish around them
(worker/sandbox/reaper.py): each object is judged by its job's lease after it was seen."""

from __future__ import annotations

import threading

from pipelines.record import replace
from worker.sandbox.reaper import leftovers, reap
from worker.sandbox.request import SandboxRequest


def test_a_reap_running_while_jobs_start_leaves_them_alone(engine, runtime, no_leftovers):
    """Reaps one after the other while jobs start and run: every job succeeds, its output intact,
    and no reap removed anything (a list of live jobs taken at a reap's start left out the jobs
    that started during it: their directories were removed under them)."""
    stop = threading.Event()
    reaped: list[str] = []

    def reaping() -> None:
        while not stop.is_set():
            reaped.extend(reap(engine.settings))

    reaper = threading.Thread(target=reaping)
    reaper.start()
    try:
        results = []
        for _ in range(8):
            out: list[bytes] = []
            req = replace(SandboxRequest(argv=("sh", "-c", "sleep 0.2; echo done")), runtime=runtime)
            rec = engine.run(req, sink=lambda stream, data, out=out: out.append(data))
            results.append((rec.status, rec.message, b"".join(out)))
    finally:
        stop.set()
        reaper.join()
    assert all(result == ("succeeded", None, b"done\n") for result in results), results
    assert reaped == []


def test_the_leftover_check_takes_no_finishing_job_for_a_leftover(engine, runtime, no_leftovers):
    """The check, run again and again while jobs start and finish, never reports one of them."""
    stop = threading.Event()
    seen: list[str] = []

    def checking() -> None:
        while not stop.is_set():
            seen.extend(leftovers(engine.settings))

    checker = threading.Thread(target=checking)
    checker.start()
    try:
        for _ in range(12):
            rec = engine.run(replace(SandboxRequest(argv=("true",)), runtime=runtime))
            assert rec.status == "succeeded", rec.message
    finally:
        stop.set()
        checker.join()
    assert seen == []
