"""Web-hook received → first job's process running, vs the same job through POST /runs (medians).

    (a) POST /api/v1/runs, YAML body: the job starts in an empty workspace (the baseline)
    (b) POST /api/v1/runs with source {repository, sha}: the same commit checked out, warm mirror
    (c) a signed GitHub push web-hook, the commit already in the mirror (warm)
    (d) a signed GitHub push web-hook, the commit fetched from a git daemon on loopback (cold)
    (e) the checkout alone, in this process, from the warm mirror (what (b) and (c) pay for in
        the worker before the job's copy of the tree): wall time, and the CPU time of its git
        processes (the part the machine's load does not move)

The job's first command prints the clock (``date +%s%N``, the container shares the host's
clock); the latency is that time minus the time the request was sent. Runs are one at a time.
Starts its own redis-server, SQLite database, git daemon, worker and API (loopback only; the API
and the worker share the state dir, as under ``sandpit up``), stops them by pid.

Usage (root): .venv/bin/python bench/bench_webhook.py [--runs 20]
Goal: (c) - (a) <= 15 ms.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import resource
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.bench_service import wait_http  # noqa: E402
from pipelines.forges.checkout import checkout_commit  # noqa: E402
from pipelines.forges.mirror import ensure_commit  # noqa: E402
from tests.integration.forges.gitserver import git_server  # noqa: E402
from tests.integration.forges.payloads import push, signed  # noqa: E402
from tests.integration.redis_server import free_port, redis_server  # noqa: E402

PIPELINE = 'job:\n  image: debian\n  script: ["date +%s%N"]\n'
SECRET = "bench-webhook-secret-0"  # noqa: S105 - a loopback test hook's
_STAMP = re.compile(r"^(\d{19})$", re.M)


class Bench:
    def __init__(self, client: httpx.Client, hooks: httpx.Client) -> None:
        self.client, self.hooks = client, hooks
        self.answered: dict[str, list[float]] = {}
        self.claimed: dict[str, list[float]] = {}
        self.path = ""

    def started_after(self, run_id: str, sent_ns: int) -> float:
        """Milliseconds from ``sent_ns`` to the job's first command (waits for the run to end)."""
        deadline = time.monotonic() + 120
        while True:
            run = self.client.get(f"/api/v1/runs/{run_id}").json()
            if run["finished_at"] is not None:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"run {run_id} did not end: {run}")
            time.sleep(0.05)
        (job,) = run["jobs"]
        if job["status"] != "succeeded":
            raise RuntimeError(f"the job did not succeed: {job}")
        claimed = dt.datetime.fromisoformat(job["started_at"]).timestamp() * 1e9
        self.claimed.setdefault(self.path, []).append((claimed - sent_ns) / 1e6)
        log = self.client.get(f"/api/v1/jobs/{job['id']}/log").text
        stamp = _STAMP.search(log)
        if stamp is None:
            raise RuntimeError(f"no clock in the job's log: {log[-500:]}")
        return (int(stamp.group(1)) - sent_ns) / 1e6

    def _answered(self, sent: int) -> None:
        self.answered.setdefault(self.path, []).append((time.time_ns() - sent) / 1e6)

    def api_yaml(self) -> float:
        self.path = "a"
        sent = time.time_ns()
        answer = self.client.post("/api/v1/runs", content=PIPELINE, headers={"Content-Type": "application/yaml"})
        self._answered(sent)
        answer.raise_for_status()
        return self.started_after(answer.json()["id"], sent)

    def api_source(self, sha: str) -> float:
        self.path = "b"
        sent = time.time_ns()
        answer = self.client.post("/api/v1/runs", json={"source": {"repository": "bench/app", "sha": sha}})
        self._answered(sent)
        answer.raise_for_status()
        return self.started_after(answer.json()["id"], sent)

    def webhook(self, repo: dict[str, Any], url: str, sha: str, path: str) -> float:
        self.path = path
        body = json.dumps(push("github", url, "bench/app", sha, message=f"bench {sha[:8]}")).encode()
        headers = signed("github", body, SECRET)
        sent = time.time_ns()
        answer = self.hooks.post(repo["webhook_path"], content=body, headers=headers)
        self._answered(sent)
        if answer.status_code != 201:
            raise RuntimeError(f"the web-hook was answered {answer.status_code}: {answer.text}")
        return self.started_after(answer.json()["run_id"], sent)


