"""The worker service: the Celery app (``celery_app.py``) and its one task (``tasks.py``), the
context a worker process owns (``context.py``: engine, database, Redis, sweeper, the job publisher,
the admission budget), its presence and heartbeat (``presence.py``), the runs' checked-out commits
(``run_sources.py``), and the supervision of ``sandpit up``'s child processes (``children.py``).
Nothing here is imported by local mode or the engine."""
