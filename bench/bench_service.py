"""The service, end to end, side by side in one run (medians, p90, p99).

    (a) a one-job pipeline (`true`) from POST /api/v1/runs?wait=30 to its answer (--runs, >= 30)
    (b) `docker run --rm --network none` of the same rootfs (with --docker), interleaved with (a)
    throughput: N one-job runs (wait=0, 8 senders) through one worker; jobs/s, and the p50/p90/p99 of
        each run's own time in the service (its finished_at - created_at, as stored)
    clients: --clients C concurrent clients POSTing one-job runs (wait=0), the POST's p50/p90/p99
    where the CPU went during the throughput case, per job: the worker process itself (user, sys),
        what it ran (crun and the jobs: its reaped children), the API, redis-server, this bench, the
        rest of the machine (kernel threads, interrupts, other tenants)
    slots: with --slots 1,2,4,8 the throughput case again at each worker concurrency (2/2: two slots
        in two processes, `sandpit worker --processes 2`), and with --two-workers at two workers of
        the default concurrency; --scaling-rounds R runs those cases R times in turns
    memory: the worker's RSS after the warm-up and after --memory-jobs jobs
    trace: with --trace, where each millisecond of the (a) runs went: the API, the worker and the
        engine append step marks (pipelines/trace.py, SANDPIT_TRACE_FILE), and the median gap between
        consecutive marks of a run is printed per tree

Before/after in one sitting: ``--against DIR`` (a checkout of the earlier code, e.g. made with
``git archive <rev> | tar -x -C DIR``) runs every case on both trees, alternating tree by tree for
--rounds rounds; each tree gets its own redis-server, SQLite database and processes, started
from that tree. ``--profile DIR`` records py-spy (no --idle: only samples on CPU) of the worker
and the API during each throughput case, as collapsed stacks.

Starts its own redis-server, SQLite database, worker(s) and API (loopback only), stops them by pid.
Usage (root): .venv/bin/python bench/bench_service.py [--runs 50] [--throughput 450] [--clients 50]
    [--docker] [--against DIR --rounds 2] [--slots 1,2,4,8] [--two-workers] [--profile DIR] [--trace]
Goals: (a) <= 0.10 x (b); >= 100 jobs/s with one worker; 50 clients' POST p99 <= 500 ms;
RSS(1000) - RSS(10) <= 50 MiB. Throughput stays under ~450 runs: past the policy's 500 runs in
flight per submitter the API answers 429.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import contextlib
import datetime as dt
import itertools
import os
import secrets
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.integration.redis_server import free_port, redis_server  # noqa: E402

ONE_JOB = 'job:\n  image: debian\n  script: ["true"]\n'
TICK = os.sysconf("SC_CLK_TCK")


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def pct(values: list[float], q: float) -> float:
    """The ``q`` quantile (nearest rank below)."""
    return sorted(values)[int(q * (len(values) - 1))] if values else float("nan")


def fmt(value: float) -> str:
    return f"{value:.2f}" if abs(value) < 10 else f"{value:.1f}"


def wait_http(url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up")


def proc_cpu(pid: int) -> tuple[float, float, float, float]:
    """(user, sys, children's user, children's sys) seconds of ``pid`` (children: reaped ones)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return tuple(int(v) / TICK for v in fields[11:15])  # type: ignore[return-value]


def machine_cpu() -> float:
    """Busy CPU seconds of the whole machine (every mode but idle and iowait)."""
    parts = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return (sum(parts) - parts[3] - parts[4]) / TICK


