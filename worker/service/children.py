"""The child processes of ``sandpit up`` (redis-server, the worker, the API), kept alive.

A child that dies is started again, after a back-off that doubles with each death in a row (1 s, 2 s,
4 s ... up to 30 s) and resets once the child has stayed up for a minute: one crash of the worker (a
broker hiccup, a bug) costs a second, a child that cannot start at all does not spin the CPU, and
``sandpit up`` never stops the whole service because one part died. This is what systemd's
``Restart=always`` with ``RestartSec`` does for a plain host (see the README).

The back-off arithmetic is a pure function (``next_delay``); ``Children`` does the process I/O.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence

FIRST_DELAY_S = 1.0
MAX_DELAY_S = 30.0
STABLE_AFTER_S = 60.0  # a child up this long has recovered: its next death starts the back-off again


def next_delay(previous: float | None, uptime_s: float) -> float:
    """Seconds to wait before starting a child again, given the delay used before its last start
    (None: it never died) and how long it ran.

    >>> next_delay(None, 5.0)
    1.0
    >>> next_delay(1.0, 5.0), next_delay(16.0, 5.0), next_delay(30.0, 5.0)
    (2.0, 30.0, 30.0)
    >>> next_delay(8.0, 120.0)
    1.0
    """
    if previous is None or uptime_s >= STABLE_AFTER_S:
        return FIRST_DELAY_S
    return min(MAX_DELAY_S, previous * 2)


class Child:
    """One supervised process: how to start it, when it started, the back-off it is on."""

    def __init__(self, name: str, argv: Sequence[str], env: Mapping[str, str],
                 ready: Callable[[subprocess.Popen[bytes]], None] | None = None,
                 stdout: int | None = None) -> None:
        self.name, self.argv, self.env, self.ready, self.stdout = name, list(argv), dict(env), ready, stdout
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0
        self.delay: float | None = None
        self.restart_at: float | None = None
        self.restarts = 0

    def start(self) -> None:
        self.proc = subprocess.Popen(self.argv, env=self.env, stdout=self.stdout)
        self.started_at = time.monotonic()
        if self.ready is not None:
            self.ready(self.proc)


class Children:
    """Start children in order, restart any that die, stop them all in reverse order."""

    def __init__(self, log: Callable[[str], None] = lambda m: print(m, file=sys.stderr, flush=True)) -> None:
        self.children: list[Child] = []
        self.log = log

    def start(self, child: Child) -> Child:
        self.children.append(child)
        child.start()
        return child

    def watch_once(self, now: float | None = None) -> None:
        """Notice children that died and start those whose back-off is over (called every ~0.5 s)."""
        now = time.monotonic() if now is None else now
        for child in self.children:
            if child.restart_at is not None:
                if now >= child.restart_at:
                    child.restart_at = None
                    child.restarts += 1
                    self.log(f"sandpit: starting {child.name} again (restart {child.restarts})")
                    try:
                        child.start()
                    except (OSError, SystemExit) as exc:  # it died again while starting: back off more
                        self.log(f"sandpit: {child.name} did not start: {exc}")
                        child.delay = next_delay(child.delay, 0.0)
                        child.restart_at = time.monotonic() + child.delay
                continue
            if child.proc is not None and child.proc.poll() is not None:
                uptime = now - child.started_at
                child.delay = next_delay(child.delay, uptime)
                child.restart_at = now + child.delay
                self.log(f"sandpit: {child.name} exited with status {child.proc.returncode} after {uptime:.1f}s; "
                         f"starting it again in {child.delay:.0f}s")

    def stop_all(self, timeout: float = 30) -> None:
        for child in reversed(self.children):
            if child.proc is not None and child.proc.poll() is None:
                child.proc.send_signal(signal.SIGTERM)
        for child in reversed(self.children):
            if child.proc is None:
                continue
            try:
                child.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                child.proc.kill()
                child.proc.wait()
