"""The service, end to end, side by side in one run (medians).

    (a) a one-job pipeline (`true`) from POST /api/v1/runs?wait=30 to its answer (>= 50 runs)
    (b) `docker run --rm --network none` of the same rootfs (with --docker)
    throughput: N one-job runs through one worker (concurrency = cores), submitted at once
    memory: the worker's RSS after 10 jobs and after 1,000 jobs

Starts its own redis-server, SQLite database, worker and API (loopback only), stops them by pid.
Usage (root): .venv/bin/python bench/bench_service.py [--runs 50] [--throughput 500] [--memory-jobs 1000] [--docker]
Goals: (a) <= 0.2 x (b); >= 30 jobs/s; RSS(1000) - RSS(10) <= 50 MiB.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import os
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.integration.redis_server import free_port, redis_server  # noqa: E402

ONE_JOB = 'job:\n  image: debian\n  script: ["true"]\n'


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def p90(values: list[float]) -> float:
    return sorted(values)[int(0.9 * (len(values) - 1))]


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


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--throughput", type=int, default=500)
    ap.add_argument("--memory-jobs", type=int, default=1000)
    ap.add_argument("--docker", action="store_true")
    ap.add_argument("--concurrency", type=int, default=None, help="worker threads (default: the worker's own)")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="sandpit-bench-"))
    token = secrets.token_urlsafe(16)
    port = free_port()
    procs: list[subprocess.Popen[bytes]] = []
    results: dict[str, str] = {}
    with redis_server(tmp) as redis:
        env = {**os.environ, "SANDPIT_REDIS_URL": redis.url, "SANDPIT_DATABASE_URL": f"sqlite:///{tmp / 'db.sqlite'}",
               "SANDPIT_API_TOKENS": f"bench:{token}:trusted"}
        try:
            api = subprocess.Popen([sys.executable, "-m", "api", "--port", str(port), "--log-level", "warning"],
                                   env=env, cwd=REPO)
            procs.append(api)
            wait_http(f"http://127.0.0.1:{port}/healthz")
            worker_cmd = [sys.executable, "-m", "worker", "worker"]
            if args.concurrency:
                worker_cmd += ["--concurrency", str(args.concurrency)]
            worker = subprocess.Popen(worker_cmd, env=env, cwd=REPO,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            procs.append(worker)
            client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120,
                                  headers={"Authorization": f"Bearer {token}"})

            def one(wait: float = 60) -> dict:  # type: ignore[type-arg]
                r = client.post("/api/v1/runs", params={"wait": wait}, json={"pipeline": ONE_JOB})
                r.raise_for_status()
                return r.json()  # type: ignore[no-any-return]

            for _ in range(5):  # warm up
                assert one()["status"] == "succeeded"
            docker = None
            if args.docker:
                from bench.bench_exec import Docker
                from worker.sandbox.engine import Engine
                from worker.settings import Settings

                docker = Docker(Engine(Settings.from_env(os.environ)).images.get("debian").rootfs)
            api_times, docker_times = [], []
            for _ in range(args.runs):
                t = time.perf_counter()
                run = one()
                api_times.append(time.perf_counter() - t)
                assert run["status"] == "succeeded", run
                if docker is not None:
                    t = time.perf_counter()
                    docker.run()
                    docker_times.append(time.perf_counter() - t)
            if docker is not None:
                docker.close()
            a = statistics.median(api_times) * 1000
            results["(a) POST /runs?wait= one-job pipeline, median ms"] = f"{a:.1f}"
            results["(a) p90 ms"] = f"{p90(api_times) * 1000:.1f}"
            if docker_times:
                b = statistics.median(docker_times) * 1000
                results["(b) docker run --rm --network none, median ms"] = f"{b:.1f}"
                results["(b) p90 ms"] = f"{p90(docker_times) * 1000:.1f}"
                results["(a)/(b) (goal <= 0.2)"] = f"{a / b:.2f}"

            rss_10 = rss_mib(worker.pid)
            t = time.perf_counter()
            with cf.ThreadPoolExecutor(8) as pool:
                ids = list(pool.map(lambda _i: one(wait=0)["id"], range(args.throughput)))
            # poll sparingly (the API shares the 2 cores with the worker being measured): the queue
            # is FIFO, so wait for the last run, then sweep up any stragglers
            pending = list(ids)
            while pending:
                run_id = pending[-1]
                if client.get(f"/api/v1/runs/{run_id}").json()["status"] in ("created", "running"):
                    time.sleep(0.2)
                    continue
                pending = [r for r in pending
                           if client.get(f"/api/v1/runs/{r}").json()["status"] in ("created", "running")]
            elapsed = time.perf_counter() - t
            results[f"throughput, {args.throughput} one-job runs, jobs/s (goal >= 30)"] = \
                f"{args.throughput / elapsed:.1f}"
            extra = max(0, args.memory_jobs - args.throughput - args.runs - 5)
            with cf.ThreadPoolExecutor(8) as pool:
                list(pool.map(lambda _i: one(wait=60), range(extra)))
            rss_1000 = rss_mib(worker.pid)
            results["worker RSS after 10 jobs, MiB"] = f"{rss_10:.1f}"
            results[f"worker RSS after {args.memory_jobs} jobs, MiB (goal: +<= 50)"] = f"{rss_1000:.1f}"
        finally:
            for proc in reversed(procs):
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
                    try:
                        proc.wait(timeout=30)
                    except subprocess.TimeoutExpired:
                        proc.kill()
    import shutil

    shutil.rmtree(tmp, ignore_errors=True)
    print("\n| measure | value |\n|---|---:|")
    for k, v in results.items():
        print(f"| {k} | {v} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
