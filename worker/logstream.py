"""Live job logs in Redis: one bounded stream per job, then an end marker and an expiry."""

from __future__ import annotations

import time

import redis

from pipelines.names import LOG_STREAM_MAXLEN, LOG_STREAM_TTL_S, log_stream_key
from worker.sandbox.logs import OutputSink


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
                self.client.xadd(self.key, {"t": f"{time.monotonic() - self.started:.6f}", "s": stream,
                                            "d": data.decode("utf-8", "backslashreplace")},
                                 maxlen=LOG_STREAM_MAXLEN, approximate=True)
            except redis.RedisError:
                self.failed = True
        return write

    def end(self, status: str, announce: tuple[str, str] | None = None) -> None:
        """The end marker and the stream's expiry, and (``announce`` = channel, message) a pub/sub
        message, in one round trip."""
        try:
            pipe = self.client.pipeline(transaction=False)
            pipe.xadd(self.key, {"eof": "1", "status": status}, maxlen=LOG_STREAM_MAXLEN, approximate=True)
            pipe.expire(self.key, LOG_STREAM_TTL_S)
            if announce is not None:
                pipe.publish(*announce)
            pipe.execute()
        except redis.RedisError:
            pass
