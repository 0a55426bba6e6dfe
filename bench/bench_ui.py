"""Benchmark of the web UI's first screens: the runs list with 10,000 runs, a job page with a 50 MB log.

    .venv/bin/python bench/bench_ui.py [--runs 10000] [--log-mb 50] [--repeat 20]

On a fresh SQLite database: ``--runs`` runs (inserted in bulk, a tenth of them linked to a
repository) and one finished job whose log file is ``--log-mb`` MB of JSON-lines records with
colour, sections and long lines. Each page is requested through the app in this process (no
network: the time is the server's own, from the request to the last byte of the answer), logged
in with a session cookie. Reported: the first request (templates are compiled then; the log's
end view counts the lines before its last screen then, and keeps the count) and the median of
``--repeat`` more. Goal: every first screen in at most 100 ms; the job page reads one screen of
the log (its start, or with ``?at=end`` its end), never the whole file.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import sys
import tempfile
import time
import uuid
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import sqlalchemy as sa  # noqa: E402

from api.app import create_app  # noqa: E402
from api.settings import ApiSettings, parse_tokens  # noqa: E402
from pipelines.store.db import make_engine, migrate, session_scope  # noqa: E402
from pipelines.store.models import Job, Repository, RepositoryRun, Run  # noqa: E402

GOAL_MS = 100.0
TOKEN = "bench-token"  # noqa: S105 -- a throwaway token of this in-process run
T0 = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
STATUSES = ("succeeded", "failed", "succeeded", "cancelled", "succeeded")


class NoPublisher:
    def publish(self, job_ids: object) -> None:
        pass

    def close(self) -> None:
        pass


def fill(url: str, runs: int, log: Path) -> str:
    """``runs`` runs and one job whose log is ``log``; the job's id."""
    engine = make_engine(url)
    job_id = str(uuid.uuid4())
    with session_scope(engine) as session:
        c = session.connection()
        repo_id = str(uuid.uuid4())
        c.execute(sa.insert(Repository.__table__).values(  # type: ignore[attr-defined]
            id=repo_id, name="acme/app", forge="gitea", clone_url="http://127.0.0.1:9/x.git", secret_sealed="x",  # noqa: S106
            created_at=T0))
        rows, links = [], []
        for i in range(runs):
            run_id = str(uuid.uuid4())
            created = T0 + dt.timedelta(seconds=i)
            rows.append({"id": run_id, "created_at": created, "finished_at": created + dt.timedelta(seconds=90),
                         "status": STATUSES[i % len(STATUSES)], "trust": "trusted", "source": "webhook" if i % 10 == 0
                         else "api", "ref": "main" if i % 3 else f"feature/{i}", "sha": f"{i:040x}",
                         "message": f"Change number {i}\n\nA body.", "submitter": "token:ci", "jobs_total": 3})
            if i % 10 == 0:
                links.append({"run_id": run_id, "repo_id": repo_id, "kind": "push", "ref": "main"})
        c.execute(sa.insert(Run.__table__), rows)  # type: ignore[attr-defined]
        c.execute(sa.insert(RepositoryRun.__table__), links)  # type: ignore[attr-defined]
        c.execute(sa.insert(Job.__table__).values(  # type: ignore[attr-defined]
            id=job_id, run_id=rows[-1]["id"], name="build", stage="build", status="succeeded", attempt=1,
            spec={"image": {"name": "debian"}, "sandbox": {}}, needs=[], usage={"cpu_s": 1.0}, result={},
            log_path=str(log), duration_s=60.0, started_at=T0, finished_at=T0))
    engine.dispose()
    return job_id


def write_log(path: Path, megabytes: int) -> int:
    """A log of about ``megabytes`` MB in records of up to 64 KiB, as the worker writes them."""
    target = megabytes * 1024 * 1024
    written = line = 0
    with path.open("w") as handle:
        t = 0.0
        while written < target:
            chunk = []
            for _ in range(400):
                line += 1
                if line % 5000 == 1:
                    chunk.append(f"\x1b[0Ksection_start:{1_700_000_000 + line}:step_{line}\r\x1b[0KStep {line}\n")
                chunk.append(f"\x1b[32m{line:>8}\x1b[0m compiling module_{line % 977}.c -> build/obj/"
                             f"module_{line % 977}.o [{'#' * (line % 40)}]\n")
                if line % 5000 == 4999:
                    chunk.append(f"\x1b[0Ksection_end:{1_700_000_030 + line}:step_{line - 4998}\r\x1b[0K\n")
            record = json.dumps({"t": t, "s": "out", "d": "".join(chunk)}) + "\n"
            handle.write(record)
            written += len(record)
            t += 0.05
    return written


def timed(client: object, path: str, repeat: int) -> tuple[float, float, int]:
    times = []
    size = 0
    for _ in range(repeat + 1):
        started = time.perf_counter()
        response = client.get(path)  # type: ignore[attr-defined]
        times.append((time.perf_counter() - started) * 1000)
        assert response.status_code == 200, (path, response.status_code, response.text[:300])
        size = len(response.content)
    return times[0], statistics.median(times[1:]), size


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--log-mb", type=int, default=50)
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    warnings.simplefilter("ignore")  # starlette's TestClient warns about its httpx transport
    from fastapi.testclient import TestClient

    with tempfile.TemporaryDirectory(prefix="sandpit-bench-ui-") as tmp:
        state = Path(tmp)
        url = f"sqlite:///{state / 'sandpit.db'}"
        migrate(url)
        log = state / "build.jsonl"
        size = write_log(log, args.log_mb)
        job_id = fill(url, args.runs, log)
        settings = ApiSettings(database_url=url, redis_url="redis://127.0.0.1:9/0", state_dir=state,
                               tokens=parse_tokens(f"ci:{TOKEN}:trusted"))
        print(f"{args.runs} runs; a job log of {size / 1e6:.1f} MB; first request, then the median of {args.repeat}")
        failed = False
        with TestClient(create_app(settings, publisher=NoPublisher())) as client:
            client.get("/ui/login")
            nonce = client.cookies.get("sandpit_login")
            client.post("/ui/login", data={"csrf": nonce, "method": "token", "token": TOKEN})
            pages = [("runs list, first page", "/ui/runs"),
                     ("runs list, status=failed", "/ui/runs?status=failed"),
                     ("runs list, one repository", "/ui/runs?repository=acme/app"),
                     ("API GET /api/v1/runs", "/api/v1/runs"),
                     (f"job page, {size / 1e6:.0f} MB log", f"/ui/jobs/{job_id}"),
                     ("job page, the log's end", f"/ui/jobs/{job_id}?at=end")]
            for name, path in pages:
                headers = {"Authorization": f"Bearer {TOKEN}"} if path.startswith("/api") else None
                if headers:
                    client.headers.update(headers)
                first, median, body = timed(client, path, args.repeat)
                verdict = "ok" if median <= GOAL_MS else f"over the {GOAL_MS:.0f} ms goal"
                failed |= median > GOAL_MS
                print(f"  {name:<28} first {first:7.1f} ms   median {median:7.1f} ms   "
                      f"{body / 1024:7.0f} KiB  {verdict}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
