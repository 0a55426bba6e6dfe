"""A job's log for the API: the persisted file, the live Redis stream, or both in turn (adapter).

Sources (see :mod:`pipelines.names`): while a job runs, its worker appends entries
``{"t", "s", "d"}`` to the Redis stream ``log_stream_key(job_id)`` and ends it with
``{"eof": "1", "status": ...}`` when its last attempt ends; the same entries go to the JSON-lines
file at ``Job.log_path``. An attempt its ``retry:`` tries again ends with no ``eof``: the worker
adds a ``sys`` entry (``[sandpit] attempt 1 failed (exit_code 3); retry: attempt 2 follows``, with
``attempt`` and ``status`` fields) and the next attempt writes on (:mod:`worker.logstream`). It is
read as any entry, so a follower goes on into the next attempt and stops at the one ``eof``.

Which source a reader gets:

- a finished job with its log file: the file (it has everything; the stream is trimmed and
  expires), unless the reader resumes from a stream entry id and the stream still exists;
- otherwise the stream from its start (or after the resume id), then, when following, the live
  tail until the ``eof`` entry, or until the database says the job ended (a worker that died
  never writes ``eof``).

Each entry has an id a client can resume after (SSE ``Last-Event-ID``): the Redis stream entry
id for stream entries, ``L<n>`` (line number) for file entries. Resuming from a stream id after
the stream expired replays the whole file (the two id spaces cannot be mapped onto each other).
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any

import anyio
import redis.asyncio as aioredis
from redis.exceptions import RedisError
from sqlalchemy.engine import Engine

from api.deps import resolved
from api.errors import BadRequest, Unavailable
from api.runs import load_job
from pipelines.names import log_stream_key
from pipelines.store.advance import FINAL_JOB_STATUSES
from pipelines.store.models import Job

log = logging.getLogger("sandpit.api")

BLOCK_MS = 1000  # one XREAD wait; between two the follower checks whether the job ended
BATCH = 500
KEEPALIVE_S = 15.0
# ASCII digits only (\d takes any script's digits), matched whole (``$`` would let a newline through)
_STREAM_ID = re.compile(r"([0-9]{1,20})-([0-9]{1,20})", re.ASCII)
_LINE_ID = re.compile(r"L([0-9]{1,12})", re.ASCII)
_MAX_U64 = 2**64 - 1  # each half of a Redis stream id is an unsigned 64-bit number


@dataclass(frozen=True, slots=True)
class LogEntry:
    """One chunk of output. ``id`` is empty for notes the API adds itself."""

    id: str
    t: float
    s: str
    d: str


@dataclass(frozen=True, slots=True)
class LogEnd:
    """The log is complete; ``status`` is the job's final status when known."""

    status: str | None


@dataclass(frozen=True, slots=True)
class Idle:
    """Nothing new within one wait (lets a streamer send keep-alives)."""


LogItem = LogEntry | LogEnd | Idle


@dataclass(frozen=True, slots=True)
class Cursor:
    """Where a resuming reader left off: after a stream entry, after a file line, or nothing."""

    stream_id: str | None = None
    line: int = 0

    @classmethod
    def parse(cls, text: str | None, source: str = "Last-Event-ID") -> Cursor:
        """The cursor a ``Last-Event-ID`` (or ``?after=``, named by ``source``) names (empty: from
        the start); :class:`BadRequest` for anything else, before a byte of the log is sent. A
        stream id must be one Redis accepts (both halves within 64 bits, not the very last id,
        after which nothing can come), or Redis would refuse it mid-answer, after the 200.

        >>> Cursor.parse("1700000000000-3").stream_id, Cursor.parse("L12").line, Cursor.parse(None)
        ('1700000000000-3', 12, Cursor(stream_id=None, line=0))
        >>> Cursor.parse("00012-0").stream_id
        '12-0'
        """
        text = (text or "").strip()
        if not text:
            return cls()
        if match := _STREAM_ID.fullmatch(text):
            ms, seq = int(match.group(1)), int(match.group(2))
            if ms <= _MAX_U64 and seq <= _MAX_U64 and (ms, seq) != (_MAX_U64, _MAX_U64):
                return cls(stream_id=f"{ms}-{seq}")
            raise BadRequest(f"{source} {text[:64]!r} is out of range: each half of a stream entry id is at most "
                             f"{_MAX_U64}")
        if match := _LINE_ID.fullmatch(text):
            return cls(line=int(match.group(1)))
        raise BadRequest(f"{source} {text[:64]!r} is neither a stream entry id (<ms>-<seq>) nor L<line>")


def is_final(job: Job) -> bool:
    return job.status in FINAL_JOB_STATUSES


def log_file(job: Job, state_dir: Path) -> Path | None:
    """The job's persisted log, if it has one on disk (the path comes from the worker, not a user)."""
    if not job.log_path:
        return None
    path = Path(job.log_path)
    path = path if path.is_absolute() else state_dir / path
    return path if path.is_file() else None


