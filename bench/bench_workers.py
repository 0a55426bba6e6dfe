"""Workers on many hosts, on one machine: throughput by worker count, and what the upload path costs.

    (a) throughput: N one-job runs (each keeps a 1 KiB artifact), queued first, through 1, 2 and 4
        worker processes (2 jobs at once each) that share one Redis and one PostgreSQL, each with
        a state dir of its own and SANDPIT_ARTIFACT_TRANSPORT=http (as separate hosts would be),
        an API host of its own; the PostgreSQL connections and Redis clients they hold, and per
        job: PostgreSQL transactions (committed and rolled back, every client's) and Redis commands,
        less what the same workers' background loops (heartbeat, sweeps) cost while idle for as
        long, and the bytes the API keeps (what the uploads carried)
    (b) the upload path per job, in-process against a live API on PostgreSQL: the claim with the
        job token minted in its transaction (``http``: a row token) or signed without a statement
        (``signed``: SANDPIT_JOB_TOKEN_KEY_FILE, the API given the same key), then the delivery
        of a 1 KiB artifact and a small log (one bundle PUT), against the shared-disk path (the
        claim alone, nothing delivered), the kinds interleaved so that the machine's load falls on
        all alike; with the mint and the request timed apart (the API's CPU is shared out over
        the two token kinds it serves). ``--pure-python-api`` runs the API without httptools and uvloop
        (uvicorn falls back to h11 and asyncio), to see what the C parser and loop give.
        ``--baseline-tree DIR`` starts a second API from DIR (another commit's tree, e.g. ``git
        archive <commit> | tar -x -C DIR``) on the same database and delivers to it in turns with
        the others, with this tree's worker side: a change to the API's side measured before and
        after in one run, under the same load.

Starts its own redis-server, PostgreSQL, API and workers (loopback only), stops them by pid.
Usage (root): .venv/bin/python bench/bench_workers.py [--parts a,b] [--jobs 60] [--workers 1,2,4]
              [--deliveries 300] [--pure-python-api] [--baseline-tree DIR]
Goal: (b) the upload path costs <= 2 ms per job for small artifacts.
"""

from __future__ import annotations

import argparse
import collections
import datetime as dt
import hashlib
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import httpx  # noqa: E402
import sqlalchemy as sa  # noqa: E402

from pipelines.job_record import JobRecord, Status, StoredArtifact  # noqa: E402
from pipelines.language.model import Plan  # noqa: E402
from pipelines.language.planner import plan  # noqa: E402
from pipelines.store.advance import FINAL_JOB_STATUSES  # noqa: E402
from pipelines.store.db import make_engine, migrate, session_scope  # noqa: E402
from pipelines.store.job_tokens import read_token_keys  # noqa: E402
from pipelines.store.reads import queued_job_ids  # noqa: E402
from pipelines.store.transitions import claim_job, create_run  # noqa: E402
from tests.integration.deploy.conftest import TOKENS, Deployment, _clean_host  # noqa: E402
from tests.integration.postgres import postgres_server  # noqa: E402
from tests.integration.redis_server import free_port, redis_server  # noqa: E402
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


@dataclass
class Counters:
    """Totals read from the shared services at one moment."""

    pg_connections: int
    redis_clients: int
    pg_transactions: int
    redis_commands: int


