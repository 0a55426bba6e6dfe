"""Benchmark of the run store: plan, create and advance runs of 10, 1,000 and 5,000 jobs.

    .venv/bin/python bench/bench_store.py [--sizes 10,1000,5000] [--postgres]

Per size, on a fresh SQLite database (and a throwaway PostgreSQL server with ``--postgres``,
root only, as tests/integration/postgres.py starts one): the median of planning the pipeline,
of creating a run from the plan (``create_run`` in its own transaction, committed), and of one
transition (``claim_job``, then ``finish_job`` of a job whose success queues nothing or
little), over many repetitions (time.perf_counter). Goals: creating a 1,000-job run in at
most 150 ms; one transition costing the same whatever the run's size. "CPU" is this process's
time.process_time over the same creation (the API's work without the time it waited for a core:
on a busy machine the wall-clock median is mostly waiting).

The pipeline of size N: N/10 ``build-i`` jobs, N/100 ``deploy-i`` jobs that follow stage
order (each depends on every earlier job), and the rest ``test-i`` jobs that ``needs`` one
build job each: both ways of ordering a GitLab pipeline, at scale.

To compare two versions, run this file from each checkout in turn on the same machine (the
figures move with its load: compare runs made side by side, not numbers from different days).
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from sqlalchemy.engine import Engine  # noqa: E402

from pipelines.language.model import Plan  # noqa: E402
from pipelines.language.planner import plan  # noqa: E402
from pipelines.store.db import make_engine, migrate, session_scope  # noqa: E402
from pipelines.store.reads import queued_job_ids  # noqa: E402
from pipelines.store.transitions import claim_job, create_run, finish_job  # noqa: E402

CREATE_GOAL_MS = 150.0
T0 = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
RECORD: dict[str, object] = {"status": "succeeded", "reason": None, "exit_code": 0, "signal": None, "duration_s": 0.1,
          "usage": {}, "artifacts": []}


def pipeline(size: int) -> str:
    """A pipeline of exactly ``size`` jobs (see the module docstring)."""
    builds = max(1, size // 10)
    deploys = max(1, size // 100)
    tests = size - builds - deploys
    lines = ["stages: [build, test, deploy]"]
    lines += [f"build-{i}: {{stage: build, script: [make]}}" for i in range(builds)]
    lines += [f"test-{i}: {{stage: test, script: [pytest], needs: [build-{i % builds}]}}" for i in range(tests)]
    lines += [f"deploy-{i}: {{stage: deploy, script: [ship]}}" for i in range(deploys)]
    return "\n".join(lines) + "\n"


def median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1000


def timed(action: Callable[[], object]) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def create(engine: Engine, planned: Plan, text: str) -> str:
    with session_scope(engine) as session:
        stored = create_run(session, planned, trust="trusted", source="api", variables={}, now=T0, pipeline=text,
                           mark_sent=True)
    return stored.run.id


def transitions(engine: Engine, run_id: str, count: int, skip: int) -> tuple[list[float], list[float]]:
    """Claim and finish ``skip`` + ``count`` jobs of the run (the builds first, then the tests
    they queued), timing the last ``count``: tests, whose success queues nothing, so every
    size times the same transition."""
    claims: list[float] = []
    finishes: list[float] = []
    done = -skip
    now = T0
    while done < count:
        with session_scope(engine) as session:
            ready = queued_job_ids(session, run_id)
        if not ready:
            break
        for job_id in ready[: count - done]:
            now += dt.timedelta(seconds=1)
            with session_scope(engine) as session:
                start = time.perf_counter()
                job = claim_job(session, job_id, "bench", now, lease_s=30)
            claims.append(time.perf_counter() - start)
            assert job is not None
            with session_scope(engine) as session:
                start = time.perf_counter()
                finish_job(session, job_id, job.attempt, RECORD, now)
            finishes.append(time.perf_counter() - start)
            done += 1
            if done <= 0:
                claims.clear()
                finishes.clear()
    return claims, finishes


def bench_size(url: str, size: int, creates: int, steps: int) -> dict[str, float]:
    text = pipeline(size)
    planned = plan({".gitlab-ci.yml": text})
    assert isinstance(planned, Plan) and len(planned.jobs) == size, planned
    plan_s = [timed(lambda: plan({".gitlab-ci.yml": text})) for _ in range(max(3, creates // 2))]
    migrate(url)
    engine = make_engine(url)
    try:
        create(engine, planned, text)  # warm caches
        run_ids: list[str] = []
        create_s = []
        create_cpu = []
        for _ in range(creates):
            start, cpu = time.perf_counter(), time.process_time()
            run_ids.append(create(engine, planned, text))
            create_s.append(time.perf_counter() - start)
            create_cpu.append(time.process_time() - cpu)
        claims, finishes = transitions(engine, run_ids[-1], steps, skip=max(1, size // 10))
    finally:
        engine.dispose()
    return {"plan": median_ms(plan_s), "create": median_ms(create_s), "create_cpu": median_ms(create_cpu),
            "claim": median_ms(claims),
            "finish": median_ms(finishes), "transitions": len(finishes)}


@contextmanager
def sqlite_url(size: int) -> Iterator[str]:
    with tempfile.TemporaryDirectory(prefix="sandpit-bench-store-") as tmp:
        yield f"sqlite:///{tmp}/store-{size}.db"


@contextmanager
def postgres_url(size: int) -> Iterator[str]:
    from tests.integration.postgres import missing_requirement, postgres_server

    missing = missing_requirement()
    if missing:
        raise SystemExit(f"--postgres: {missing}")
    with postgres_server() as server:
        yield server.url()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="10,1000,5000")
    parser.add_argument("--steps", type=int, default=60, help="transitions measured per size")
    parser.add_argument("--postgres", action="store_true")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    backends: list[tuple[str, Callable[[int], object]]] = [("sqlite", sqlite_url)]
    if args.postgres:
        backends.append(("postgresql", postgres_url))
    print(f"Medians (time.perf_counter), Python {sys.version.split()[0]}\n")
    print("| database | jobs | plan | create run | create run (CPU) | claim | finish + advance | transitions |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    met = True
    for name, url_for in backends:
        for size in sizes:
            creates = 20 if size <= 1000 else 5
            with url_for(size) as url:  # type: ignore[attr-defined]
                got = bench_size(url, size, creates, args.steps)
            if size == 1000:
                met &= got["create"] <= CREATE_GOAL_MS
            print(f"| {name} | {size:,} | {got['plan']:.1f} ms | {got['create']:.1f} ms | {got['create_cpu']:.1f} ms "
                  f"| {got['claim']:.2f} ms "
                  f"| {got['finish']:.2f} ms | {got['transitions']:.0f} |", flush=True)
    print(f"\nGoal: create a 1,000-job run <= {CREATE_GOAL_MS:.0f} ms: {'met' if met else 'MISSED'}")
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
