"""Watching a running container: its pipes, its exit, its limits and its deadline.

One thread, one epoll set (``select.epoll`` itself: the ``selectors`` module, and ``math`` with it,
cost ~0.6 ms of every ``sandpit exec``'s start-up): stdout/stderr pipes, a pidfd for the runtime
process, on cgroup v1 the OOM eventfd, and the output delivery's wake-up. pids.events has no
notification on v1, so it is read every 50 ms (and once more at the end, see
``JobCgroup.pids_limit_hits``). The first limit hit names the reason and the whole job is killed;
a deadline sends SIGTERM to every process, then SIGKILL after the grace period.

Nothing in this loop waits for the job's live reader: output goes to the log file here and to the
reader through ``OutputDelivery``'s own thread. When that reader falls behind, the pipes are left
unread (the job blocks in write(2)) while deadline, limits and cancel go on being enforced.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import threading
import time
from pathlib import Path

from pipelines.job_record import Reason
from pipelines.record import record
from worker.sandbox.cgroups import JobCgroup
from worker.sandbox.logs import JobLog
from worker.sandbox.request import Limits
from worker.sandbox.runtime import Runtime, spawn

POLL_S = 0.05
DRAIN_S = 2.0


@record(frozen=True)
class RunEnd:
    """How the container's run ended, as the supervisor saw it (``worker.sandbox.verdict`` judges it)."""

    exit_code: int | None
    signal: int | None
    reason: Reason | None  # a limit or cancel that sandpit enforced, else None
    runtime_error: str | None = None  # the runtime's own failure (it could not start the job)


@record(frozen=True)
class Started:
    """A runtime process running a container in the foreground: its pid and the read ends of the
    container's stdout and stderr."""

    pid: int
    out_r: int
    err_r: int


def start(runtime: Runtime, bundle: Path, container_id: str, stdin_fd: int | None = None) -> Started:
    """``runtime run`` of ``bundle``, its stdin ``stdin_fd`` (None: /dev/null)."""
    out_r, out_w = os.pipe2(os.O_CLOEXEC)
    err_r, err_w = os.pipe2(os.O_CLOEXEC)
    try:
        pid = spawn(runtime.run_argv(bundle, container_id, bundle / "runtime.log"), out_w, err_w,
                    runtime.run_env(), stdin_fd)
    except BaseException:
        os.close(out_r)
        os.close(err_r)
        raise
    finally:
        os.close(out_w)
        os.close(err_w)
    return Started(pid, out_r, err_r)


