"""A long-running process's start-up objects kept out of the garbage collector's full passes.

CPython's cyclic collector walks every tracked object of the oldest generation on each full
pass. After start-up that is ≈ 140,000 objects in a worker and ≈ 200,000 in the API (modules,
classes, SQLAlchemy's and Celery's tables, FastAPI's routes), none of which ever becomes garbage,
and a full pass held the GIL for up to 70 ms, stalling every request or job thread for that long
(measured with ``gc.callbacks`` under ``bench/bench_service.py``). :func:`settle` collects once and
then moves what is left into the permanent generation (:func:`gc.freeze`), so later full passes
walk only what the process made since. Objects made later are collected as before. What is
given up: an object alive at that moment that later becomes part of an unreachable cycle (a
connection replaced after a broker restart, say) is not freed; that happens a few times in a
process's life, not per job or request.

Only for a process that serves one app or one worker for its whole life (the API's server, a Celery
worker): a process that builds and drops apps again and again (a test run) would keep each one.
"""

from __future__ import annotations

import gc


def settle() -> None:
    """Collect what start-up left, then exclude the survivors from later collections."""
    gc.collect()
    gc.freeze()
