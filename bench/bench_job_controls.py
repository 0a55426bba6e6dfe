"""Benchmark of retrying one failed job whose failure skipped N jobs, on SQLite.

    .venv/bin/python bench/bench_job_controls.py [--sizes 10,1000] [--repeat 5]

Per size and per way of depending (every skipped job follows stage order, or each ``needs`` the
failed one): a fresh database, a run whose ``build`` failed and skipped N jobs, then the median
over ``--repeat`` runs (time.perf_counter, committed) of ``retry_job`` (the job queued again, the
N jobs made to wait again through the frontier) and of the new attempt's success (the N queued).
A retry reads and writes what it resets, so its cost grows with N; goal: 1,000 resets under 0.5 s.

Measured on the two-core machine shared with other work (median of 5): 10 skipped jobs 15 ms to
retry, 5 ms for the success that queues them; 1,000 skipped jobs 324-335 ms to retry, 92-97 ms
for the success. Of a 1,000-job retry, a SQLModel object per reset job cost 0.25 s more before
the reset jobs became attribute bags; what is left is one frontier push per reset job and the
write of its row.
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from pipelines.language.model import Plan  # noqa: E402
from pipelines.language.planner import plan  # noqa: E402
from pipelines.store.db import make_engine, migrate, session_scope  # noqa: E402
from pipelines.store.transitions import claim_job, create_run, finish_job, retry_job  # noqa: E402

FAILED = {"status": "failed", "reason": "exit_code", "exit_code": 1}
PASSED = {"status": "succeeded", "reason": None, "exit_code": 0}


def _pipeline(size: int, needs: bool) -> Plan:
    text = "stages: [a, b]\nbuild: {stage: a, script: [x]}\n" + "".join(
        f"t{i}: {{stage: b, script: [y]{', needs: [build]' if needs else ''}}}\n" for i in range(size))
    planned = plan({".gitlab-ci.yml": text})
    assert isinstance(planned, Plan), planned
    return planned


def once(size: int, needs: bool) -> tuple[float, float]:
    """(retry, the new attempt's success) in seconds, on a database of its own."""
    with tempfile.TemporaryDirectory() as folder:
        url = f"sqlite:///{folder}/db.sqlite"
        migrate(url)
        engine = make_engine(url)
        now = dt.datetime.now(dt.UTC)
        with session_scope(engine) as session:
            build = create_run(session, _pipeline(size, needs), trust="trusted", source="api", variables={},
                               now=now).jobs[0].id
        with session_scope(engine) as session:
            claim_job(session, build, "bench", now, 30)
        with session_scope(engine) as session:
            finish_job(session, build, 1, FAILED, now)
        started = time.perf_counter()
        with session_scope(engine) as session:
            reset = retry_job(session, build, now).reset
        retried = time.perf_counter() - started
        assert len(reset) == size
        with session_scope(engine) as session:
            claim_job(session, build, "bench", now, 30)
        started = time.perf_counter()
        with session_scope(engine) as session:
            queued = finish_job(session, build, 2, PASSED, now)
        passed = time.perf_counter() - started
        assert len(queued) == size
        engine.dispose()
    return retried, passed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="10,1000")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    print(f"{'skipped jobs':>12}  {'depending by':<12}  {'retry (median)':>14}  {'its success':>12}")
    for size in (int(s) for s in args.sizes.split(",")):
        for needs in (False, True):
            runs = [once(size, needs) for _ in range(args.repeat)]
            retry_ms = statistics.median(r for r, _ in runs) * 1000
            pass_ms = statistics.median(p for _, p in runs) * 1000
            print(f"{size:>12}  {'needs' if needs else 'stage order':<12}  {retry_ms:>11.1f} ms  {pass_ms:>9.1f} ms")


if __name__ == "__main__":
    main()