def supervise(runtime: Runtime, bundle: Path, container_id: str, cg: JobCgroup, joblog: JobLog,
              limits: Limits, cancel: threading.Event, started: Started | None = None) -> RunEnd:
    """Run the container (or watch the one ``started`` runs: the limits and the deadline count
    from now) to its end."""
    if started is None:
        started = start(runtime, bundle, container_id)
    pid, out_r, err_r = started.pid, started.out_r, started.err_r
    runtime_log = bundle / "runtime.log"
    pidfd = os.pidfd_open(pid)
    sel = _Watch()
    streams = {out_r: "out", err_r: "err"}
    for fd in streams:
        os.set_blocking(fd, False)
        sel.register(fd, "pipe")
    sel.register(pidfd, "exit")
    if cg.oom_eventfd is not None:
        sel.register(cg.oom_eventfd, "oom")
    wake_fd = joblog.wake_fd
    if wake_fd is not None:
        sel.register(wake_fd, "delivery")
    reason: Reason | None = None
    began = time.monotonic()
    deadline = began + limits.timeout_s
    kill_at: float | None = None
    exited_at: float | None = None
    status: int | None = None
    next_poll = began + POLL_S
    open_pipes = set(streams)
    paused = False  # the live reader is behind: the job's pipes are not read, so its writes block
    try:
        while open_pipes or status is None:
            now = time.monotonic()
            if exited_at is not None:
                deadline = float("inf")
            wait = max(0.0, min(next_poll, deadline, kill_at or deadline) - now)
            for fd, kind in sel.ready(wait):
                if kind == "pipe":
                    try:
                        chunk = os.read(fd, 65536)
                    except BlockingIOError:
                        continue
                    if chunk:
                        joblog.write(streams[fd], chunk)
                        if joblog.over_limit and reason is None:
                            reason = Reason.LOG_LIMIT
                            cg.kill_all()
                    else:
                        _close_pipe(sel, fd, open_pipes, paused)
                elif kind == "exit":
                    _pid, status = os.waitpid(pid, 0)
                    sel.unregister(pidfd)
                    exited_at = time.monotonic()
                elif kind == "oom":
                    with contextlib.suppress(BlockingIOError):
                        os.eventfd_read(fd)
                    if reason is None:
                        reason = Reason.OOM
                    cg.kill_all()
                elif kind == "delivery":
                    with contextlib.suppress(BlockingIOError):
                        os.eventfd_read(fd)
            # a stream whose reader went away: the job gets the broken pipe, as in a shell pipeline
            for fd in [fd for fd in open_pipes if streams[fd] in joblog.broken_streams]:
                _close_pipe(sel, fd, open_pipes, paused)
            # back-pressure while the job runs. Once it is being stopped or has exited, its pipes
            # are drained regardless: runc copies the job's output through goroutines of its own and
            # does not exit before they have written everything, and what is left is bounded (by
            # the pipes, and by the log limit: only stored output is handed on)
            want_pause = status is None and reason is None and joblog.backlogged()
            if want_pause != paused:
                paused = want_pause
                for fd in open_pipes:
                    if paused:
                        sel.unregister(fd)
                    else:
                        sel.register(fd, "pipe")
            now = time.monotonic()
            if now >= next_poll:
                next_poll = now + POLL_S
                joblog.tick()
                if reason is None and cancel.is_set():
                    reason = Reason.CANCELLED
                    runtime.kill(container_id, "TERM")
                    kill_at = now + limits.grace_s
                if reason is None and cg.pids_limit_hits() > 0:
                    reason = Reason.PIDS_LIMIT
                    cg.kill_all()
            if reason is None and now >= deadline and status is None:
                reason = Reason.TIMEOUT
                deadline = float("inf")
                runtime.kill(container_id, "TERM")
                kill_at = now + limits.grace_s
            if kill_at is not None and now >= kill_at:
                cg.kill_all()
                runtime.kill(container_id, "KILL")  # also reaches processes outside the cgroup
                kill_at = None
            if exited_at is not None and open_pipes and now - exited_at > DRAIN_S:
                break  # something still holds the pipes open; the cgroup kill below ends it
    finally:
        sel.close()
        for fd in (*open_pipes, pidfd):
            with contextlib.suppress(OSError):
                os.close(fd)
        if status is None:
            cg.kill_all()
            with contextlib.suppress(ChildProcessError):
                _pid, status = os.waitpid(pid, 0)
    cg.kill_all()
    assert status is not None
    code = os.waitstatus_to_exitcode(status)
    error = runtime_error(runtime_log) if code != 0 and reason is None else None
    sig = None
    if code < 0:
        sig, code = -code, 128 - code
    elif reason is not None and code > 128:  # every enforced reason kills the job
        sig = code - 128
    return RunEnd(exit_code=code, signal=sig, reason=reason, runtime_error=error)


class _Watch:
    """The fds the supervisor waits on, each with its kind: an epoll set that reports any event
    (a hang-up too) as the fd's turn, as ``selectors`` did."""

    def __init__(self) -> None:
        self._epoll = select.epoll()
        self._kinds: dict[int, str] = {}

    def register(self, fd: int, kind: str) -> None:
        self._epoll.register(fd, select.EPOLLIN)
        self._kinds[fd] = kind

    def unregister(self, fd: int) -> None:
        self._epoll.unregister(fd)
        del self._kinds[fd]

    def ready(self, timeout: float) -> list[tuple[int, str]]:
        """(fd, kind) of each fd with something to read, a hang-up or an error, waiting at most
        ``timeout`` seconds (rounded up to the next millisecond: no busy loop)."""
        return [(fd, self._kinds[fd]) for fd, _mask in self._epoll.poll(timeout) if fd in self._kinds]

    def close(self) -> None:
        self._epoll.close()


def _close_pipe(sel: _Watch, fd: int, open_pipes: set[int], paused: bool) -> None:
    if not paused:
        sel.unregister(fd)
    open_pipes.discard(fd)
    os.close(fd)


def runtime_error(log_file: Path) -> str | None:
    """The runtime's own error message (container never started), if it wrote one."""
    try:
        text = log_file.read_text(errors="replace")
    except FileNotFoundError:
        return None
    messages = []
    for line in text.splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if rec.get("level") in ("error", "fatal"):
            messages.append(str(rec.get("msg", "")).strip())
    return "; ".join(messages) or None
