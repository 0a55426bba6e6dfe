"""``sandpit worker --processes N``: one worker made of N processes, each a Celery worker (threads
pool) with its part of the job slots, all admitting within one memory/CPU budget.

Why processes: a job costs the worker ≈ 6 ms of interpreter time (the engine's set-up and
teardown, the claim and the record, Celery's own loop), so at full load two job slots of one
process hold the GIL half the time and each waits for the other's turn at every step. Measured
side by side (``bench/bench_service.py --slots 2,2/2``, 2 cores, 400 one-job runs): one process
of 2 slots against two of 1 slot each, see the README.

Each child is the ordinary worker (``sandpit worker --concurrency k``) started with two internal
variables: ``SANDPIT_WORKER_SHARE`` (``i/n``: its place in the worker, whose one memory/CPU budget the
children keep together in a ledger, worker/service/shared_budget.py, so together they admit exactly
what one process would) and ``SANDPIT_CONCURRENT_ID_BASE`` (its first ``CI_CONCURRENT_ID``, so the
ids of the worker's running jobs stay distinct across its children).

This process only supervises: a child that dies is started again with the back-off of
``sandpit up`` (worker/service/children.py); SIGTERM or SIGINT is passed on to every child (a first
one: Celery's warm shutdown, the running jobs finish; a second: cold), and the worker exits when
they all have, with the worst status among them.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Mapping, Sequence

from worker.errors import ConfigError
from worker.service.children import Child, Children

SHARE_ENV = "SANDPIT_WORKER_SHARE"
ID_BASE_ENV = "SANDPIT_CONCURRENT_ID_BASE"
PARENT_ENV = "SANDPIT_WORKER_PARENT"
PR_SET_PDEATHSIG = 1


def split(concurrency: int, processes: int) -> list[int]:
    """Job slots per process: as even as can be, the larger parts first.

    >>> split(2, 2), split(5, 2), split(8, 3)
    ([1, 1], [3, 2], [3, 3, 2])
    >>> split(1, 2)
    Traceback (most recent call last):
    ...
    worker.errors.ConfigError: --processes 2 needs at least 2 job slots (--concurrency 1)
    """
    if processes < 1:
        raise ConfigError(f"--processes must be at least 1, not {processes}")
    if concurrency < processes:
        raise ConfigError(f"--processes {processes} needs at least {processes} job slots (--concurrency {concurrency})")
    each, extra = divmod(concurrency, processes)
    return [each + (1 if i < extra else 0) for i in range(processes)]


def parse_share(text: str) -> tuple[int, int]:
    """``SANDPIT_WORKER_SHARE``: (index, count); ``(0, 1)`` when unset (the whole host).

    >>> parse_share(""), parse_share("1/2")
    ((0, 1), (1, 2))
    >>> parse_share("2/2")
    Traceback (most recent call last):
    ...
    worker.errors.ConfigError: SANDPIT_WORKER_SHARE must be i/n with 0 <= i < n, not '2/2'
    """
    if not text.strip():
        return 0, 1
    index, _, count = text.strip().partition("/")
    try:
        i, n = int(index), int(count)
    except ValueError:
        i, n = -1, 0
    if not 0 <= i < n:
        raise ConfigError(f"{SHARE_ENV} must be i/n with 0 <= i < n, not {text!r}")
    return i, n


def children_of(argv: Sequence[str], concurrency: int, processes: int,
                env: Mapping[str, str]) -> list[Child]:
    """The worker's children: ``argv`` (the command that starts one worker process) with each
    child's slots and share (pure: nothing is started)."""
    out, base = [], 0
    for index, slots in enumerate(split(concurrency, processes)):
        child_env = {**env, SHARE_ENV: f"{index}/{processes}", ID_BASE_ENV: str(base), PARENT_ENV: str(os.getpid())}
        out.append(Child(f"worker process {index + 1}/{processes}", [*argv, "--concurrency", str(slots)], child_env))
        base += slots
    return out


def follow_parent(env: Mapping[str, str]) -> bool:
    """In a child of a worker of several processes: a SIGTERM (a warm shutdown: its running jobs
    finish and are recorded) once the supervisor is gone, whatever ended it (``kill -9``, the OOM
    killer), so no part of a stopped worker goes on taking jobs. False when the supervisor is
    already gone (the child should not start)."""
    parent = env.get(PARENT_ENV, "")
    if not parent:
        return True
    import ctypes  # only here: a worker's child pays its ≈ 4 ms import once

    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    return str(os.getppid()) == parent  # checked after the prctl: a parent that died before it is seen


def supervise(argv: Sequence[str], concurrency: int, processes: int, env: Mapping[str, str]) -> int:
    """Start the children, keep them up, pass stop signals on; the worst exit status once all ended."""
    children = Children()
    stopping: list[int] = []

    def on_signal(signum: int, _frame: object) -> None:
        stopping.append(signum)
        for child in children.children:
            if child.proc is not None and child.proc.poll() is None:
                child.proc.send_signal(signum)

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        for child in children_of(argv, concurrency, processes, env):
            if stopping:
                break
            children.start(child)
        while not stopping:
            children.watch_once()
            time.sleep(0.5)
        while any(c.proc is not None and c.proc.poll() is None for c in children.children):
            time.sleep(0.1)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    codes = [c.proc.returncode for c in children.children if c.proc is not None]
    # a child ended by the signal we passed on has exited as Celery does on a warm shutdown (0)
    return max((abs(code) for code in codes), default=0)


def run_processes(concurrency: int, processes: int, verbose: bool) -> int:
    """``sandpit worker --processes N`` (N > 1): this interpreter and module, one child per part."""
    argv = [sys.executable, "-m", "worker", "worker", *(["-v"] if verbose else [])]
    try:
        split(concurrency, processes)
    except ConfigError as exc:
        print(f"sandpit: {exc}", file=sys.stderr)
        return 2
    return supervise(argv, concurrency, processes, os.environ)
