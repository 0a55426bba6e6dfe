"""The seam between the API and the broker: announce queued job ids (adapter).

The API never imports the worker. It sends the task ``TASK_RUN_JOB`` by name on ``QUEUE`` with
the job id as the only argument, JSON-serialised, and only after the transaction that queued the
job has committed (the worker re-reads the job and claims it with a compare-and-set, so a
duplicate is harmless and a lost message is re-sent by the outbox sweeper).

During a broker outage every request fails to publish the same way: :class:`PublishFailed` is one
line (the broker's error, its first line) with a count of the failures in a row and in all, so
the caller logs one line per failure instead of a chain of kombu and redis-py tracebacks, and
the first success after an outage is logged once.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import Protocol

from celery import Celery

from pipelines.names import QUEUE, TASK_RUN_JOB

log = logging.getLogger("sandpit.api")


class PublishFailed(Exception):
    """The broker did not take a message; the outbox keeps the job for the sweeper.
    ``in_a_row``/``total``: this publisher's failures since its last success / since it started."""

    def __init__(self, message: str, *, in_a_row: int = 1, total: int = 1) -> None:
        super().__init__(message)
        self.in_a_row = in_a_row
        self.total = total

    def __str__(self) -> str:
        return f"{self.args[0]}; failure {self.in_a_row} in a row, {self.total} in all"


def one_line(exc: BaseException) -> str:
    """``Type: first line of the message`` (broker errors can span lines).

    >>> one_line(ConnectionError("Error 111 connecting to 127.0.0.1:1.\\nConnection refused."))
    'ConnectionError: Error 111 connecting to 127.0.0.1:1.'
    """
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


class FailureCount:
    """Failures in a row and in all, shared by the threads that publish (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.in_a_row = 0
        self.total = 0

    def failed(self) -> tuple[int, int]:
        with self._lock:
            self.in_a_row += 1
            self.total += 1
            return self.in_a_row, self.total

    def succeeded(self) -> int:
        """Resets the run of failures; returns how long it was."""
        with self._lock:
            ended, self.in_a_row = self.in_a_row, 0
            return ended


class Publisher(Protocol):
    def publish(self, job_ids: Sequence[str]) -> None:
        """Announce each job id; raise :class:`PublishFailed` if the broker refused one."""

    def close(self) -> None: ...


class NoResult:
    """What ``send_task`` hands back instead of an ``AsyncResult``: sandpit never reads a task's
    result (the database owns the job), and an ``AsyncResult`` looks up the app's result backend,
    which Celery keeps per thread and builds from the package entry points on each new thread
    (3.5 % of the API's CPU under load, py-spy, bench/bench_service.py --profile)."""

    __slots__ = ("id", "ignored")

    def __init__(self, task_id: str) -> None:
        self.id = task_id
        self.ignored = True


class CeleryPublisher:
    """Publishes through a Celery app configured only as a producer (it runs no tasks)."""

    def __init__(self, broker_url: str) -> None:
        self._app = Celery("sandpit-api", broker=broker_url, set_as_current=False)
        self.failures = FailureCount()
        self._app.conf.update(
            task_serializer="json",
            accept_content=["json"],
            broker_connection_retry_on_startup=False,
            broker_transport_options={"max_retries": 1},
        )

    def publish(self, job_ids: Sequence[str]) -> None:
        for job_id in job_ids:
            try:
                self._app.send_task(TASK_RUN_JOB, args=[job_id], queue=QUEUE, serializer="json",
                                    ignore_result=True, result_cls=NoResult)
            except Exception as exc:  # kombu/redis raise many kinds; all mean "not sent"
                in_a_row, total = self.failures.failed()
                raise PublishFailed(f"could not publish job {job_id}: {one_line(exc)}", in_a_row=in_a_row,
                                    total=total) from None
        if job_ids and (ended := self.failures.succeeded()):
            log.warning("the broker takes messages again after %d failed publish(es)", ended)

    def close(self) -> None:
        self._app.close()
