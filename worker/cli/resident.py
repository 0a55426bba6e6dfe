"""``sandpit engine``: an optional resident engine that runs ``sandpit exec`` jobs for their clients.

``sandpit exec`` needs no daemon: it runs its job in its own process unless one of these serves its
state dir. A whole ``exec`` process spends about half its time before the job starts (the
interpreter, then ≈ 12 ms importing the engine); a client of a resident engine pays only the
interpreter and a connection (worker/cli/resident_client.py), and the engine here is warm
(runtime chosen, seccomp program compiled, image store open). The job, its limits, its record and
exec's exit status are the same as in-process: both go through ``worker.cli.exec.run_exec``, with
the client's stdout and stderr (passed over the socket), so the job's output never passes
through the client.

What the engine serves, and what it declines (``D``: the client then runs the job itself, as if no
engine were there), before anything runs:

- only a peer of its own uid (``SO_PEERCRED``; the socket is 0600 in a 0700 directory too);
- only a client whose settings are its own: every ``SANDPIT_*`` variable and ``PATH`` equal, and
  the working directory too when one of them is relative (a relative state dir or ``PATH`` entry
  means something else elsewhere);
- only arguments the fast parser takes (``exec_options.parse_exec_fast``): help, a bad option or a
  bad value is for the client's own argparse to word;
- exactly two fds and a well-formed request of at most ``MAX_REQUEST`` bytes, sent within 5 s;
- nothing once sandpit's own files changed on disk since it started (an upgrade, a checkout of
  another commit: :func:`code_stamp`, taken again for each request, ≈ 0.2 ms): the client runs the
  job with the new code, and the engine stops once its running jobs have ended, so a resident
  engine never runs a job with code older than what is installed (a supervisor starts it again).

A cancel from the client (its Ctrl-C, SIGTERM or SIGHUP), or its connection closing (it was
killed), cancels the job, which is then torn down as every cancelled job. SIGTERM/SIGINT/SIGHUP of
the engine stop it: it stops listening, cancels the jobs it runs, waits for their teardown and
exits 0. ``--idle`` makes it exit after that long with no job. One engine per state dir (a lock
beside the socket); a second start is refused.

Retention (``sandpit gc --auto``, which an in-process exec spawns detached) runs here in a thread
of its own: a child spawned and never waited for would be a zombie of this long-lived process.
"""

from __future__ import annotations

import logging
import os
import socket
import stat
import struct
import threading
import time
from array import array

from worker import TYPE_CHECKING
from worker.cli.exec import OutputWriter, run_exec
from worker.cli.exec_options import parse_exec_fast
from worker.cli.resident_client import (
    ACCEPTED,
    CANCEL,
    DECLINED,
    ENGINE_DIR,
    LOCK_NAME,
    MAGIC,
    MAX_REQUEST,
    SOCKET_NAME,
    STATUS,
    compared_env,
)
from worker.errors import SandpitError
from worker.sandbox.engine import Engine

if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any

    from worker.settings import Settings

log = logging.getLogger("sandpit.engine")

#: a client sends its whole request at once; one that stalls this long is dropped
REQUEST_TIMEOUT_S = 5.0
#: how often the accept loop looks at the stop flag and the idle clock
TICK_S = 0.5
#: variables whose relative value depends on the working directory
_PATH_SUFFIXES = ("_DIR", "_FILE", "_CONF", "_AUTH", "_NETNS")
_UCRED = struct.Struct("3i")


class RequestError(ValueError):
    """A request that is not one: the connection is dropped and nothing runs."""


def needs_cwd(env: list[tuple[str, str]]) -> bool:
    """Whether a setting or ``PATH`` holds a relative path, so the working directory matters.

    >>> needs_cwd([("PATH", "/usr/bin:/bin"), ("SANDPIT_STATE_DIR", "/srv/sp")])
    False
    >>> needs_cwd([("PATH", "bin:/usr/bin")]), needs_cwd([("SANDPIT_STATE_DIR", "state")])
    (True, True)
    """
    for key, value in env:
        if key == "PATH" and any(not part.startswith("/") for part in value.split(":")):
            return True
        if key.endswith(_PATH_SUFFIXES) and value and not value.startswith("/"):
            return True
    return False