def host_cpu(mine: set[int]) -> tuple[float, dict[int, float]]:
    """CPU seconds so far of the kernel's threads, and of each live process not in ``mine``
    (other tenants, counted only when alive at both ends of a case: what exits in between is
    not seen and lands in the unattributed rest)."""
    kernel, others = 0.0, {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) in mine:
            continue
        try:
            fields = Path(f"/proc/{entry.name}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        used = (int(fields[11]) + int(fields[12])) / TICK
        if fields[1] == "2" or entry.name == "2":
            kernel += used
        else:
            others[int(entry.name)] = used
    return kernel, others


@dataclass
class Service:
    """One tree's redis-server, SQLite database, API and worker(s), stopped by pid."""

    tree: Path
    workers: int = 1
    slots: int | None = None
    processes: int = 1  # `sandpit worker --processes`: each worker's slots spread over this many processes
    trace: bool = False
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    stack: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)

    def __enter__(self) -> Service:
        try:
            self._start()
        except BaseException:
            self.__exit__()
            raise
        return self

    def _start(self) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="sandpit-bench-"))
        self.stack.callback(shutil.rmtree, self.tmp, True)
        self.stack.callback(remove_job_logs, self.tmp / "db.sqlite")  # after the processes stopped
        redis = self.stack.enter_context(redis_server(self.tmp))
        self.redis_pid = redis.proc.pid if redis.proc is not None else 0
        token = secrets.token_urlsafe(16)
        port = free_port()
        env = {**os.environ, "SANDPIT_REDIS_URL": redis.url,
               "SANDPIT_DATABASE_URL": f"sqlite:///{self.tmp / 'db.sqlite'}",
               "SANDPIT_API_TOKENS": f"bench:{token}:trusted", "PYTHONPATH": str(self.tree)}
        self.trace_file = self.tmp / "trace.log"
        if self.trace:
            env["SANDPIT_TRACE_FILE"] = str(self.trace_file)
        self.api = subprocess.Popen([sys.executable, "-m", "api", "--port", str(port), "--log-level", "warning"],
                                    env=env, cwd=self.tree)
        self.procs.append(self.api)
        wait_http(f"http://127.0.0.1:{port}/healthz")
        cmd = [sys.executable, "-m", "worker", "worker"] + (["--concurrency", str(self.slots)] if self.slots else [])
        cmd += ["--processes", str(self.processes)] if self.processes != 1 else []
        self.worker_procs = [subprocess.Popen(cmd, env=env, cwd=self.tree, stdout=subprocess.DEVNULL,
                                              stderr=subprocess.DEVNULL) for _ in range(self.workers)]
        self.procs += self.worker_procs
        self.client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120,
                                   headers={"Authorization": f"Bearer {token}"},
                                   # a connection idle past 2 s is not reused: uvicorn closes one idle for
                                   # 5 s, httpx's default expiry, and a POST sent as it closes is reset
                                   limits=httpx.Limits(max_connections=64, max_keepalive_connections=64,
                                                       keepalive_expiry=2.0))
        self.stack.callback(self.client.close)
        for _ in range(5):  # warm up (and wait for the workers)
            run = self.one()
            assert run["status"] == "succeeded", run
        if self.processes != 1:  # the supervisors' children do the work (their CPU is theirs until they exit)
            for _ in range(100):
                self.worker_pids = [int(c) for p in self.worker_procs
                                    for c in Path(f"/proc/{p.pid}/task/{p.pid}/children").read_text().split()]
                if len(self.worker_pids) == self.workers * self.processes:
                    break
                time.sleep(0.1)
        else:
            self.worker_pids = [p.pid for p in self.worker_procs]

    def __exit__(self, *_exc: object) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.stack.close()

    def one(self, wait: float = 60) -> dict[str, Any]:
        r = self.client.post("/api/v1/runs", params={"wait": wait}, json={"pipeline": ONE_JOB})
        r.raise_for_status()
        return r.json()  # type: ignore[no-any-return]

    def settle(self, ids: list[str]) -> list[dict[str, Any]]:
        """Wait until every run of ``ids`` ended (sparingly: the API shares the cores being
        measured; the queue is FIFO, so the last one first), then their records."""
        while self.client.get(f"/api/v1/runs/{ids[-1]}").json()["finished_at"] is None:
            time.sleep(0.1)
        out = []
        for run_id in ids:
            while (run := self.client.get(f"/api/v1/runs/{run_id}").json())["finished_at"] is None:
                time.sleep(0.1)
            out.append(run)
        return out


def remove_job_logs(db: Path) -> None:
    """The logs the bench's jobs left in the state directory (shared with every other use of this
    host's default settings, which would otherwise keep them for the retention period and walk
    them on each collection); only the paths its own database names."""
    if not db.exists():
        return
    with contextlib.closing(sqlite3.connect(db)) as conn:
        paths = [row[0] for row in conn.execute("SELECT log_path FROM job WHERE log_path IS NOT NULL")]
    for path in paths:
        if Path(path).parent.name == "logs" and path.endswith(".jsonl"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)


