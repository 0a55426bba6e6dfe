"""The seam between the API and the broker: announce queued job ids (adapter).

The API never imports the worker. It sends the task ``TASK_RUN_JOB`` by name on ``QUEUE`` with
the job id as the only argument, JSON-serialised, and only after the transaction that queued the
job has committed (the worker re-reads the job and claims it with a compare-and-set, so a
duplicate is harmless and a lost message is re-sent by the outbox sweeper).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from celery import Celery

from pipelines.names import QUEUE, TASK_RUN_JOB


class PublishFailed(Exception):
    """The broker did not take a message; the outbox keeps the job for the sweeper."""


class Publisher(Protocol):
    def publish(self, job_ids: Sequence[str]) -> None:
        """Announce each job id; raise :class:`PublishFailed` if the broker refused one."""

    def close(self) -> None: ...


class CeleryPublisher:
    """Publishes through a Celery app configured only as a producer (it runs no tasks)."""

    def __init__(self, broker_url: str) -> None:
        self._app = Celery("sandpit-api", broker=broker_url, set_as_current=False)
        self._app.conf.update(
            task_serializer="json",
            accept_content=["json"],
            broker_connection_retry_on_startup=False,
            broker_transport_options={"max_retries": 1},
        )

    def publish(self, job_ids: Sequence[str]) -> None:
        for job_id in job_ids:
            try:
                self._app.send_task(TASK_RUN_JOB, args=[job_id], queue=QUEUE, serializer="json")
            except Exception as exc:  # kombu/redis raise many kinds; all mean "not sent"
                raise PublishFailed(f"could not publish job {job_id}: {exc}") from exc

    def close(self) -> None:
        self._app.close()
