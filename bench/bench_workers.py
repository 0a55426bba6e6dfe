"""Workers on many hosts, on one machine: throughput by worker count, and what the upload path costs.

    (a) throughput: N one-job runs (each keeps a 1 KiB artifact), queued first, through 1, 2 and 4
        worker processes (2 jobs at once each) that share one Redis and one PostgreSQL, each with
        a state dir of its own and SANDPIT_ARTIFACT_TRANSPORT=http (as separate hosts would be),
        an API host of its own; and the PostgreSQL connections and Redis clients they hold
    (b) the upload path per job, in-process against a live API on PostgreSQL: the claim with the
        job token minted in its transaction, then the delivery of a 1 KiB artifact and a small
        log (two PUTs), against the shared-disk path (the claim alone, nothing delivered)

Starts its own redis-server, PostgreSQL, API and workers (loopback only), stops them by pid.
Usage (root): .venv/bin/python bench/bench_workers.py [--jobs 60] [--workers 1,2,4] [--deliveries 300]
Goal: (b) the upload path costs <= 2 ms per job for small artifacts.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import sqlalchemy as sa  # noqa: E402

from pipelines.job_record import JobRecord, Status, StoredArtifact  # noqa: E402
from pipelines.language.model import Plan  # noqa: E402
from pipelines.language.planner import plan  # noqa: E402
from pipelines.store.db import make_engine, migrate, session_scope  # noqa: E402
from pipelines.store.reads import queued_job_ids  # noqa: E402
from pipelines.store.transitions import claim_job, create_run  # noqa: E402
from tests.integration.deploy.conftest import Deployment, _clean_host  # noqa: E402
from tests.integration.postgres import postgres_server  # noqa: E402
from tests.integration.redis_server import redis_server  # noqa: E402
from worker.job_files import LocalTransport  # noqa: E402
from worker.remote_files import HttpTransport  # noqa: E402
from worker.sandbox import blobs  # noqa: E402

ONE_JOB = ('job:\n  image: debian\n  script: ["mkdir -p out", "head -c 1024 /dev/urandom > out/a.bin"]\n'
           '  artifacts: {paths: [out]}\n')


def p90(values: list[float]) -> float:
    return sorted(values)[int(0.9 * (len(values) - 1))]


def fresh_database(server: object, name: str) -> str:
    admin = sa.create_engine(server.url(), isolation_level="AUTOCOMMIT")  # type: ignore[attr-defined]
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
            conn.exec_driver_sql(f"CREATE DATABASE {name}")
    finally:
        admin.dispose()
    url = str(server.url(name))  # type: ignore[attr-defined]
    migrate(url)
    return url


def connections(url: str, redis_url: str) -> tuple[int, int]:
    """(PostgreSQL connections to the database, Redis clients) right now, the bench's own excluded."""
    import redis as redis_lib

    engine = sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1), poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            pg = int(conn.exec_driver_sql("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                                          "AND pid <> pg_backend_pid()").scalar_one())
    finally:
        engine.dispose()
    client = redis_lib.Redis.from_url(redis_url)
    try:
        clients = len(client.client_list()) - 1
    finally:
        client.close()
    return pg, clients


def throughput(server: object, tmp: Path, workers: int, jobs: int) -> tuple[float, tuple[int, int]]:
    """jobs/s of ``workers`` worker processes, from the first job's start to the last one's end (the
    runs are queued before the workers start, so the API's submissions are not what is measured),
    and the (PostgreSQL, Redis) connections the deployment holds while they run (the API's included)."""
    url = fresh_database(server, f"bench_workers_{workers}")
    root = tmp / f"w{workers}"
    root.mkdir(mode=0o711)
    (root / "redis").mkdir()
    with redis_server(root / "redis") as redis:
        deploy = Deployment(root, url, redis)
        try:
            deploy.start_api()
            hosts = [deploy.host(f"worker{i}") for i in range(workers)]

            def start_workers() -> None:
                for host in hosts:
                    deploy.http_worker(host, concurrency=2, SANDPIT_LEASE_S="20", SANDPIT_HEARTBEAT_S="10")

            # a first round pays each host's start-up (its scratch filesystem, its runtime checks)
            start_workers()
            warm = [deploy.submit(ONE_JOB)["id"] for _ in range(2 * workers)]
            for run_id in warm:
                deploy.wait(run_id, timeout=600)
            for host in hosts:
                host.stop()
            runs = [deploy.submit(ONE_JOB)["id"] for _ in range(jobs)]
            start_workers()
            ended = [deploy.wait(run_id, timeout=600) for run_id in runs]
            assert all(run["status"] == "succeeded" for run in ended), ended
            held = connections(url, redis.url)
            times = [(dt.datetime.fromisoformat(j["started_at"]), dt.datetime.fromisoformat(j["finished_at"]))
                     for run in ended for j in run["jobs"]]
            span = (max(end for _s, end in times) - min(start for start, _e in times)).total_seconds()
            return jobs / span, held
        finally:
            for host in reversed(deploy.hosts):
                host.stop()
            for host in deploy.hosts:
                _clean_host(host)


def upload_path(server: object, tmp: Path, deliveries: int) -> tuple[list[float], list[float]]:
    """Per-job milliseconds: (shared disk: the claim), (http: the claim with its token + delivery)."""
    url = fresh_database(server, "bench_upload")
    root = tmp / "upload"
    root.mkdir(mode=0o711)
    (root / "redis").mkdir()
    planned = plan({".gitlab-ci.yml": 'job:\n  script: ["true"]\n'})
    assert isinstance(planned, Plan)
    with redis_server(root / "redis") as redis:
        deploy = Deployment(root, url, redis)
        api = deploy.start_api()
        engine = make_engine(url)
        store = root / "worker-store"
        transport = HttpTransport(deploy.api_url, store, outbox_dir=root / "outbox")
        local = LocalTransport()
        timings: dict[str, list[float]] = {"local": [], "http": []}
        try:
            for i in range(2 * deliveries + 20):
                kind = "http" if i % 2 else "local"
                with session_scope(engine) as s:
                    run_id = create_run(s, planned, trust="trusted", source="api", variables={},  # type: ignore[arg-type]
                                        now=dt.datetime.now(dt.UTC), pipeline="").run.id
                with session_scope(engine) as s:
                    job_id = queued_job_ids(s, run_id)[0]
                data = os.urandom(1024)
                sha = blobs.store_bytes(store, data)
                log = root / f"{job_id}.jsonl"
                log.write_text('{"t": 1.0, "s": "out", "d": "hello\\n"}\n')
                record = JobRecord(name="job", status=Status.SUCCEEDED, reason=None, exit_code=0, job_id=job_id,
                                   artifacts=(StoredArtifact("out/a.bin", 1024, sha),), log_path=str(log))
                started = time.perf_counter()
                with session_scope(engine) as s:
                    job = claim_job(s, job_id, "bench-worker", dt.datetime.now(dt.UTC), 30)
                    assert job is not None
                    files = (transport if kind == "http" else local).claimed(s, job, "bench-worker",
                                                                              dt.datetime.now(dt.UTC))
                delivered = files.deliver(record, (), lambda: False)
                took = (time.perf_counter() - started) * 1000
                assert delivered is not None
                if kind == "http":
                    assert hashlib.sha256((api.state / "artifacts" / sha[:2] / sha).read_bytes()).hexdigest() == sha
                if i >= 20:  # the first ones warm the connections and the API's caches
                    timings[kind].append(took)
        finally:
            transport.close()
            engine.dispose()
            for host in deploy.hosts:
                host.stop()
            for host in deploy.hosts:
                _clean_host(host)
    return timings["local"], timings["http"]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=60)
    ap.add_argument("--workers", default="1,2,4")
    ap.add_argument("--deliveries", type=int, default=300)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="sandpit-bench-workers-", dir="/var/tmp"))
    tmp.chmod(0o711)  # a job's root passes through to its job dir (tests/integration/deploy/conftest.py)
    try:
        run_all(tmp, args)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


def run_all(tmp: Path, args: argparse.Namespace) -> None:
    with postgres_server() as server:
        local, http = upload_path(server, tmp, args.deliveries)
        extra = statistics.median(http) - statistics.median(local)
        print(f"(b) per job, median (p90): shared disk {statistics.median(local):.2f} ms ({p90(local):.2f}), "
              f"http {statistics.median(http):.2f} ms ({p90(http):.2f}); the upload path adds {extra:.2f} ms "
              f"(goal <= 2 ms: {'met' if extra <= 2 else 'NOT met'})", flush=True)
        for workers in (int(n) for n in args.workers.split(",")):
            rate, (pg, clients) = throughput(server, tmp, workers, args.jobs)
            print(f"(a) {workers} worker process(es) x 2 jobs at once, {args.jobs} one-job runs: {rate:.1f} jobs/s; "
                  f"{pg} PostgreSQL connections and {clients} Redis clients held (the API's included)", flush=True)


if __name__ == "__main__":
    sys.exit(main())
