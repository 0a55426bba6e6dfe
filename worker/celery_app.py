"""The Celery app: JSON only, late acks, reject on worker loss, prefetch 1, one queue.

``celery -A worker.celery_app worker -P threads`` and ``sandpit worker`` start the same thing.
Nothing connects on import: the app is configured from the environment when Celery first reads
its configuration (at the entry point), and the worker's context (engine, database, Redis,
sweeper) is built when the worker starts.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from celery import Celery, signals

from pipelines.names import QUEUE

app = Celery("sandpit", include=["worker.tasks"])


def celery_config(env: Mapping[str, str]) -> dict[str, Any]:
    """The Celery settings for a broker URL from ``SANDPIT_REDIS_URL`` (pure)."""
    broker = env.get("SANDPIT_REDIS_URL", "redis://127.0.0.1:6379/0")
    return {
        "broker_url": broker,
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
app.add_defaults(lambda: celery_config(os.environ))


@signals.worker_init.connect
def _start_worker_context(sender: Any = None, **_kw: Any) -> None:
    from worker.service import start_service_context

    try:
        start_service_context(os.environ, concurrency=getattr(sender, "concurrency", None))
    except Exception as exc:  # no database, no state dir, bad settings: nothing can run here
        # Celery's signal dispatch logs and swallows an Exception from a receiver, and the worker would
        # then consume jobs it cannot run; SystemExit gets through, so the process ends non-zero
        raise SystemExit(f"sandpit: the worker cannot start: {exc}") from exc


@signals.worker_shutdown.connect
def _stop_worker_context(sender: Any = None, **_kw: Any) -> None:
    from worker.service import stop_service_context

    stop_service_context()
