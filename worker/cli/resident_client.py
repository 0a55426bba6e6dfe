"""``sandpit exec``'s thin client of a resident engine (``sandpit engine``: worker/cli/resident.py).

Nothing is needed for ``exec`` to work: with no engine serving this state dir, or one that
declines, :func:`exec_through_resident` returns None before anything ran and the command runs in
its own process. When one serves, the job runs there and this process only waits: its stdout and
stderr are passed to the engine (``SCM_RIGHTS``), so the job's output goes straight to whatever
they are (a terminal, a pipe, a file) without passing through here; Ctrl-C, SIGTERM and SIGHUP
are forwarded as a cancel; the client's going away (even SIGKILL) closes the connection, and the
engine cancels the job; the exit status comes back as exec's own would be.

Only built-in C modules are imported (``_socket``, ``_signal``, ``_stat``): ``socket`` and
``signal`` pull in ``enum`` and ``selectors`` (≈ 8 ms here), more than the rest of the client.

Trust, since a socket is just a name: the engine's directory (``<state>/engine``) is opened with
``O_NOFOLLOW`` and must be a directory of this user's, closed to everyone else (0700); the socket
in it must be a socket of this user's, reached through that directory's fd (``/proc/self/fd/N``, so
no name on the way is looked up twice, and a long state dir fits ``sun_path``); and the process
that answers must run as this user (``SO_PEERCRED``). Anything else: the command runs in-process.

Wire format (both directions on one ``SOCK_STREAM`` connection): the request is ``MAGIC``, a
4-byte big-endian length and that many bytes of NUL-separated fields (the number of arguments,
the arguments, then ``K=V`` for each variable the engine compares: ``SANDPIT_*`` and ``PATH``, and
last the working directory), with the two fds; the engine answers ``A`` (accepted: the job will
run) or ``D`` (declined: nothing ran), then, after ``A``, ``S<status>\\n``. The client sends ``C``
to cancel.
"""

from __future__ import annotations

import _signal  # type: ignore[import-not-found]  # no stubs: the C half of `signal`, without its enum
import _socket
import _stat
import os
import sys

from worker import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

MAGIC = b"SPX1"
#: the engine's directory in the state dir, and its socket's name there
ENGINE_DIR = "engine"
SOCKET_NAME = "sock"
#: the lock beside the socket that makes one engine per state dir
LOCK_NAME = "lock"
#: SANDPIT_RESIDENT=off: never ask a resident engine (the variable itself is not compared)
RESIDENT_VAR = "SANDPIT_RESIDENT"
ACCEPTED, DECLINED, STATUS, CANCEL = b"A", b"D", b"S", b"C"
#: the longest request the engine reads (arguments and variables)
MAX_REQUEST = 1 << 20
#: the fds passed to the engine: this process's stdout and stderr, as C ints
STDIO_FDS = (1).to_bytes(4, sys.byteorder) + (2).to_bytes(4, sys.byteorder)
#: the exit status when the engine went away after accepting the job (as exec's own 125)
ENGINE_LOST = 125


def compared_env(environ: Mapping[str, str]) -> list[tuple[str, str]]:
    """The variables whose values must be the same for the engine and the client: every setting
    (``SANDPIT_*``) and ``PATH`` (the runtime is looked up on it), sorted."""
    return sorted((key, value) for key, value in environ.items()
                  if (key.startswith("SANDPIT_") and key != RESIDENT_VAR) or key == "PATH")


def encode_request(rest: Sequence[str], environ: Mapping[str, str], cwd: str) -> bytes:
    fields = [str(len(rest)), *rest, *(f"{key}={value}" for key, value in compared_env(environ)), cwd]
    body = b"\0".join(os.fsencode(field) for field in fields)
    return MAGIC + len(body).to_bytes(4, "big") + body


def exec_through_resident(rest: Sequence[str], environ: Mapping[str, str]) -> int | None:
    """Run ``sandpit exec REST`` in the resident engine and return its exit status; None when no
    engine serves this state dir, or it declined (nothing ran: the caller runs it itself)."""
    if environ.get(RESIDENT_VAR, "") == "off":
        return None
    conn = _connect(environ.get("SANDPIT_STATE_DIR", "/var/lib/sandpit"))
    if conn is None:
        return None
    interrupted: list[int] = []

    def forward(signum: int, _frame: object) -> None:
        interrupted.append(signum)
        try:
            conn.send(CANCEL)
        except OSError:
            pass

    try:
        try:
            request = encode_request(rest, environ, os.getcwd())
        except (OSError, UnicodeError):
            return None
        previous = [(sig, _signal.signal(sig, forward)) for sig in (_signal.SIGINT, _signal.SIGTERM, _signal.SIGHUP)]
        try:
            conn.sendmsg([request], [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, STDIO_FDS)])
            answer = conn.recv(1)
        except OSError:
            answer = b""
        if answer != ACCEPTED:  # declined, or gone before it took the job: nothing ran
            for sig, handler in previous:
                _signal.signal(sig, handler)
            return 128 + interrupted[0] if interrupted else None
        return _wait_status(conn)
    finally:
        conn.close()


def _wait_status(conn: _socket.socket) -> int:
    data = b""
    while not data.endswith(b"\n") and len(data) < 16:
        try:
            chunk = conn.recv(16)
        except OSError:
            chunk = b""
        if not chunk:
            break
        data += chunk
    if data[:1] == STATUS and data.endswith(b"\n") and data[1:-1].isdigit():
        return int(data[1:-1])
    os.write(2, b"sandpit: the resident engine stopped before the job ended; its leftovers are reaped\n")
    return ENGINE_LOST


def _connect(state_dir: str) -> _socket.socket | None:
    euid = os.geteuid()
    try:
        dir_fd = os.open(os.path.join(state_dir, ENGINE_DIR),
                         os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None  # the usual case: no engine was ever started here
    conn = None
    try:
        st = os.fstat(dir_fd)
        if st.st_uid != euid or st.st_mode & 0o077:
            return None
        st = os.stat(SOCKET_NAME, dir_fd=dir_fd, follow_symlinks=False)
        if not _stat.S_ISSOCK(st.st_mode) or st.st_uid != euid:
            return None
        conn = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM | _socket.SOCK_CLOEXEC)
        conn.connect(f"/proc/self/fd/{dir_fd}/{SOCKET_NAME}")
        cred = conn.getsockopt(_socket.SOL_SOCKET, _socket.SO_PEERCRED, 12)
        if int.from_bytes(cred[4:8], sys.byteorder) != euid:
            conn.close()
            return None
        return conn
    except OSError:
        if conn is not None:
            conn.close()
        return None
    finally:
        os.close(dir_fd)
