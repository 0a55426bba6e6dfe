"""The Celery app: JSON only, late acks, reject on worker loss, prefetch 1, one queue.

``celery -A worker.service.celery_app worker -P threads`` and ``sandpit worker`` start the same thing.
Nothing connects on import: the app is configured from the environment when Celery first reads
its configuration (at the entry point), and the worker's context (engine, database, Redis,
sweeper) is built when the worker starts (``worker_init``) and kept on the app object
(:attr:`SandpitCelery.service`), where a bound task reaches it as ``self.app.service``.
"""

from __future__ import annotations

import os
from typing import Any

from celery import Celery, signals

from pipelines.names import QUEUE, TASK_RUN_JOB
from worker.service.context import ServiceContext, start_service, stop_service
from worker.settings import Settings


class SandpitCelery(Celery):
    """The Celery app with the worker's service context on it (None outside a started worker)."""

    service: ServiceContext | None = None
    _settings: Settings | None = None

    def settings(self) -> Settings:
        """The process's one Settings, built from the environment the first time it is asked for
        (when Celery reads its configuration at the entry point) and kept on the app."""
        if self._settings is None:
            self._settings = Settings.from_env(os.environ)
            if self._settings.trace_file is not None:
                from pipelines import trace

                trace.configure(self._settings.trace_file)
        return self._settings

    def publish_job(self, job_id: str) -> None:
        """The job publisher handed to the service: one message, the job id and nothing else."""
        # no AsyncResult: it would look up the result backend (see api/publish.py ``NoResult``)
        self.send_task(TASK_RUN_JOB, args=[job_id], queue=QUEUE, ignore_result=True, result_cls=_NoResult)


class _NoResult:
    __slots__ = ("id", "ignored")

    def __init__(self, task_id: str) -> None:
        self.id, self.ignored = task_id, True


app = SandpitCelery("sandpit", include=["worker.service.tasks"])


def celery_config(settings: Settings) -> dict[str, Any]:
    """The Celery settings for the broker ``settings.redis_url`` (pure)."""
    return {
        "broker_url": settings.redis_url,
        "task_serializer": "json",
        "accept_content": ["json"],  # pickle is refused
        "result_serializer": "json",
        "task_ignore_result": True,
        "result_backend": None,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "task_default_queue": QUEUE,
        "task_create_missing_queues": True,
        "broker_connection_retry_on_startup": True,
        "broker_connection_max_retries": None,  # keep trying through a Redis restart
        "worker_hijack_root_logger": False,
        "worker_send_task_events": False,
        "broker_transport_options": {"visibility_timeout": 3600},
    }


# evaluated lazily, when Celery first reads its configuration (so at the entry point, not on import)
app.add_defaults(lambda: celery_config(app.settings()))


@signals.worker_init.connect
def _start_worker_context(sender: Any = None, **_kw: Any) -> None:
    owner = getattr(sender, "app", None) or app
    try:
        concurrency = getattr(sender, "concurrency", None)
        owner.service = start_service(owner.settings(), owner.publish_job, concurrency=concurrency)
    except Exception as exc:  # no database, no state dir, bad settings: nothing can run here
        # Celery's signal dispatch logs and swallows an Exception from a receiver, and the worker would
        # then consume jobs it cannot run; SystemExit gets through, so the process ends non-zero
        raise SystemExit(f"sandpit: the worker cannot start: {exc}") from exc


@signals.worker_ready.connect
def _settle_heap(**_kw: Any) -> None:
    from pipelines.heap import settle

    settle()  # the consumer is up: every module and table is loaded


@signals.worker_shutdown.connect
def _stop_worker_context(sender: Any = None, **_kw: Any) -> None:
    owner = getattr(sender, "app", None) or app
    if owner.service is not None:
        stop_service(owner.service)
        owner.service = None
