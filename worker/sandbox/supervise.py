"""Watching a running container: its pipes, its exit, its limits and its deadline.

One thread, one selector: stdout/stderr pipes, a pidfd for the runtime process, and on cgroup
v1 the OOM eventfd. pids.events has no notification on v1, so it is read every 50 ms. The first
limit hit names the reason and the whole job is killed; a deadline sends SIGTERM to every
process, then SIGKILL after the grace period.
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import threading
import time
from pathlib import Path

from worker.record import record
from worker.sandbox.cgroups import JobCgroup
from worker.sandbox.logs import JobLog
from worker.sandbox.request import Limits
from worker.sandbox.runtime import Runtime, spawn

POLL_S = 0.05
DRAIN_S = 2.0


@record(frozen=True)
class Outcome:
    exit_code: int | None
    signal: int | None
    reason: str | None  # a limit or cancel that sandpit enforced, else None
    runtime_error: str | None = None


def supervise(runtime: Runtime, bundle: Path, container_id: str, cg: JobCgroup, joblog: JobLog,
              limits: Limits, cancel: threading.Event) -> Outcome:
    out_r, out_w = os.pipe2(os.O_CLOEXEC)
    err_r, err_w = os.pipe2(os.O_CLOEXEC)
    runtime_log = bundle / "runtime.log"
    try:
        pid = spawn(runtime.run_argv(bundle, container_id, runtime_log), out_w, err_w)
    finally:
        os.close(out_w)
        os.close(err_w)
    pidfd = os.pidfd_open(pid)
    sel = selectors.DefaultSelector()
    streams = {out_r: "out", err_r: "err"}
    for fd in streams:
        os.set_blocking(fd, False)
        sel.register(fd, selectors.EVENT_READ, "pipe")
    sel.register(pidfd, selectors.EVENT_READ, "exit")
    if cg.oom_eventfd is not None:
        sel.register(cg.oom_eventfd, selectors.EVENT_READ, "oom")
    reason: str | None = None
    started = time.monotonic()
    deadline = started + limits.timeout_s
    kill_at: float | None = None
    exited_at: float | None = None
    status: int | None = None
    next_poll = started + POLL_S
    open_pipes = set(streams)
    try:
        while open_pipes or status is None:
            now = time.monotonic()
            if exited_at is not None:
                deadline = float("inf")
            wait = max(0.0, min(next_poll, deadline, kill_at or deadline) - now)
            for key, _mask in sel.select(wait):
                if key.data == "pipe":
                    fd = int(key.fd)  # type: ignore[call-overload]
                    try:
                        chunk = os.read(fd, 65536)
                    except BlockingIOError:
                        continue
                    if chunk:
                        joblog.write(streams[fd], chunk)
                        if joblog.over_limit and reason is None:
                            reason = "log_limit"
                            cg.kill_all()
                    else:
                        sel.unregister(fd)
                        open_pipes.discard(fd)
                elif key.data == "exit":
                    _pid, status = os.waitpid(pid, 0)
                    sel.unregister(pidfd)
                    exited_at = time.monotonic()
                elif key.data == "oom":
                    with contextlib.suppress(BlockingIOError):
                        os.eventfd_read(key.fd)  # type: ignore[arg-type]
                    if reason is None:
                        reason = "oom"
                    cg.kill_all()
            now = time.monotonic()
            if now >= next_poll:
                next_poll = now + POLL_S
                if reason is None and cancel.is_set():
                    reason = "cancelled"
                    runtime.kill(container_id, "TERM")
                    kill_at = now + limits.grace_s
                if reason is None and cg.pids_limit_hits() > 0:
                    reason = "pids_limit"
                    cg.kill_all()
            if reason is None and now >= deadline and status is None:
                reason = "timeout"
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
        for fd in (out_r, err_r, pidfd):
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
    elif reason in ("timeout", "oom", "pids_limit", "log_limit", "cancelled") and code > 128:
        sig = code - 128
    return Outcome(exit_code=code, signal=sig, reason=reason, runtime_error=error)


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
