"""Services' output: one log per service, read by one thread for all of a job's services.

Each service's stdout and stderr are pipes sandpit reads (no file inside the sandbox, as for the
job), written to ``<logs>/<job id>.svc<N>.jsonl`` in the job log's format (masked with the job's
secrets, capped at the job's log limit; a service past the cap keeps running, its output is
dropped). The job's own log gets none of it, unless the job sets ``CI_DEBUG_SERVICES`` to a true
value (GitLab's switch, parsed as Go's ``strconv.ParseBool``): then every line of every service
is also written into the job's log as ``[service:<alias>] line``, whole lines only, so the job's
output and a service's never share a line.

The reader is one thread with one selector over every service's pipes and each runtime process's
pidfd (so it also reaps them and knows each service's exit status); the job's log is written from
two threads then, so it is a :class:`SharedJobLog`, whose writes hold a lock.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import threading
import time
from pathlib import Path

from worker.sandbox.logs import JobLog, OutputSink

#: how long teardown drains the pipes of services that have been killed
DRAIN_S = 2.0
#: a line longer than this reaches the job's log in pieces (each with the prefix)
LINE_BYTES = 64 * 1024
_TRUE = ("1", "t", "T", "TRUE", "true", "True")


def debug_services(env: tuple[tuple[str, str], ...]) -> bool:
    """Whether ``CI_DEBUG_SERVICES`` is true in the job's environment (Go's ParseBool words).

    >>> debug_services((("CI_DEBUG_SERVICES", "true"),)), debug_services((("CI_DEBUG_SERVICES", "yes"),))
    (True, False)
    """
    return dict(env).get("CI_DEBUG_SERVICES", "") in _TRUE


class SharedJobLog(JobLog):
    """The job's log when services' lines go into it too: the supervisor and the services' reader
    write it from their own threads, one at a time."""

    def __init__(self, path: Path, limit_bytes: int, sink: OutputSink | None = None,
                 secrets: tuple[str, ...] = ()) -> None:
        super().__init__(path, limit_bytes, sink, secrets)
        self._lock = threading.RLock()  # close() flushes: the same thread takes it twice

    def write(self, stream: str, data: bytes) -> None:
        with self._lock:
            if not self._file.closed:
                super().write(stream, data)

    def tick(self) -> None:
        with self._lock:
            if not self._file.closed:
                super().tick()

    def flush(self) -> None:
        with self._lock:
            if not self._file.closed:
                super().flush()

    def close(self) -> None:
        with self._lock:
            super().close()


class ServiceOutput:
    """What the reader keeps of one service: its log, its pipes, its runtime process."""

    def __init__(self, alias: str, log: JobLog, pid: int, out_fd: int, err_fd: int) -> None:
        self.alias = alias
        self.log = log
        self.pid = pid
        self.pidfd = os.pidfd_open(pid)
        self.pipes = {out_fd: "out", err_fd: "err"}
        self.exit_code: int | None = None  # the runtime's status: the service's exit code, 128+N for a signal
        self.partial: dict[str, bytes] = {}
        self.prefix = f"[service:{alias}] ".encode()


class OutputPump:
    """The thread that reads every service's pipes (``add`` them, then ``start``). ``attach`` gives it
    the job's log to copy lines into (``CI_DEBUG_SERVICES``; lines before it are kept until then);
    ``stop`` drains, reaps the runtimes and closes the services' logs (idempotent)."""

    def __init__(self, debug: bool) -> None:
        self.debug = debug
        self.outputs: list[ServiceOutput] = []
        self._sel = selectors.DefaultSelector()
        self._wake = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        self._sel.register(self._wake, selectors.EVENT_READ, None)
        self._lock = threading.Lock()
        self._target: JobLog | None = None
        self._pending: list[tuple[str, bytes]] = []
        self._pending_bytes = 0
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._done = False

    def add(self, output: ServiceOutput) -> None:
        self.outputs.append(output)
        for fd in output.pipes:
            os.set_blocking(fd, False)
            self._sel.register(fd, selectors.EVENT_READ, ("pipe", output))
        self._sel.register(output.pidfd, selectors.EVENT_READ, ("exit", output))

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="sandpit-services", daemon=True)
        self._thread.start()

    def attach(self, job_log: JobLog) -> None:
        with self._lock:  # held while the backlog is written: no newer line can pass it
            self._target = job_log
            for stream, lines in self._pending:
                job_log.write(stream, lines)
            self._pending = []

    # -- the thread -------------------------------------------------------------------------
    def _run(self) -> None:
        drain_until: float | None = None
        try:
            while True:
                busy = any(o.pipes for o in self.outputs) or any(o.exit_code is None for o in self.outputs)
                if not busy:
                    break
                if drain_until is not None and time.monotonic() > drain_until:
                    break
                for key, _mask in self._sel.select(0.05):
                    if key.data is None:
                        with contextlib.suppress(BlockingIOError):
                            os.eventfd_read(self._wake)
                        drain_until = time.monotonic() + DRAIN_S
                        continue
                    kind, output = key.data
                    if kind == "pipe":
                        self._read(key.fd, output)
                    else:
                        self._reap(output)
                for output in self.outputs:
                    output.log.tick()
        finally:
            for output in self.outputs:
                self._finish(output)

    def _read(self, fd: int, output: ServiceOutput) -> None:
        stream = output.pipes[fd]
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            return
        if not chunk:
            self._sel.unregister(fd)
            os.close(fd)
            del output.pipes[fd]
            return
        output.log.write(stream, chunk)
        if self.debug:
            self._copy_lines(output, stream, chunk)

    def _copy_lines(self, output: ServiceOutput, stream: str, chunk: bytes, final: bool = False) -> None:
        """Whole lines of ``chunk`` (with what was held of the stream) into the job's log, each with
        the service's prefix; a partial line waits for its end (``final``: the stream ended)."""
        data = output.partial.pop(stream, b"") + chunk
        if not final:
            cut = data.rfind(b"\n") + 1
            if cut == 0 and len(data) < LINE_BYTES:
                if data:
                    output.partial[stream] = data
                return
            cut = cut or len(data)  # a line longer than LINE_BYTES goes in pieces
            data, rest = data[:cut], data[cut:]
            if rest:
                output.partial[stream] = rest
        if not data:
            return
        parts = data.split(b"\n")
        if parts[-1] == b"":
            parts.pop()
        lines = b"".join(output.prefix + part + b"\n" for part in parts)
        with self._lock:
            target = self._target
            if target is None:
                if self._pending_bytes < 1 << 20:  # before the job's log exists: a bounded backlog
                    self._pending.append((stream, lines))
                    self._pending_bytes += len(lines)
                return
        target.write(stream, lines)

    def _reap(self, output: ServiceOutput) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self._sel.unregister(output.pidfd)
        try:
            _pid, status = os.waitpid(output.pid, 0)
        except ChildProcessError:
            status = 0
        code = os.waitstatus_to_exitcode(status)
        output.exit_code = 128 - code if code < 0 else code

    def _finish(self, output: ServiceOutput) -> None:
        for fd in list(output.pipes):
            with contextlib.suppress(KeyError, ValueError):
                self._sel.unregister(fd)
            os.close(fd)
        output.pipes.clear()
        if self.debug:
            for stream in list(output.partial):
                self._copy_lines(output, stream, b"", final=True)
        output.log.close()

    # -- teardown ---------------------------------------------------------------------------
    def stop(self) -> None:
        """Drain what the (killed) services still write, for at most ``DRAIN_S``; reap their
        runtimes (SIGKILL to one that has not exited by then); close their logs."""
        if self._done:
            return
        self._done = True
        if self._thread is not None:
            os.eventfd_write(self._wake, 1)
            self._thread.join()
        else:
            for output in self.outputs:
                self._finish(output)
        for output in self.outputs:
            if output.exit_code is None:  # a runtime that outlived the drain
                with contextlib.suppress(ProcessLookupError):
                    os.kill(output.pid, 9)
                self._reap(output)
            os.close(output.pidfd)
        self._sel.close()
        os.close(self._wake)