def decode_request(body: bytes) -> tuple[list[str], list[tuple[str, str]], str]:
    """The arguments, the compared variables and the working directory of a request's body.

    >>> from worker.cli.resident_client import encode_request
    >>> decode_request(encode_request(["--", "true"], {"PATH": "/bin", "HOME": "/root"}, "/tmp")[8:])
    (['--', 'true'], [('PATH', '/bin')], '/tmp')
    """
    fields = [os.fsdecode(field) for field in body.split(b"\0")]
    if len(fields) < 2 or not fields[0].isdigit():
        raise RequestError("malformed request")
    count = int(fields[0])
    if 1 + count + 1 > len(fields):
        raise RequestError("malformed request: fewer fields than arguments")
    argv, rest, cwd = fields[1:1 + count], fields[1 + count:-1], fields[-1]
    env = []
    for item in rest:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise RequestError("malformed request: a variable without '='")
        env.append((key, value))
    return argv, sorted(env), cwd


def read_request(conn: socket.socket) -> tuple[bytes, list[int]]:
    """The request's body and the fds that came with it (the caller closes them). The fds arrive
    with the request's first bytes; any other number than two, a truncated control message or a
    body past ``MAX_REQUEST`` is a :class:`RequestError` (the fds that did arrive are closed)."""
    fds: list[int] = []
    try:
        data, ancdata, flags, _ = conn.recvmsg(65536, socket.CMSG_SPACE(4 * array("i").itemsize))
        for level, kind, payload in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                got = array("i")
                got.frombytes(payload[: len(payload) - len(payload) % got.itemsize])
                fds.extend(got)
        if flags & socket.MSG_CTRUNC or len(fds) != 2:
            raise RequestError(f"a request carries its client's stdout and stderr, not {len(fds)} fd(s)")
        while len(data) < len(MAGIC) + 4:
            data += _recv_some(conn)
        if not data.startswith(MAGIC):
            raise RequestError("not a sandpit exec request")
        size = int.from_bytes(data[len(MAGIC):len(MAGIC) + 4], "big")
        if size > MAX_REQUEST:
            raise RequestError(f"a request of {size} bytes (at most {MAX_REQUEST})")
        body = data[len(MAGIC) + 4:]
        while len(body) < size:
            body += _recv_some(conn)
        if len(body) != size:
            raise RequestError("more bytes than the request's length")
        return body, fds
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise


def _recv_some(conn: socket.socket) -> bytes:
    chunk = conn.recv(65536)
    if not chunk:
        raise RequestError("the client went away in the middle of its request")
    return chunk


_PACKAGES = ("worker", "pipelines")  # the code an exec job runs (the API's is not)


def code_stamp(root: str | None = None) -> tuple[tuple[str, int, int, int], ...]:
    """The identity of sandpit's source and data files (``.py``, ``.json``) under ``root`` (the
    checkout or site-packages this process runs from): name, inode, size and mtime of each, so a
    replaced, rewritten, added or removed file changes it."""
    base = root or os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    out = []
    for package in _PACKAGES:
        for folder, dirs, files in os.walk(os.path.join(base, package)):
            dirs[:] = sorted(d for d in dirs if d != "__pycache__")
            for name in sorted(files):
                if name.endswith((".py", ".json")):
                    path = os.path.join(folder, name)
                    try:
                        st = os.stat(path, follow_symlinks=False)
                    except OSError:
                        continue
                    out.append((path, st.st_ino, st.st_size, st.st_mtime_ns))
    return tuple(out)