def counters(url: str, redis_url: str) -> Counters:
    """The shared services' counts now (the bench's own connection excluded from the held ones).
    PostgreSQL's transaction counts are flushed by each backend about once a second: read them
    a little after the work being counted."""
    import redis as redis_lib

    engine = sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1), poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            pg = int(conn.exec_driver_sql("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                                          "AND pid <> pg_backend_pid()").scalar_one())
            xacts = int(conn.exec_driver_sql("SELECT xact_commit + xact_rollback FROM pg_stat_database "
                                             "WHERE datname = current_database()").scalar_one())
    finally:
        engine.dispose()
    client = redis_lib.Redis.from_url(redis_url)
    try:
        clients = len(list(client.client_list())) - 1  # type: ignore[arg-type]  # a sync client
        commands = int(client.info("stats")["total_commands_processed"])  # type: ignore[index]
    finally:
        client.close()
    return Counters(pg, clients, xacts, commands)


def _unfinished(url: str) -> int:
    engine = sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1), poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            query = sa.text("SELECT count(*) FROM job WHERE status NOT IN :final").bindparams(
                sa.bindparam("final", expanding=True))
            return int(conn.execute(query, {"final": sorted(FINAL_JOB_STATUSES)}).scalar_one())
    finally:
        engine.dispose()


def _kept_bytes(state: Path) -> int:
    return sum(f.stat().st_size for d in ("artifacts", "logs") for f in (state / d).rglob("*") if f.is_file())


@dataclass
class Throughput:
    jobs_per_s: float
    held: Counters
    pg_transactions_per_job: float
    redis_commands_per_job: float
    kept_bytes_per_job: float


def throughput(server: object, tmp: Path, workers: int, jobs: int) -> Throughput:
    """jobs/s of ``workers`` worker processes, from the first job's start to the last one's end (the
    runs are queued before the workers start, so the API's submissions are not what is measured),
    the (PostgreSQL, Redis) connections the deployment holds while they run (the API's included),
    and what each job cost the shared services from the workers' start to the last result."""
    url = fresh_database(server, f"bench_workers_{workers}")
    root = tmp / f"w{workers}"
    root.mkdir(mode=0o711)
    (root / "redis").mkdir()
    with redis_server(root / "redis") as redis:
        deploy = Deployment(root, url, redis)
        try:
            api = deploy.start_api()
            hosts = [deploy.host(f"worker{i}") for i in range(workers)]

            def start_workers() -> None:
                for host in hosts:
                    # the service's defaults for the lease, the beat and the sweep (the tests' are faster)
                    deploy.http_worker(host, concurrency=2, SANDPIT_LEASE_S="20", SANDPIT_HEARTBEAT_S="10",
                                       SANDPIT_SWEEP_S="5")

            # a first round pays each host's start-up (its scratch filesystem, its runtime checks)
            start_workers()
            warm = [deploy.submit(ONE_JOB)["id"] for _ in range(2 * workers)]
            for run_id in warm:
                deploy.wait(run_id, timeout=600)
            for host in hosts:
                host.stop()
            runs = [deploy.submit(ONE_JOB)["id"] for _ in range(jobs)]
            time.sleep(1.5)  # the submissions' transactions flushed to the statistics
            kept_before = _kept_bytes(api.state)
            before = counters(url, redis.url)
            counted = time.monotonic()
            start_workers()
            # waited for in the database, twice a second (the API's run view would be polled per run,
            # and its reads would count as the jobs')
            while _unfinished(url) and time.monotonic() - counted < 600:
                time.sleep(0.5)
            held = counters(url, redis.url)
            time.sleep(1.5)
            after = counters(url, redis.url)
            busy_s = time.monotonic() - counted
            # the same workers idle for as long, to take their background loops' share out
            time.sleep(busy_s)
            idle = counters(url, redis.url)
            background = (idle.pg_transactions - after.pg_transactions, idle.redis_commands - after.redis_commands)
            ended = [deploy.run(run_id) for run_id in runs]
            assert all(run["status"] == "succeeded" for run in ended), ended
            times = [(dt.datetime.fromisoformat(j["started_at"]), dt.datetime.fromisoformat(j["finished_at"]))
                     for run in ended for j in run["jobs"]]
            span = (max(end for _s, end in times) - min(start for start, _e in times)).total_seconds()
            return Throughput(jobs / span, held,
                              (after.pg_transactions - before.pg_transactions - background[0]) / jobs,
                              (after.redis_commands - before.redis_commands - background[1]) / jobs,
                              (_kept_bytes(api.state) - kept_before) / jobs)
        finally:
            for host in reversed(deploy.hosts):
                host.stop()
            for host in deploy.hosts:
                _clean_host(host)


PURE_PYTHON = {"httptools": "raise ImportError('left out by bench_workers --pure-python-api')\n",
               "uvloop": "raise ImportError('left out by bench_workers --pure-python-api')\n"}


def warm_store(store: Path) -> None:
    """Give a fresh store the 256 fan-out directories a store in service has had since its first
    thousand-odd files: making one costs 0.5 ms on this ext4, 20 times a file's intake, and would
    be counted on the first deliveries as if every job paid it."""
    for i in range(256):
        (store / f"{i:02x}").mkdir(parents=True, exist_ok=True)


def _cpu_s(pid: int) -> float:
    """The user and system CPU seconds process ``pid`` has used, all its threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _start_baseline_api(deploy: Deployment, tree: Path,
                        extra_env: dict[str, str]) -> tuple[str, subprocess.Popen[bytes], Path]:
    """Another tree's API (``python -m api`` run from ``tree``, e.g. an older commit's ``git
    archive``) on a host of its own, on the same database and Redis: its URL, process and state."""
    host = deploy.host("api-baseline")
    port = free_port()
    with open(host.root / "proc-0.log", "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "api", "--host", "127.0.0.1", "--port", str(port),
                                 "--log-level", "warning"], env=host.env(SANDPIT_API_TOKENS=TOKENS, **extra_env),
                                stdout=out, stderr=subprocess.STDOUT, cwd=tree)
    host.procs.append(proc)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        assert proc.poll() is None, host.log()
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                return url, proc, host.state
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, host.log()
        time.sleep(0.1)


def upload_path(server: object, tmp: Path, deliveries: int, pure_python_api: bool = False,
                baseline: Path | None = None) -> dict[str, list[float]]:
    """Per-job milliseconds by kind: ``local`` (shared disk: the claim), ``http`` (the claim with
    its token, and the delivery), and, with ``baseline``, ``baseline`` (the same delivery to the
    API of another tree, this tree's worker side); of the http kinds ``mint <kind>`` (the
    token's INSERT in the claim's transaction) and ``request <kind>`` (the delivery: one bundle),
    ``cpu <kind>`` (the worker thread's) and ``api cpu <kind>`` (the API process's, per delivery)."""
    url = fresh_database(server, "bench_upload")
    root = tmp / "upload"
    root.mkdir(mode=0o711)
    (root / "redis").mkdir()
    extra_env = {}
    if pure_python_api:
        shadow = root / "pure-python"
        shadow.mkdir()
        for name, text in PURE_PYTHON.items():
            (shadow / f"{name}.py").write_text(text)
        extra_env["PYTHONPATH"] = str(shadow)
    planned = plan({".gitlab-ci.yml": 'job:\n  script: ["true"]\n'})
    assert isinstance(planned, Plan)
    with redis_server(root / "redis") as redis:
        deploy = Deployment(root, url, redis)
        key_file = root / "job-token-keys"
        key_file.write_text(secrets.token_urlsafe(48) + "\n")
        api = deploy.start_api(SANDPIT_JOB_TOKEN_KEY_FILE=str(key_file), **extra_env)
        warm_store(api.state / "artifacts")
        engine = make_engine(url)
        store = root / "worker-store"
        transports = {"http": HttpTransport(deploy.api_url, store, outbox_dir=root / "outbox"),
                      "signed": HttpTransport(deploy.api_url, store, outbox_dir=root / "outbox",
                                              token_keys=read_token_keys(key_file))}
        pids = {"http": deploy.api_proc.pid}  # type: ignore[union-attr]
        states = {"http": api.state, "signed": api.state}
        kinds = ["local", "http", "signed"]
        local = LocalTransport()
        timings: dict[str, list[float]] = collections.defaultdict(list)
        api_cpu: dict[str, float] = {}
        try:
            if baseline is not None:  # inside the try: an API that does not start stops the others too
                base_url, base_proc, states["baseline"] = _start_baseline_api(deploy, baseline, extra_env)
                warm_store(states["baseline"] / "artifacts")
                transports["baseline"] = HttpTransport(base_url, store, outbox_dir=root / "outbox-baseline")
                pids["baseline"] = base_proc.pid
                kinds.append("baseline")
            for i in range(len(kinds) * (deliveries + 10)):
                if i == len(kinds) * 10:
                    api_cpu = {kind: _cpu_s(pid) for kind, pid in pids.items()}
                kind = kinds[i % len(kinds)]
                with session_scope(engine) as s:
                    run_id = create_run(s, planned, trust="trusted", source="api", variables={},
                                        now=dt.datetime.now(dt.UTC), pipeline="").run.id
                with session_scope(engine) as s:
                    job_id = queued_job_ids(s, run_id)[0]
                data = os.urandom(1024)
                sha = blobs.store_bytes(store, data)
                log = root / f"{job_id}.jsonl"
                log.write_text('{"t": 1.0, "s": "out", "d": "hello\\n"}\n')
                record = JobRecord(name="job", status=Status.SUCCEEDED, reason=None, exit_code=0, job_id=job_id,
                                   artifacts=(StoredArtifact("out/a.bin", 1024, sha),), log_path=str(log))
                started, cpu_started = time.perf_counter(), time.thread_time()
                with session_scope(engine) as s:
                    job = claim_job(s, job_id, "bench-worker", dt.datetime.now(dt.UTC), 30)
                    assert job is not None
                    claimed = time.perf_counter()
                    files = transports.get(kind, local).claimed(s, job, "bench-worker", dt.datetime.now(dt.UTC))
                    minted = time.perf_counter()
                sending = time.perf_counter()
                delivered = files.deliver(record, (), lambda: False)
                ended, cpu_ended = time.perf_counter(), time.thread_time()
                assert delivered is not None
                if kind != "local":
                    kept = states[kind] / "artifacts" / sha[:2] / sha
                    assert hashlib.sha256(kept.read_bytes()).hexdigest() == sha
                if i >= len(kinds) * 10:  # the first ones warm the connections and the API's caches
                    timings[kind].append((ended - started) * 1000)
                    timings[f"cpu {kind}"].append((cpu_ended - cpu_started) * 1000)
                    if kind != "local":
                        timings[f"mint {kind}"].append((minted - claimed) * 1000)
                        timings[f"request {kind}"].append((ended - sending) * 1000)
            # every thread of each API process, over the measured deliveries (clock ticks: 10 ms each)
            for kind, pid in pids.items():
                timings[f"api cpu {kind}"] = [(_cpu_s(pid) - api_cpu[kind]) * 1000 / deliveries]
            # the one API served both kinds of token: its CPU is shared out over both
            timings["api cpu signed"] = timings["api cpu http"] = [timings["api cpu http"][0] / 2]
        finally:
            for transport in transports.values():
                transport.close()
            engine.dispose()
            for host in deploy.hosts:
                host.stop()
            for host in deploy.hosts:
                _clean_host(host)
    return timings


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--parts", default="a,b", help="a: throughput and costs per job; b: the upload path")
    ap.add_argument("--jobs", type=int, default=60)
    ap.add_argument("--workers", default="1,2,4")
    ap.add_argument("--deliveries", type=int, default=300)
    ap.add_argument("--pure-python-api", action="store_true", help="(b) without httptools and uvloop in the API")
    ap.add_argument("--baseline-tree", help="(b) also deliver, in turns with the others, to the API of this tree "
                    "(another commit's `git archive`), with this tree's worker side")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="sandpit-bench-workers-", dir="/var/tmp"))
    tmp.chmod(0o711)  # a job's root passes through to its job dir (tests/integration/deploy/conftest.py)
    try:
        run_all(tmp, args)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


def _ms(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} ms ({p90(values):.2f})"


def run_all(tmp: Path, args: argparse.Namespace) -> None:
    parts = set(args.parts.split(","))
    with postgres_server() as server:
        if "b" in parts:
            baseline = Path(args.baseline_tree).resolve() if args.baseline_tree else None
            t = upload_path(server, tmp, args.deliveries, args.pure_python_api, baseline)
            api = "h11 + asyncio" if args.pure_python_api else "httptools + uvloop"
            for kind in ("http", "signed", "baseline") if baseline else ("http", "signed"):
                extra = statistics.median(t[kind]) - statistics.median(t["local"])
                cpu = statistics.median(t[f"cpu {kind}"]) - statistics.median(t["cpu local"])
                whose = {"baseline": f"the API of {baseline} (row tokens)", "signed": "this tree's API, signed tokens",
                         "http": "this tree's API, row tokens"}[kind]
                print(f"(b) per job, median (p90), {whose} on {api}: shared disk {_ms(t['local'])}, http "
                      f"{_ms(t[kind])} (of which the token's mint {_ms(t[f'mint {kind}'])}, the bundle request "
                      f"{_ms(t[f'request {kind}'])}); the upload path adds {extra:.2f} ms (goal <= 2 ms: "
                      f"{'met' if extra <= 2 else 'NOT met'}); CPU it adds: {cpu:.2f} ms in the worker's thread, "
                      f"{t[f'api cpu {kind}'][0]:.2f} ms in the API process", flush=True)
        if "a" in parts:
            for workers in (int(n) for n in args.workers.split(",")):
                r = throughput(server, tmp, workers, args.jobs)
                print(f"(a) {workers} worker process(es) x 2 jobs at once, {args.jobs} one-job runs: "
                      f"{r.jobs_per_s:.1f} jobs/s; {r.held.pg_connections} PostgreSQL connections and "
                      f"{r.held.redis_clients} Redis clients held (the API's included); per job "
                      f"{r.pg_transactions_per_job:.1f} PostgreSQL transactions, {r.redis_commands_per_job:.0f} "
                      f"Redis commands, {r.kept_bytes_per_job / 1024:.1f} KiB kept by the API", flush=True)


if __name__ == "__main__":
    sys.exit(main())
