"""Live job logs in Redis: one bounded stream per job, then an end marker and an expiry.

A job's stream ends once, when its last attempt ends: ``{"eof": "1", "status"}``, then the
stream's expiry (``LOG_STREAM_TTL_S``), which lets late followers read it. An attempt whose
result its ``retry:`` tries again does not end the stream: it adds one ``sys`` entry saying
which attempt ended how and that the next follows (``{"t", "s": "sys", "d", "attempt",
"status"}``), so a follower (``api/logs.py``, the UI's job page) reads on into the next attempt
and only the last attempt's ``eof`` stops it. Readers that know nothing of it show its text
like any line of sandpit's own. The stream gets its expiry there too (a job cancelled before its
next attempt starts leaves no stream behind), and the next attempt removes it when it starts
(:meth:`RedisLog.resume`), as the stream of a first attempt has none while it runs.

A retry a person asks for (``POST /api/v1/jobs/{id}/retry``) comes after the job's stream has
ended: the API drops it before the new attempt is announced, so that attempt's stream starts
afresh and, like an automatic retry's, holds no ``eof`` before the end of its own last attempt.
"""

from __future__ import annotations

import time

import redis
from redis.typing import EncodableT, FieldT

from pipelines.names import LOG_STREAM_MAXLEN, LOG_STREAM_TTL_S, log_stream_key
from worker.sandbox.logs import OutputSink


def attempt_ended_line(attempt: int, status: str, reason: str | None, exit_code: int | None) -> str:
    """The ``sys`` line between an attempt that is retried and the next one.

    >>> attempt_ended_line(1, "failed", "exit_code", 3)
    '[sandpit] attempt 1 failed (exit_code 3); retry: attempt 2 follows\\n'
    >>> attempt_ended_line(2, "error", "worker_lost", None)
    '[sandpit] attempt 2 error (worker_lost); retry: attempt 3 follows\\n'
    """
    why = " ".join(str(part) for part in (reason, exit_code) if part is not None)
    return f"[sandpit] attempt {attempt} {status}{f' ({why})' if why else ''}; retry: attempt {attempt + 1} follows\n"


class RedisLog:
    def __init__(self, client: redis.Redis, job_id: str) -> None:
        self.client = client
        self.key = log_stream_key(job_id)
        self.started = time.monotonic()
        self.failed = False

    def sink(self) -> OutputSink:
        def write(stream: str, data: bytes) -> None:
            if self.failed:
                return  # Redis is away: the persisted log file still has everything
            try:
                self.client.xadd(self.key, {"t": self._t(), "s": stream,
                                            "d": data.decode("utf-8", "backslashreplace")},
                                 maxlen=LOG_STREAM_MAXLEN, approximate=True)
            except redis.RedisError:
                self.failed = True
        return write

    def resume(self, attempt: int) -> None:
        """A retried job's next attempt starts: the stream lives while it runs (the expiry the
        attempt before set goes). Nothing to do for a first attempt."""
        if attempt <= 1:
            return
        try:
            self.client.persist(self.key)
        except redis.RedisError:
            pass  # the stream may expire early; the log file has everything

    def end(self, status: str, announce: tuple[str, str] | None = None) -> None:
        """The end marker and the stream's expiry, and (``announce`` = channel, message) a pub/sub
        message, in one round trip."""
        self._close({"eof": "1", "status": status}, announce)

    def next_attempt(self, attempt: int, status: str, reason: str | None, exit_code: int | None,
                     announce: tuple[str, str] | None = None) -> None:
        """Attempt ``attempt`` ended ``status`` and is retried: the entry that says so (not an end
        marker), the stream's expiry, and the announcement, in one round trip."""
        self._close({"t": self._t(), "s": "sys", "d": attempt_ended_line(attempt, status, reason, exit_code),
                     "attempt": str(attempt), "status": status}, announce)

    def _close(self, entry: dict[FieldT, EncodableT], announce: tuple[str, str] | None) -> None:
        try:
            pipe = self.client.pipeline(transaction=False)
            pipe.xadd(self.key, entry, maxlen=LOG_STREAM_MAXLEN, approximate=True)
            pipe.expire(self.key, LOG_STREAM_TTL_S)
            if announce is not None:
                pipe.publish(*announce)
            pipe.execute()
        except redis.RedisError:
            pass

    def _t(self) -> str:
        return f"{time.monotonic() - self.started:.6f}"