def seconds_in_service(run: dict[str, Any]) -> float:
    took = dt.datetime.fromisoformat(run["finished_at"]) - dt.datetime.fromisoformat(run["created_at"])
    return took.total_seconds()


@contextlib.contextmanager
def profiled(svc: Service, where: Path | None, label: str) -> Iterator[None]:
    if where is None:
        yield
        return
    where.mkdir(parents=True, exist_ok=True)
    # --gil: only samples of the thread holding the GIL (the process's Python CPU, not its waits)
    spy = str(Path(sys.executable).parent / "py-spy")
    spies = [subprocess.Popen([spy, "record", "-p", str(pid), "-r", "200", "--gil", "--nonblocking", "-f", "raw",
                               "-o", str(where / f"{label}-{name}.txt")],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
             for name, pid in (("worker", svc.worker_pids[0]), ("api", svc.api.pid))]
    time.sleep(0.5)
    try:
        yield
    finally:
        for spy in spies:
            spy.send_signal(signal.SIGINT)
        for spy in spies:
            spy.wait(timeout=60)


def throughput(svc: Service, n: int, profile: Path | None = None, label: str = "") -> dict[str, float]:
    """N runs at once; jobs/s, the runs' own times in the service, the CPU split per job."""
    pids = {"worker": svc.worker_pids, "api": [svc.api.pid], "redis": [svc.redis_pid],
            "bench": [os.getpid()]}
    with profiled(svc, profile, label):
        mine = {p for v in pids.values() for p in v}
        cpu0 = {k: [proc_cpu(p) for p in v] for k, v in pids.items()}
        h0 = host_cpu(mine)
        m0 = machine_cpu()
        t = time.perf_counter()
        with cf.ThreadPoolExecutor(8) as pool:
            ids = list(pool.map(lambda _i: svc.one(wait=0)["id"], range(n)))
        while svc.client.get(f"/api/v1/runs/{ids[-1]}").json()["finished_at"] is None:
            time.sleep(0.05)
        elapsed = time.perf_counter() - t
        m1 = machine_cpu()
        h1 = host_cpu(mine)
        cpu1 = {k: [proc_cpu(p) for p in v] for k, v in pids.items()}
    runs = svc.settle(ids)
    assert all(r["status"] == "succeeded" for r in runs), [r for r in runs if r["status"] != "succeeded"][:1]
    took = [seconds_in_service(r) for r in runs]

    def used(kind: str, index: int) -> float:
        return sum(b[index] - a[index] for a, b in zip(cpu0[kind], cpu1[kind], strict=True)) * 1000 / n

    out = {"jobs/s": n / elapsed, "run p50 ms": statistics.median(took) * 1000, "run p90 ms": pct(took, 0.9) * 1000,
           "run p99 ms": pct(took, 0.99) * 1000,
           "cpu: worker user": used("worker", 0), "cpu: worker sys": used("worker", 1),
           "cpu: runtime+job user": used("worker", 2), "cpu: runtime+job sys": used("worker", 3),
           "cpu: api": used("api", 0) + used("api", 1), "cpu: redis": used("redis", 0) + used("redis", 1),
           "cpu: bench": used("bench", 0) + used("bench", 1),
           "cpu: kernel threads": (h1[0] - h0[0]) * 1000 / n,
           "cpu: other processes": sum(v - h0[1][p] for p, v in h1[1].items() if p in h0[1]) * 1000 / n,
           "cpu: machine": (m1 - m0) * 1000 / n}
    named = sum(v for k, v in out.items() if k.startswith("cpu: ") and k != "cpu: machine")
    out["cpu: unattributed (irq, exited processes)"] = out["cpu: machine"] - named
    return out


def clients(svc: Service, count: int, each: int) -> dict[str, float]:
    """``count`` clients at once, each POSTing ``each`` runs one after the other (wait=0)."""
    def client(_i: int) -> list[tuple[float, str]]:
        got = []
        for _ in range(each):
            t = time.perf_counter()
            run = svc.one(wait=0)
            got.append((time.perf_counter() - t, run["id"]))
        return got

    api0 = proc_cpu(svc.api.pid)
    t = time.perf_counter()
    with cf.ThreadPoolExecutor(count) as pool:
        done = [x for part in pool.map(client, range(count)) for x in part]
    elapsed = time.perf_counter() - t
    api1 = proc_cpu(svc.api.pid)
    svc.settle([run_id for _t, run_id in done])
    times = [t for t, _id in done]
    return {"POST p50 ms": statistics.median(times) * 1000, "POST p90 ms": pct(times, 0.9) * 1000,
            "POST p99 ms": pct(times, 0.99) * 1000, "POSTs/s": len(done) / elapsed,
            # load-robust: the API's own CPU per POST (the worker ran jobs meanwhile, its share in)
            "API CPU per POST ms": (api1[0] + api1[1] - api0[0] - api0[1]) * 1000 / len(done)}


#: the marks of one run, in the order they are made (pipelines/trace.py's callers)
TRACE_STEPS = ("api_in", "submit_in", "committed", "published", "api_submitted", "task", "claimed", "engine_in",
               "runtime_in", "runtime_out", "engine_out", "delivered", "recorded", "announced", "api_event",
               "api_read", "api_out")


def trace_gaps(path: Path, offset: int) -> list[tuple[str, float]]:
    """The median gap (ms) between consecutive marks of the runs traced past ``offset`` of ``path``
    (a run's marks start at its api_in; runs here are one at a time), and the whole of a run."""
    runs: list[dict[str, int]] = []
    with path.open("rb") as f:
        f.seek(offset)
        for line in f.read().decode().splitlines():
            ns, _pid, label = line.split()[:3]
            if label == "api_in":
                runs.append({})
            if runs:
                runs[-1].setdefault(label, int(ns))
    gaps: dict[str, list[float]] = {}
    for marks in runs:
        seen = [step for step in TRACE_STEPS if step in marks]
        for before, after in itertools.pairwise(seen):
            gaps.setdefault(f"{before} -> {after}", []).append((marks[after] - marks[before]) / 1e6)
        if seen:
            gaps.setdefault("api_in -> api_out (the handler)", []).append((marks[seen[-1]] - marks[seen[0]]) / 1e6)
    return [(step, statistics.median(times)) for step, times in gaps.items()]


def latency(svc: Service, runs: int, docker: Any) -> dict[str, list[float]]:
    api_times, docker_times = [], []
    trace_from = svc.trace_file.stat().st_size if svc.trace else 0
    for _ in range(runs):
        t = time.perf_counter()
        run = svc.one()
        api_times.append(time.perf_counter() - t)
        assert run["status"] == "succeeded", run
        if docker is not None:
            t = time.perf_counter()
            docker.run()
            docker_times.append(time.perf_counter() - t)
    if svc.trace:
        print(f"\nwhere a one-job run's time went ({svc.tree}, medians of {runs} runs):\n")
        print("| step | ms |\n|---|---:|")
        for step, ms in trace_gaps(svc.trace_file, trace_from):
            print(f"| {step} | {ms:.2f} |")
    return {"api": api_times, "docker": docker_times}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--throughput", type=int, default=450)
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--client-posts", type=int, default=8, help="runs each client POSTs")
    ap.add_argument("--memory-jobs", type=int, default=0)
    ap.add_argument("--docker", action="store_true")
    ap.add_argument("--concurrency", type=int, default=None, help="worker threads (default: the worker's own)")
    ap.add_argument("--against", type=Path, default=None, help="a checkout of the earlier code, run in turns")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--slots", default="",
                    help="comma-separated worker concurrencies for the scaling table; N/P: N slots in P processes")
    ap.add_argument("--scaling-rounds", type=int, default=1, help="rounds of the scaling cases, in turns")
    ap.add_argument("--processes", type=int, default=1, help="the worker's --processes for the main cases")
    ap.add_argument("--two-workers", action="count", default=0, help="given N times: N rounds of it")
    ap.add_argument("--profile", type=Path, default=None)
    ap.add_argument("--trace", action="store_true", help="print where each millisecond of the (a) runs went")
    args = ap.parse_args()
    trees = {"after": REPO} if args.against is None else {"before": args.against.resolve(), "after": REPO}
    docker = None
    if args.docker:
        from bench.bench_exec import Docker
        from worker.sandbox.engine import Engine
        from worker.settings import Settings

        docker = Docker(Engine(Settings.from_env(os.environ)).images.get("debian").rootfs)
    results: dict[str, dict[str, list[float]]] = {name: {} for name in trees}

    def keep(tree: str, measures: dict[str, float]) -> None:
        for key, value in measures.items():
            results[tree].setdefault(key, []).append(value)

    try:
        with contextlib.ExitStack() as up:
            # every tree's service is up at once and the cases alternate tree by tree (the order
            # flips each round): the machine is shared, so paired measures are taken minutes apart
            # at most; the idle service costs its sweeper's and heartbeat's ticks
            services = {name: up.enter_context(Service(tree, slots=args.concurrency, trace=args.trace,
                                                              processes=args.processes))
                        for name, tree in trees.items()}
            rss_10 = {name: rss_mib(svc.worker_pids[0]) for name, svc in services.items()}
            for round_no in range(args.rounds):
                order = list(services.items()) if round_no % 2 == 0 else list(reversed(services.items()))
                for name, svc in order if args.runs else ():
                    times = latency(svc, args.runs, docker)
                    a = statistics.median(times["api"]) * 1000
                    keep(name, {"(a) POST ?wait one-job run, median ms": a,
                                "(a) p90 ms": pct(times["api"], 0.9) * 1000})
                    if times["docker"]:
                        b = statistics.median(times["docker"]) * 1000
                        keep(name, {"(b) docker run --rm, median ms": b,
                                    "(b) p90 ms": pct(times["docker"], 0.9) * 1000, "(a)/(b)": a / b})
                for name, svc in order if args.throughput else ():
                    keep(name, {f"throughput {args.throughput}: {k}": v for k, v in
                                throughput(svc, args.throughput, args.profile, f"{name}-{round_no}").items()})
                for name, svc in order if args.clients else ():
                    keep(name, {f"{args.clients} clients: {k}": v for k, v in
                                clients(svc, args.clients, args.client_posts).items()})
            for name, svc in services.items() if args.memory_jobs else ():
                with cf.ThreadPoolExecutor(8) as pool:
                    list(pool.map(lambda _i: svc.one(wait=60), range(args.memory_jobs)))  # noqa: B023
                keep(name, {"worker RSS after warm-up, MiB": rss_10[name],
                            f"worker RSS after {args.memory_jobs} more jobs, MiB": rss_mib(svc.worker_pids[0])})
        cases = [(int(n), int(p or 1)) for n, _, p in (v.partition("/") for v in args.slots.split(",") if v)]
        scaling = [(f"{n} slots" + (f" in {p} processes" if p > 1 else ""), 1, n, p) for n, p in cases]
        scaling += [("two workers", 2, None, 1)] * args.two_workers
        for label, workers, slots, processes in scaling * args.scaling_rounds:
            with contextlib.ExitStack() as up:
                services = {name: up.enter_context(Service(tree, workers=workers, slots=slots, processes=processes))
                            for name, tree in trees.items()}
                for name, svc in services.items():
                    got = throughput(svc, args.throughput)
                    keep(name, {f"{label}: jobs/s": got["jobs/s"], f"{label}: run p99 ms": got["run p99 ms"],
                                f"{label}: run p50 ms": got["run p50 ms"]})
    finally:
        if docker is not None:
            docker.close()
    names = list(trees)
    print("\n| measure | " + " | ".join(f"{n} (median of {args.rounds})" for n in names) + " |")
    print("|---|" + "---:|" * len(names))
    for key in results[names[-1]]:
        cells = []
        for n in names:
            values = results[n].get(key, [])
            cells.append(f"{fmt(statistics.median(values))}" + (f" ({fmt(min(values))}-{fmt(max(values))})"
                                                                if len(values) > 1 else "") if values else "")
        print(f"| {key} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
