"""A job's services' logs for the API (adapter).

Each service of a job writes its own log, ``<logs>/<job id>.svc<N>.jsonl`` in the job log's
format (worker/sandbox/services/logs.py). With the ``local`` transport the worker writes it into
the state dir the API reads; with ``http`` the worker delivers it with the job's files
(api/job_files.py) under the same name in the API's state dir. Either way the API finds it by
its name, made from the job id and the index (both checked), never from a path a record holds.
It is read with ``O_NOFOLLOW`` and only if it is a regular file.

Service logs are not streamed live (only the job's log is, through Redis): a ``local`` worker's
file grows while the job runs; an ``http`` worker's arrives when the job ends.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import AsyncIterator
from pathlib import Path
from typing import IO

from anyio import to_thread

from api.errors import NotFound
from api.job_files import log_name
from pipelines.store.models import Job

READ_BYTES = 1 << 20  # lines read at a time, off the event loop


def open_service_log(job: Job, index: int, state_dir: Path) -> IO[str]:
    """Service ``index``'s log of ``job``, open for reading; 404 when there is none here."""
    name = log_name(job.id, index)  # a bad index is a 400 before any file is looked at
    services = (job.result or {}).get("services")
    listed = isinstance(services, list) and index < len(services)
    try:
        fd = os.open(state_dir / "logs" / name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        fd = -1
    if fd >= 0 and not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        fd = -1
    if fd < 0:
        why = ("its log is not kept here" if listed else
               "no such service (a job's services are listed in its result once it ends)")
        raise NotFound(f"job {job.id} has no log of service {index}: {why}")
    os.set_blocking(fd, True)
    return os.fdopen(fd, "r", encoding="utf-8", errors="replace")


async def service_log_text(handle: IO[str]) -> AsyncIterator[bytes]:
    """The log's output as text, as ``GET /api/v1/jobs/{id}/log`` gives a finished job's."""
    try:
        while True:
            lines = await to_thread.run_sync(handle.readlines, READ_BYTES)
            if not lines:
                return
            text = "".join(_output(line) for line in lines)
            if text:
                yield text.encode("utf-8", "replace")
    finally:
        await to_thread.run_sync(handle.close)


def _output(line: str) -> str:
    """One log line's output; nothing for a line that is not a log entry.

    >>> _output('{"t": 0.5, "s": "out", "d": "ready\\\\n"}'), _output("garbage")
    ('ready\\n', '')
    """
    try:
        entry = json.loads(line)
        return str(entry.get("d", "")) if isinstance(entry, dict) else ""
    except ValueError:
        return ""