class ResidentEngine:
    """The engine process: one listening socket, a thread per client connection."""

    def __init__(self, settings: Settings, environ: Mapping[str, str], idle_s: float = 0.0) -> None:
        self.settings = settings
        self.env = compared_env(environ)
        self.cwd = os.getcwd()
        self.idle_s = idle_s
        self.engine = Engine(settings)
        self.code = code_stamp()
        self.stopping = threading.Event()
        self.retiring = threading.Event()  # declines every job; ends once those it runs have
        self._lock = threading.Lock()
        self._jobs: dict[int, threading.Event] = {}  # client thread's ident -> its job's cancel
        self._threads: list[threading.Thread] = []
        self._last_job = time.monotonic()
        self._collecting = False

    # -- the socket ---------------------------------------------------------------------
    def _open_dir(self) -> int:
        """``<state>/engine``, made 0700 if missing; a symlink or another owner's directory there is
        refused (the client makes the same checks before it trusts the socket)."""
        self.settings.state_dir.mkdir(parents=True, exist_ok=True)
        path = self.settings.state_dir / ENGINE_DIR
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            pass
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        st = os.fstat(fd)
        if st.st_uid != os.geteuid():
            os.close(fd)
            raise SandpitError(f"{path} belongs to uid {st.st_uid}, not to this user")
        if stat.S_IMODE(st.st_mode) != 0o700:
            os.fchmod(fd, 0o700)
        return fd

    def serve(self) -> int:
        from pipelines.files.locks import try_hold

        dir_fd = self._open_dir()
        try:
            lock = try_hold(LOCK_NAME, dir_fd=dir_fd)
            if lock is None:
                raise SandpitError(f"a resident engine already serves {self.settings.state_dir}")
            with lock:
                return self._listen(dir_fd)
        finally:
            os.close(dir_fd)

    def _listen(self, dir_fd: int) -> int:
        try:
            os.unlink(SOCKET_NAME, dir_fd=dir_fd)  # a socket an engine that died left (we hold the lock)
        except FileNotFoundError:
            pass
        srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        old = os.umask(0o177)  # the socket is made 0600 (one thread yet: the umask is the process's)
        try:
            srv.bind(f"/proc/self/fd/{dir_fd}/{SOCKET_NAME}")
        finally:
            os.umask(old)
        srv.listen(128)
        srv.settimeout(TICK_S)
        log.warning("serving sandpit exec for %s (pid %d)", self.settings.state_dir, os.getpid())
        try:
            while not self.stopping.is_set() and not self._retired():
                try:
                    conn, _ = srv.accept()
                except TimeoutError:
                    if self._idle_over():
                        log.warning("idle for %gs, stopping", self.idle_s)
                        break
                    continue
                self._start_client(conn)
        finally:
            srv.close()
            try:
                os.unlink(SOCKET_NAME, dir_fd=dir_fd)
            except FileNotFoundError:
                pass
            self._stop_jobs()
        return 0

    def _retired(self) -> bool:
        with self._lock:
            return self.retiring.is_set() and not self._jobs

    def _idle_over(self) -> bool:
        with self._lock:
            return self.idle_s > 0 and not self._jobs and time.monotonic() - self._last_job > self.idle_s

    def _start_client(self, conn: socket.socket) -> None:
        thread = threading.Thread(target=self._client, args=(conn,), name="sandpit-exec-client", daemon=True)
        with self._lock:
            self._threads = [t for t in self._threads if t.is_alive()]  # the ended clients' go
            self._threads.append(thread)
        thread.start()

    def _stop_jobs(self) -> None:
        with self._lock:
            for cancel in self._jobs.values():
                cancel.set()
            threads = list(self._threads)
        for thread in threads:
            thread.join()

    # -- one client -----------------------------------------------------------------------
    def _client(self, conn: socket.socket) -> None:
        with conn:
            try:
                pid, uid, _gid = _UCRED.unpack(conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size))
            except OSError:
                return
            if uid != os.geteuid():
                log.warning("refused a connection of uid %d (pid %d)", uid, pid)
                return
            conn.settimeout(REQUEST_TIMEOUT_S)
            try:
                body, fds = read_request(conn)
            except (OSError, RequestError) as exc:
                log.warning("dropped a request of pid %d: %s", pid, exc)
                return
            try:
                self._serve(conn, pid, body, fds)
            finally:
                for fd in fds:
                    os.close(fd)

    def _serve(self, conn: socket.socket, pid: int, body: bytes, fds: list[int]) -> None:
        try:
            argv, env, cwd = decode_request(body)
        except RequestError as exc:
            log.warning("dropped a request of pid %d: %s", pid, exc)
            return
        args: Any = parse_exec_fast(argv)  # the same namespace in-process exec gets (worker/cli/commands.py)
        why = self._declined(env, cwd) or ("" if args is not None else "arguments for argparse to word")
        if why or args is None or self.stopping.is_set() or self.retiring.is_set():
            log.info("declined pid %d: %s", pid, why or "stopping")
            _send(conn, DECLINED)
            return
        cancel = threading.Event()
        me = threading.get_ident()
        with self._lock:
            self._jobs[me] = cancel
        try:
            conn.settimeout(None)
            if not _send(conn, ACCEPTED):
                return  # gone before the job started: nothing ran
            threading.Thread(target=_watch, args=(conn, cancel), name="sandpit-exec-watch", daemon=True).start()
            self._collect_if_due()
            status = run_exec(args, self.settings, OutputWriter(fds[0], fds[1], json=args.json), cancel,
                              engine=self.engine)
            log.info("pid %d: exec %.200r: exit status %d%s", pid, argv, status,
                        " (cancelled)" if cancel.is_set() else "")
            _send(conn, STATUS + str(status).encode() + b"\n")
        finally:
            with self._lock:
                del self._jobs[me]
                self._last_job = time.monotonic()
            try:
                conn.shutdown(socket.SHUT_RDWR)  # ends the watcher's read
            except OSError:
                pass

    def _declined(self, env: list[tuple[str, str]], cwd: str) -> str:
        if code_stamp() != self.code:
            if not self.retiring.is_set():
                log.warning("sandpit's files changed since this engine started: stopping once its jobs end")
                self.retiring.set()
            return "sandpit's files changed since this engine started"
        if env != self.env:
            names = sorted({k for k, _ in env} ^ {k for k, _ in self.env}
                           | {k for k, v in env if (k, v) not in self.env})
            # the client's names reach this engine's log (a terminal, maybe): shown only as plain words
            shown = [name if name.isascii() and name.replace("_", "").isalnum() else ascii(name) for name in names]
            return f"other settings ({', '.join(shown)[:200]})"
        if needs_cwd(env) and cwd != self.cwd:
            return "a relative setting and another working directory"
        return ""

    def _collect_if_due(self) -> None:
        from worker.local.retention import collect, due

        with self._lock:
            if self._collecting or not due(self.settings, time.time()):
                return
            self._collecting = True

        def run() -> None:
            try:
                collect(self.settings, only_if_due=True)
            except (OSError, SandpitError) as exc:
                log.warning("retention failed: %s", exc)
            finally:
                with self._lock:
                    self._collecting = False

        threading.Thread(target=run, name="sandpit-gc", daemon=True).start()



def _send(conn: socket.socket, data: bytes) -> bool:
    try:
        conn.sendall(data)
        return True
    except OSError:
        return False


def _watch(conn: socket.socket, cancel: threading.Event) -> None:
    """A client's cancel byte, or its connection's end (it was killed, or the job is over and the
    connection shut): either way the job is cancelled, which is a no-op once it ended."""
    while True:
        try:
            data = conn.recv(64)
        except OSError:
            data = b""
        if not data or CANCEL in data:
            cancel.set()
            return


def serve(settings: Settings, environ: Mapping[str, str], idle_s: float) -> int:
    """``sandpit engine``: serve until stopped (SIGTERM, SIGINT, SIGHUP) or idle for ``idle_s`` (0:
    never)."""
    import signal

    resident = ResidentEngine(settings, environ, idle_s)

    def stop(_signum: int, _frame: object) -> None:
        resident.stopping.set()

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, stop)
    return resident.serve()