def checkout_alone(mirrors: Path, repo_id: str, url: str, shas: list[str], scratch: Path) -> tuple[float, float]:
    """Median wall and git-CPU milliseconds of checking each of ``shas`` out of the warm mirror."""
    wall, cpu = [], []
    for i, sha in enumerate(shas):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        began = time.perf_counter()
        checkout_commit(mirrors, repo_id, url, sha, 20, scratch / str(i))
        wall.append((time.perf_counter() - began) * 1000)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu.append((after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime) * 1000)
    shutil.rmtree(scratch, ignore_errors=True)
    return statistics.median(wall), statistics.median(cpu)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=20)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="sandpit-bench-hook-"))
    token = secrets.token_urlsafe(16)
    port = free_port()
    state = Path(os.environ.get("SANDPIT_STATE_DIR", "/var/lib/sandpit"))
    procs: list[subprocess.Popen[bytes]] = []
    results: dict[str, str] = {}
    repo_id = ""
    with redis_server(tmp) as redis, git_server(tmp / "git") as git:
        git.create("app")
        shas = [git.commit("app", {".gitlab-ci.yml": PIPELINE, "n.txt": str(i)}, f"c{i}")
                for i in range(4 * args.runs + 8)]
        env = {**os.environ, "SANDPIT_REDIS_URL": redis.url, "SANDPIT_DATABASE_URL": f"sqlite:///{tmp / 'db.sqlite'}",
               "SANDPIT_API_TOKENS": f"bench:{token}:trusted", "SANDPIT_STATE_DIR": str(state)}
        try:
            procs.append(subprocess.Popen([sys.executable, "-m", "api", "--port", str(port), "--log-level",
                                           "warning"], env=env, cwd=REPO))
            wait_http(f"http://127.0.0.1:{port}/healthz")
            procs.append(subprocess.Popen([sys.executable, "-m", "worker", "worker"], env=env, cwd=REPO,
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            base = f"http://127.0.0.1:{port}"
            client = httpx.Client(base_url=base, timeout=120, headers={"Authorization": f"Bearer {token}"})
            hooks = httpx.Client(base_url=base, timeout=120)
            repo = client.post("/api/v1/repos", json={"name": "bench/app", "forge": "github",
                                                      "clone_url": git.url("app"), "secret": SECRET}).json()
            repo_id = repo["id"]
            bench = Bench(client, hooks)
            warm, cold = shas[: 2 * args.runs + 4], shas[2 * args.runs + 4:]
            for sha in warm:  # the warm case: the commits are in the mirror already
                ensure_commit(state / "mirrors", repo_id, git.url("app"), sha)
            for _i in range(3):  # warm up every path (imports, images, connections)
                bench.api_yaml()
                bench.webhook(repo, git.url("app"), warm.pop(), "warm-up")
            times: dict[str, list[float]] = {"a": [], "b": [], "c": [], "d": []}
            for _i in range(args.runs):
                times["a"].append(bench.api_yaml())
                times["b"].append(bench.api_source(warm.pop()))
                times["c"].append(bench.webhook(repo, git.url("app"), warm.pop(), "c"))
                # oldest first: each is a child of the last, so the API fetches it and the worker then
                # finds it with its history (newest first, each would already be in the mirror as
                # the history of the one before, short of GIT_DEPTH: the worker deepened it)
                times["d"].append(bench.webhook(repo, git.url("app"), cold.pop(0), "d"))
            med = {k: statistics.median(v) for k, v in times.items()}
            wall, cpu = checkout_alone(state / "mirrors", repo_id, git.url("app"), shas[:args.runs], tmp / "alone")
            results["(a) POST /runs, YAML (empty workspace), median ms"] = f"{med['a']:.1f}"
            results["(b) POST /runs, repository + sha (checkout, warm mirror), median ms"] = f"{med['b']:.1f}"
            results["(c) web-hook push, warm mirror, median ms"] = f"{med['c']:.1f}"
            results["(d) web-hook push, cold (fetched from git daemon), median ms"] = f"{med['d']:.1f}"
            results["(e) the checkout alone, warm mirror: wall / git CPU, median ms"] = f"{wall:.1f} / {cpu:.1f}"
            results["(c) - (a): the web-hook path's cost, warm (goal <= 15 ms)"] = f"{med['c'] - med['a']:.1f}"
            results["(c) - (b): web-hook vs the same checkout through POST /runs"] = f"{med['c'] - med['b']:.1f}"
            for key in "abcd":
                results[f"({key}) answered / job claimed after, median ms"] = (
                    f"{statistics.median(bench.answered[key]):.1f} / {statistics.median(bench.claimed[key]):.1f}")
        finally:
            for proc in reversed(procs):
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
                    try:
                        proc.wait(timeout=30)
                    except subprocess.TimeoutExpired:
                        proc.kill()
            if repo_id:
                shutil.rmtree(state / "mirrors" / f"{repo_id}.git", ignore_errors=True)
                (state / "mirrors" / f"{repo_id}.lock").unlink(missing_ok=True)
    shutil.rmtree(tmp, ignore_errors=True)
    print("\n| measure | value |\n|---|---:|")
    for k, v in results.items():
        print(f"| {k} | {v} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