@dataclass(slots=True)
class LogReader:
    """Reads one job's log; :meth:`prepare` does the checks that may still become an HTTP error."""

    job: Job
    engine: Engine
    redis: aioredis.Redis
    state_dir: Path
    cursor: Cursor
    follow: bool
    _file: Path | None = None

    async def prepare(self) -> None:
        """Choose the source (raises :class:`Unavailable` when Redis is needed but down)."""
        file = log_file(self.job, self.state_dir) if is_final(self.job) else None
        if file is not None and self.cursor.stream_id is not None:
            try:
                if await resolved(self.redis.exists(log_stream_key(self.job.id))):
                    file = None  # resume in the stream the reader was following
            except RedisError:
                pass  # the file will do: it has everything
        self._file = file
        if file is None:
            try:
                await resolved(self.redis.ping())
            except RedisError as exc:
                raise Unavailable(f"the live log store (Redis) is unreachable: {exc}") from None

    async def entries(self) -> AsyncIterator[LogItem]:
        if self._file is not None:
            async for line in self._from_file(self._file):
                yield line
            yield LogEnd(self.job.status)
            return
        try:
            async for item in self._from_stream():
                yield item
        except RedisError as exc:
            log.warning("log stream of job %s broke off: %s", self.job.id, exc)
            yield LogEntry("", 0.0, "sys", f"[sandpit] the live log broke off: {exc}\n")

    async def _from_file(self, path: Path) -> AsyncIterator[LogEntry]:
        handle = await anyio.to_thread.run_sync(lambda: path.open("r", encoding="utf-8", errors="replace"))
        try:
            number = 0
            while True:
                lines = await anyio.to_thread.run_sync(lambda: list(islice(handle, BATCH)))
                if not lines:
                    return
                for entry in _parse_lines(lines, number):
                    number += 1
                    if entry is not None and number > self.cursor.line:
                        yield entry
        finally:
            await anyio.to_thread.run_sync(handle.close)

    async def _from_stream(self) -> AsyncIterator[LogItem]:
        key = log_stream_key(self.job.id)
        last = self.cursor.stream_id or "0-0"
        if last == "0-0" and (note := await self._trimmed_note(key)) is not None:
            yield note
        final = is_final(self.job)
        while True:
            if self.follow and not final:
                reply = await self.redis.xread({key: last}, count=BATCH, block=BLOCK_MS)
                batch = reply[0][1] if reply else []
            else:
                batch = await self.redis.xrange(key, min=f"({last}", count=BATCH)
            for entry_id, fields in batch:
                last = entry_id
                if fields.get("eof"):
                    yield LogEnd(fields.get("status") or None)
                    return
                yield _stream_entry(entry_id, fields)
            if batch:
                continue
            if not self.follow:
                return
            if final:  # the stream is drained and the job is over: no eof will come
                yield LogEnd(self.job.status)
                return
            yield Idle()
            self.job = await anyio.to_thread.run_sync(load_job, self.engine, self.job.id)
            final = is_final(self.job)  # one more drain, then stop

    async def _trimmed_note(self, key: str) -> LogEntry | None:
        try:
            info: dict[str, Any] = await self.redis.xinfo_stream(key)
        except RedisError:
            return None  # no stream (yet)
        added, length = int(info.get("entries-added") or 0), int(info.get("length") or 0)
        if added <= length:
            return None
        return LogEntry("", 0.0, "sys", f"[sandpit] {added - length} earlier log entries were trimmed from the "
                        "live log; the full log is served once the job has ended\n")


def _stream_entry(entry_id: str, fields: dict[str, str]) -> LogEntry:
    try:
        t = float(fields.get("t", 0))
    except ValueError:
        t = 0.0
    return LogEntry(entry_id, t, fields.get("s", "out"), fields.get("d", ""))


def _parse_lines(lines: list[str], before: int) -> Iterator[LogEntry | None]:
    """File lines as entries (``None`` for a line that is not a log record, keeping numbering)."""
    for offset, line in enumerate(lines, start=1):
        try:
            record = json.loads(line)
            yield LogEntry(f"L{before + offset}", float(record.get("t", 0)), str(record.get("s", "out")),
                           str(record.get("d", "")))
        except (ValueError, AttributeError, TypeError):
            yield None


def sse_event(item: LogEntry | LogEnd) -> bytes:
    """One Server-Sent Events frame; log data is JSON so a newline in the output stays in one event.

    >>> sse_event(LogEntry("5-0", 1.5, "out", "hi\\n"))
    b'id: 5-0\\nevent: log\\ndata: {"t": 1.5, "s": "out", "d": "hi\\\\n"}\\n\\n'
    """
    if isinstance(item, LogEnd):
        return f"event: end\ndata: {json.dumps({'status': item.status})}\n\n".encode()
    head = f"id: {item.id}\n" if item.id else ""
    data = json.dumps({"t": item.t, "s": item.s, "d": item.d})
    return f"{head}event: log\ndata: {data}\n\n".encode()


async def sse_stream(items: AsyncIterator[LogItem]) -> AsyncIterator[bytes]:
    """The items as SSE frames, with a comment line when nothing was sent for a while (keeps
    proxies from closing an idle connection)."""
    sent = time.monotonic()
    async for item in items:
        if isinstance(item, Idle):
            if time.monotonic() - sent < KEEPALIVE_S:
                continue
            frame = b": keepalive\n\n"
        else:
            frame = sse_event(item)
        sent = time.monotonic()
        yield frame


async def text_stream(items: AsyncIterator[LogItem]) -> AsyncIterator[bytes]:
    async for item in items:
        if isinstance(item, LogEntry) and item.d:
            yield item.d.encode("utf-8", errors="replace")
