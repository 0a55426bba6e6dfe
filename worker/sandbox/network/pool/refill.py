"""Refilling the pool in the background: a claimer starts one detached refill process when the pool
runs low (``refill_if_low``, at its job's teardown, so the refill's start-up is never on a job's wall
time), and that process (``main``) tops the pool up through ``fill.fill_pool``.

The starting side is on the claim's hot path, so this module is import-light like ``claim.py``; the
refill process imports the filling side (pyroute2 and all) only once it runs.

    python -I -c "...main(argv)" <repo root> <PoolRequest.as_args() JSON>

The child finds the refill lock, already locked for it, on fd 3, and works under it: prepares the host
(bridge, nft ruleset), reaps, tops the pool up, prints what it did (to ``refill.log``) and exits.
"""

from __future__ import annotations

import json
import os
import sys
import threading

from pipelines.files.locks import lock_fd
from worker import TYPE_CHECKING
from worker.sandbox.network.pool.layout import (
    REFILL_FAILED,
    REFILL_LOCK,
    REFILL_LOCK_FD,
    REFILL_LOG,
    PoolRequest,
    make_private_dir,
    open_private_dir,
)

if TYPE_CHECKING:
    from worker.sandbox.network.pool.claim import PooledNetwork

#: after a failed refill, no new one is started for this long (a broken host must not make every
#: egress job spawn a doomed refill); jobs meanwhile make their networks themselves
REFILL_BACKOFF_S = 30.0
#: the repository root the detached refill puts first on its path (``python -I`` ignores PYTHONPATH)
_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))))


def refill_if_low(request: PoolRequest, claimed: PooledNetwork | None) -> None:
    """Start a detached refill when fewer than ``low_water`` entries were left (or none was claimed).
    Called at teardown, so the refill's start-up is never on a job's wall time."""
    remaining = claimed.remaining if claimed is not None else 0
    if remaining < request.low_water:
        start_refill(request)


def start_refill(request: PoolRequest) -> int | None:
    """Spawn one detached refill process unless one is at work; return its pid.

    The refill lock is taken here and handed to the child (an inherited open file description keeps
    the flock), so two claimers can never start two refills. The child runs ``python -I`` (no
    environment variables, no current directory on its path) with stdin on /dev/null and its output
    in ``refill.log``, in a session of its own, so Ctrl-C of the job does not stop it.
    """
    try:
        make_private_dir(request.pool_dir)
        pool_fd = open_private_dir(request.pool_dir)
    except OSError:
        return None
    try:
        lock = os.open(REFILL_LOCK, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=pool_fd)
    except OSError:
        os.close(pool_fd)
        return None
    try:
        if not lock_fd(lock, blocking=False):
            return None  # a refill is already at work
        if _failed_recently(pool_fd):
            return None
        if lock == REFILL_LOCK_FD:  # posix_spawn's dup2 onto itself would keep it close-on-exec
            moved = os.dup(lock)
            os.close(lock)
            lock = moved
        boot = ("import sys; sys.path.insert(0, sys.argv[1]); "
                "from worker.sandbox.network.pool.refill import main; sys.exit(main(sys.argv[2:]))")
        argv = [sys.executable, "-I", "-c", boot, _ROOT, request.as_args()]
        env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"), "LANG": "C.UTF-8"}
        log = os.path.join(request.pool_dir, REFILL_LOG)
        actions = [(os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0),
                   (os.POSIX_SPAWN_OPEN, 1, log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600),
                   (os.POSIX_SPAWN_DUP2, 1, 2),
                   (os.POSIX_SPAWN_DUP2, lock, REFILL_LOCK_FD)]
        try:
            pid = os.posix_spawn(sys.executable, argv, env, file_actions=actions, setsid=True)
        except OSError:
            return None
        # a long-lived process (a worker) must not collect zombies; a CLI exits before this matters
        threading.Thread(target=_reap_child, args=(pid,), name="sandpit-pool-refill", daemon=True).start()
        return pid
    finally:
        os.close(lock)
        os.close(pool_fd)


def _failed_recently(pool_fd: int) -> bool:
    import time

    try:
        fd = os.open(REFILL_LOG, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=pool_fd)
    except OSError:
        return False
    try:
        return time.time() - os.fstat(fd).st_mtime < REFILL_BACKOFF_S and REFILL_FAILED in os.read(fd, 1 << 16)
    finally:
        os.close(fd)


def _reap_child(pid: int) -> None:
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:
        pass


def main(argv: list[str]) -> int:
    """The detached refill: ``argv`` is ``[PoolRequest.as_args()]``; the refill lock is on fd 3."""
    try:
        if not lock_fd(REFILL_LOCK_FD, blocking=False):
            raise BlockingIOError("held by another refill")
    except OSError as exc:
        print(f"sandpit pool refill: not started holding the refill lock ({exc})", file=sys.stderr)
        return 2
    from worker.sandbox.network.pool.fill import fill_pool, settings_from_request  # the heavy side, here only

    request = json.loads(argv[0])
    try:
        settings = settings_from_request(request)
        for line in fill_pool(settings, lock_fd=REFILL_LOCK_FD, config=request["config"]):
            print(line)
    except Exception as exc:  # any failure is logged as one, for the spawner's back-off
        print(f"sandpit pool {REFILL_FAILED.decode()}: {exc}", file=sys.stderr)
        return 1
    return 0
