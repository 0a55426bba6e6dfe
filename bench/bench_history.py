"""Benchmark: what one job costs with 100,000 finished jobs in the store, against an empty store.

    .venv/bin/python bench/bench_history.py [--jobs 100000] [--baseline-jobs 250] [--rounds 60]
                                            [--backends sqlite,postgresql] [--explain]

Per backend, two databases side by side: one empty, one filled with ``--jobs`` finished jobs in
``--runs`` runs, with the rows the real store keeps for them (attempts, artifacts, ``needs`` edges,
published outbox rows, web-hook links and deliveries, sent commit statuses, old workers). The
history is made from template runs driven through the store's own functions (``create_run``,
``claim_job``, ``finish_job``, ``cancel_run``) and then copied with new ids and shifted times by
many-row INSERTs (SQLite: the driver's ``executemany``; PostgreSQL: SQLAlchemy's batched
``VALUES``), not job by job. PostgreSQL gets an ``ANALYZE`` after the fill, as autovacuum gives
a table that grew; SQLite none (sandpit never runs one, so its plans are made without statistics).

Each round does, on the empty and on the full database in turn (which one goes first alternates),
what one job costs the service, each step timed on its own (time.perf_counter):

- ``admission``: the runs in flight of a submitter (the policy's cap, on every API submission);
- ``create``: a one-job run created as ``POST /runs`` stores it (admission count, ``create_run``,
  ``record_submitter``, one transaction);
- ``claim``, ``renew`` (the lease keeper's renewal and stop check), ``finish`` (the result with one
  artifact and the run's advance);
- the worker's sweep: ``sweep leases`` (``expire_leases``), ``sweep queued`` (``requeue_stale``
  and ``pending_outbox``), ``sweep artifacts`` (``expire_artifacts``);
- ``retention``: one whole collection (pipelines/retention.py ``collect``) on an empty state dir;
- the API's reads: ``GET run`` and ``GET job`` of a run the history holds (the empty store: the one
  this round made), ``GET runs`` first pages (no filter; ``status=running``; ``status=failed``;
  ``ref=main``; ``repository=acme/app``; ``source=webhook``), ``GET workers``, ``GET /metrics``.

Reported per step: medians and p90 in ms, empty and full side by side, and their ratio. With
``--explain`` it also prints every statement a step ran on the full database whose plan reads a
whole ``job`` or ``run`` table or index (SQLite ``EXPLAIN QUERY PLAN``, PostgreSQL ``EXPLAIN``).
The goal: no step costs more with the history than without it (ratio ≈ 1).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import random
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import sqlalchemy as sa  # noqa: E402
from sqlalchemy.engine import Engine  # noqa: E402

from pipelines.language.model import Plan  # noqa: E402
from pipelines.language.planner import plan  # noqa: E402
from pipelines.retention import RetentionSettings, collect  # noqa: E402
from pipelines.store import listing, reads  # noqa: E402
from pipelines.store.db import make_engine, migrate, session_scope  # noqa: E402
from pipelines.store.inflight import count_runs_in_flight, record_submitter  # noqa: E402
from pipelines.store.models import (  # noqa: E402
    Artifact,
    CommitStatus,
    Job,
    JobAttempt,
    JobEdge,
    Outbox,
    Repository,
    RepositoryRun,
    Run,
    WebhookDelivery,
    WorkerPresence,
)
from pipelines.store.outbox import pending_outbox, requeue_stale  # noqa: E402
from pipelines.store.retention import expire_artifacts  # noqa: E402
from pipelines.store.transitions import cancel_run, claim_job, create_run, expire_leases, finish_job, renew_lease  # noqa: E402
from pipelines.store.workers import WorkerInfo, list_workers, register_worker  # noqa: E402

NOW = dt.datetime(2030, 6, 1, tzinfo=dt.UTC)
HISTORY_DAYS = 30
TABLE: dict[str, Any] = {
    m.__tablename__: m.__table__  # type: ignore[attr-defined]
    for m in (Run, Job, JobEdge, JobAttempt, Artifact, Outbox, Repository, RepositoryRun, WebhookDelivery,
              CommitStatus, WorkerPresence)
}
HISTORY_PIPELINE = """\
stages: [build, test, deploy]
build:
  stage: build
  script: [make]
  artifacts: {paths: [dist/], expire_in: 60 days}
test-1: {stage: test, script: [pytest], needs: [build]}
test-2: {stage: test, script: [pytest], needs: [build]}
lint: {stage: test, script: [ruff]}
deploy: {stage: deploy, script: [ship]}
"""
ONE_JOB = "job:\n  script: ['true']\n  artifacts: {paths: [out/], expire_in: 1 day}\n"
SUBMITTERS = ("token:ci", "token:ci", "token:ci", "token:alice", "token:bob")


def record(status: str = "succeeded", artifacts: int = 0, exit_code: int = 0) -> dict[str, Any]:
    return {"status": status, "reason": None if status == "succeeded" else "exit_code", "exit_code": exit_code,
            "signal": None, "duration_s": 1.5, "usage": {"cpu_s": 0.4, "memory_peak_bytes": 18432000, "pids_peak": 4},
            "artifacts": [{"path": f"dist/file-{i}.tar", "size": 1024 * (i + 1), "sha256": uuid.uuid4().hex * 2}
                          for i in range(artifacts)]}


def planned(text: str) -> Plan:
    result = plan({".gitlab-ci.yml": text})
    assert isinstance(result, Plan), result
    return result


# --- the history --------------------------------------------------------------------------------


def drive(engine: Engine, run_id: str, now: dt.datetime, failing: str | None) -> None:
    """Run every job of ``run_id`` to its end through the store (``failing`` fails)."""
    while True:
        with session_scope(engine) as session:
            ready = reads.queued_job_ids(session, run_id)
        if not ready:
            return
        for job_id in ready:
            now += dt.timedelta(seconds=5)
            with session_scope(engine) as session:
                job = claim_job(session, job_id, "worker-old", now, lease_s=30)
            assert job is not None
            result = record("failed", exit_code=1) if job.name == failing else record(
                artifacts=2 if job.name == "build" else 0)
            with session_scope(engine) as session:
                finish_job(session, job_id, job.attempt, result, now + dt.timedelta(seconds=3))


def templates(engine: Engine) -> list[dict[str, list[dict[str, Any]]]]:
    """Three finished runs made by the store itself (succeeded, failed, cancelled), each as its rows."""
    made = []
    for kind in ("succeeded", "failed", "cancelled"):
        with session_scope(engine) as session:
            run_id = create_run(session, planned(HISTORY_PIPELINE), trust="trusted", source="api", variables={"A": "1"},
                                now=NOW, pipeline=HISTORY_PIPELINE, ref="main", sha="0" * 40,
                                message="Template\n\nbody", mark_sent=True).run.id
        if kind == "cancelled":
            drive_one = next(iter(_queued(engine, run_id)))
            with session_scope(engine) as session:
                job = claim_job(session, drive_one, "worker-old", NOW, lease_s=30)
                assert job is not None
            with session_scope(engine) as session:
                cancel_run(session, run_id, NOW + dt.timedelta(seconds=2))
            with session_scope(engine) as session:
                finish_job(session, drive_one, job.attempt, record("cancelled"), NOW + dt.timedelta(seconds=3))
        else:
            drive(engine, run_id, NOW, failing="test-1" if kind == "failed" else None)
        made.append(_rows_of(engine, run_id))
    with session_scope(engine) as session:  # the templates themselves are not part of the history
        c = session.connection()
        for rows in made:
            c.execute(sa.delete(TABLE["run"]).where(TABLE["run"].c.id == rows["run"][0]["id"]))
    return made


def _queued(engine: Engine, run_id: str) -> list[str]:
    with session_scope(engine) as session:
        return reads.queued_job_ids(session, run_id)


def _rows_of(engine: Engine, run_id: str) -> dict[str, list[dict[str, Any]]]:
    with session_scope(engine) as session:
        c = session.connection()
        job_ids = [r.id for r in c.execute(sa.select(TABLE["job"].c.id).where(TABLE["job"].c.run_id == run_id))]

        def rows(table: str, column: str, keys: Sequence[str]) -> list[dict[str, Any]]:
            t = TABLE[table]
            return [dict(r._mapping) for r in c.execute(sa.select(t).where(t.c[column].in_(keys)))]

        return {"run": rows("run", "id", [run_id]), "job": rows("job", "run_id", [run_id]),
                "job_edge": rows("job_edge", "job_id", job_ids), "job_attempt": rows("job_attempt", "job_id", job_ids),
                "artifact": rows("artifact", "job_id", job_ids), "outbox": rows("outbox", "job_id", job_ids)}


def _shift(row: dict[str, Any], delta: dt.timedelta) -> dict[str, Any]:
    return {k: (v + delta if isinstance(v, dt.datetime) else v) for k, v in row.items()}


def fill(engine: Engine, jobs: int, seed: int = 7) -> int:
    """Copy the templates into runs of 5 jobs, ``jobs`` jobs in all, created over the past
    HISTORY_DAYS; returns the number of jobs written."""
    rng = random.Random(seed)  # noqa: S311 -- a reproducible history, nothing secret
    kinds = templates(engine)
    runs = jobs // len(kinds[0]["job"])
    with session_scope(engine) as session:
        c = session.connection()
        repo_id = str(uuid.uuid4())
        c.execute(sa.insert(TABLE["repository"]), [{
            "id": repo_id, "name": "acme/app", "forge": "gitea", "clone_url": "http://127.0.0.1:9/acme/app.git",
            "secret_sealed": "x", "token_sealed": None, "pipeline_path": ".gitlab-ci.yml", "default_branch": "main",
            "fork_policy": "approve", "created_at": NOW - dt.timedelta(days=90), "secret_rotated_at": None,
            "api_url": None}])
        # workers that came and went over the month (a fresh one's registration forgets the week-old)
        for i in range(40):
            seen = NOW - dt.timedelta(days=rng.uniform(0, 6.5))
            register_worker(session, WorkerInfo(f"host-{i}-{1000 + i}", f"host-{i}", "1", 8 << 30, 2.0, 2, ("crun",),
                                                (), "local", 10.0, seen), seen)
    written = 0
    batch: dict[str, list[dict[str, Any]]] = {name: [] for name in TABLE}
    for index in range(runs):
        kind = kinds[0 if rng.random() < 0.85 else 1 if rng.random() < 0.66 else 2]
        created = NOW - dt.timedelta(days=HISTORY_DAYS) + dt.timedelta(seconds=HISTORY_DAYS * 86400 * index / runs)
        delta = created - kinds[0]["run"][0]["created_at"]
        run_id = str(uuid.uuid4())
        ids = {row["id"]: str(uuid.uuid4()) for row in kind["job"]}
        webhook = rng.random() < 0.1
        run = _shift(kind["run"][0], delta)
        run.update(id=run_id, source="webhook" if webhook else "api",
                   ref="main" if rng.random() < 0.5 else f"feature/{rng.randrange(400)}",
                   sha=uuid.uuid4().hex + "0" * 8,
                   submitter="repo:acme/app" if webhook else rng.choice(SUBMITTERS))
        batch["run"].append(run)
        for row in kind["job"]:
            batch["job"].append({**_shift(row, delta), "id": ids[row["id"]], "run_id": run_id})
        for row in kind["job_edge"]:
            batch["job_edge"].append({"job_id": ids[row["job_id"]], "dependent_id": ids[row["dependent_id"]]})
        for name in ("job_attempt", "artifact", "outbox"):
            for row in kind[name]:
                new = {**_shift(row, delta), "job_id": ids[row["job_id"]]}
                new.pop("id")
                if name == "outbox":  # the worker that queued it published it
                    new["published_at"] = new["published_at"] or new["created_at"] + dt.timedelta(seconds=0.01)
                if name == "artifact":
                    new["sha256"] = uuid.uuid4().hex * 2
                    # half of them kept for good; the others expire after the bench's "now"
                    new["expires_at"] = None if rng.random() < 0.5 else NOW + dt.timedelta(days=rng.uniform(1, 60))
                batch[name].append(new)
        if webhook:
            batch["repository_run"].append({"run_id": run_id, "repo_id": repo_id, "kind": "push", "ref": run["ref"],
                                            "merge_request_iid": None, "from_fork": False, "created_at": created})
            batch["webhook_delivery"].append({
                "repo_id": repo_id, "delivery_id": str(uuid.uuid4()), "body_sha256": uuid.uuid4().hex * 2,
                "event": "push", "verdict": "accepted", "status_code": 201, "message": "", "run_id": run_id,
                "received_at": created})
            for state in ("pending", "success"):
                batch["commit_status"].append({
                    "repo_id": repo_id, "run_id": run_id, "sha": run["sha"], "project": "acme/app",
                    "context": "sandpit", "state": state, "description": "", "target_url": "", "created_at": created,
                    "attempts": 1, "next_attempt_at": None, "claimed_until": None, "sent_at": created,
                    "outcome": "201"})
        written += len(kind["job"])
        if len(batch["job"]) >= 5000 or index == runs - 1:
            _write(engine, batch)
            batch = {name: [] for name in TABLE}
    with engine.connect() as connection:
        if connection.dialect.name == "postgresql":
            connection.execution_options(isolation_level="AUTOCOMMIT").exec_driver_sql("ANALYZE")
    return written


def _write(engine: Engine, batch: dict[str, list[dict[str, Any]]]) -> None:
    with session_scope(engine) as session:
        c = session.connection()
        for name in ("run", "job", "job_edge", "job_attempt", "artifact", "outbox", "repository_run",
                     "webhook_delivery", "commit_status"):
            if batch[name]:
                c.execute(sa.insert(TABLE[name]), batch[name])


# --- the steps ----------------------------------------------------------------------------------


@dataclass
class Recorder:
    """The statements run on an engine while ``on`` (for ``--explain``)."""

    on: bool = False
    seen: list[tuple[str, Any]] = field(default_factory=list)

    def attach(self, engine: Engine) -> None:
        def before(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool) -> None:
            if self.on:
                self.seen.append((statement, parameters[0] if executemany and parameters else parameters))

        sa.event.listen(engine, "before_cursor_execute", before)


@dataclass
class Store:
    name: str  # empty | full
    engine: Engine
    state_dir: Path
    old_run: str | None  # a run of the history (GET run, GET job)
    old_job: str | None
    recorder: Recorder = field(default_factory=Recorder)
    samples: dict[str, list[float]] = field(default_factory=dict)
    scans: dict[str, set[str]] = field(default_factory=dict)
    clock: dt.datetime = NOW


FILTERS: dict[str, listing.RunFilter] = {
    "GET runs": listing.RunFilter(),
    "GET runs ?status=running": listing.RunFilter(statuses=("running",)),
    "GET runs ?status=failed": listing.RunFilter(statuses=("failed",)),
    "GET runs ?ref=main": listing.RunFilter(ref="main"),
    "GET runs ?repository=acme/app": listing.RunFilter(repository="acme/app"),
    "GET runs ?source=webhook": listing.RunFilter(sources=("webhook",)),
}
STEPS = ("admission", "create", "claim", "renew", "finish", "sweep leases", "sweep queued", "sweep artifacts",
         "retention", "GET run", "GET job", *FILTERS, "GET workers", "GET /metrics")


def one_round(store: Store, explain: bool) -> None:
    """Every step once on ``store`` (see the module docstring)."""
    engine = store.engine
    store.clock += dt.timedelta(seconds=10)
    now = store.clock
    one = planned(ONE_JOB)
    made: dict[str, Any] = {}

    def step(name: str, action: Callable[[], object]) -> None:
        store.recorder.on, store.recorder.seen = explain, []
        start = time.perf_counter()
        made[name] = action()
        store.samples.setdefault(name, []).append(time.perf_counter() - start)
        store.recorder.on = False
        if explain:
            store.scans.setdefault(name, set()).update(whole_scans(engine, store.recorder.seen))

    def admission() -> int:
        with session_scope(engine) as session:
            return count_runs_in_flight(session, "token:ci")

    def create() -> str:
        with session_scope(engine) as session:
            count_runs_in_flight(session, "token:ci")
            stored = create_run(session, one, trust="trusted", source="api", variables={}, now=now, pipeline=ONE_JOB,
                                ref="main", mark_sent=True)
            record_submitter(session, stored.run.id, "token:ci")
        return stored.queued[0]

    step("admission", admission)
    step("create", create)
    job_id = made["create"]

    def claim() -> Job:
        with session_scope(engine) as session:
            job = claim_job(session, job_id, "bench-worker", now, lease_s=30)
        assert job is not None
        return job

    step("claim", claim)
    attempt = made["claim"].attempt

    def renew() -> bool:
        with session_scope(engine) as session:
            renew_lease(session, job_id, "bench-worker", attempt, now, lease_s=30)
        return reads.stop_requested(engine, job_id)

    def finish() -> list[str]:
        with session_scope(engine) as session:
            return finish_job(session, job_id, attempt, record(artifacts=1), now + dt.timedelta(seconds=1))

    def sweep_leases() -> list[str]:
        with session_scope(engine) as session:
            return expire_leases(session, now)

    def sweep_queued() -> list[str]:
        with session_scope(engine) as session:
            return requeue_stale(session, now, older_than_s=30) + pending_outbox(session)

    def sweep_artifacts() -> list[Any]:
        with session_scope(engine) as session:
            return expire_artifacts(session, now)

    step("renew", renew)
    step("finish", finish)
    step("sweep leases", sweep_leases)
    step("sweep queued", sweep_queued)
    step("sweep artifacts", sweep_artifacts)
    step("retention", lambda: collect(engine, store.state_dir, RetentionSettings(), now, wait=True))
    run_id = store.old_run or _run_of(engine, job_id)
    shown_job = store.old_job or job_id
    step("GET run", lambda: reads.read_run_view(engine, run_id))

    def get_job() -> object:
        with session_scope(engine) as session:
            return reads.job_row(session, shown_job), reads.artifacts_of(session, shown_job)

    step("GET job", get_job)
    for name, wanted in FILTERS.items():
        def page(wanted: listing.RunFilter = wanted) -> object:
            with session_scope(engine) as session:
                return listing.list_runs(session, wanted)

        step(name, page)
    step("GET workers", lambda: list_workers(engine, now))

    def metrics() -> object:
        with session_scope(engine) as session:
            return reads.status_counts(session)

    step("GET /metrics", metrics)


def _run_of(engine: Engine, job_id: str) -> str:
    with session_scope(engine) as session:
        return reads.job_row(session, job_id).run_id


# --- plans --------------------------------------------------------------------------------------

HISTORY_TABLES = ("job", "run", "job_attempt", "job_edge", "artifact", "outbox", "webhook_delivery", "commit_status")


def whole_scans(engine: Engine, statements: Sequence[tuple[str, Any]]) -> set[str]:
    """The plan lines of ``statements`` that read a whole job or run table or index."""
    found: set[str] = set()
    with engine.connect() as connection:
        for statement, parameters in statements:
            head = statement.lstrip().split(None, 1)[0].upper()
            if head not in ("SELECT", "UPDATE", "DELETE", "WITH", "INSERT"):
                continue
            found |= {f"{line}  <-  {' '.join(statement.split())[:160]}"
                      for line in plan_scans(connection, statement, parameters)}
        connection.rollback()
    return found


def plan_scans(connection: sa.Connection, statement: str, parameters: Any) -> list[str]:
    """What in the plan of ``statement`` reads all of a history table (see tests/integration/store/
    test_history_scale.py, which asserts there is nothing)."""
    if connection.dialect.name == "sqlite":
        rows = connection.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, parameters).all()
        return [row[3] for row in rows if any(row[3].startswith(f"SCAN {t}") and
                                              (row[3] == f"SCAN {t}" or row[3].startswith(f"SCAN {t} "))
                                              for t in HISTORY_TABLES)]
    plan_json = connection.exec_driver_sql("EXPLAIN (FORMAT JSON) " + statement, parameters).scalar_one()
    out: list[str] = []

    def walk(node: dict[str, Any], limited: bool) -> None:
        relation = node.get("Relation Name")
        kind = node.get("Node Type", "")
        if relation in HISTORY_TABLES:
            if kind == "Seq Scan":
                out.append(f"Seq Scan on {relation}")
            elif "Index" in kind and "Index Cond" not in node and not (limited and "Filter" not in node):
                out.append(f"{kind} on {relation} using {node.get('Index Name')} (no condition)")
        for child in node.get("Plans", ()):
            walk(child, limited or kind == "Limit")

    walk(plan_json[0]["Plan"], False)
    return out


# --- databases ----------------------------------------------------------------------------------


@contextlib.contextmanager
def sqlite_pair(tmp: Path) -> Iterator[tuple[str, str]]:
    yield f"sqlite:///{tmp}/empty.db", f"sqlite:///{tmp}/full.db"


@contextlib.contextmanager
def postgres_pair(tmp: Path) -> Iterator[tuple[str, str]]:
    from tests.integration.postgres import missing_requirement, postgres_server

    missing = missing_requirement()
    if missing:
        raise SystemExit(f"postgresql: {missing}")
    with postgres_server() as server:
        admin = sa.create_engine(server.url(), isolation_level="AUTOCOMMIT")
        try:
            with admin.connect() as connection:
                for name in ("bench_empty", "bench_full"):
                    connection.exec_driver_sql(f"CREATE DATABASE {name}")
        finally:
            admin.dispose()
        yield server.url("bench_empty"), server.url("bench_full")


def pick_old(engine: Engine) -> tuple[str, str]:
    """A run in the middle of the history and its build job."""
    with session_scope(engine) as session:
        c = session.connection()
        runs = TABLE["run"]
        count = c.execute(sa.select(sa.func.count()).select_from(runs)).scalar_one()
        run_id = c.execute(sa.select(runs.c.id).order_by(runs.c.created_at).offset(count // 2).limit(1)).scalar_one()
        job_id = c.execute(sa.select(TABLE["job"].c.id).where(TABLE["job"].c.run_id == run_id,
                                                              TABLE["job"].c.name == "build")).scalar_one()
    return run_id, job_id


def bench_backend(name: str, pair: Callable[[Path], Any], args: argparse.Namespace) -> list[tuple[str, ...]]:
    with tempfile.TemporaryDirectory(prefix="sandpit-bench-history-") as tmp_text:
        tmp = Path(tmp_text)
        with pair(tmp) as (empty_url, full_url):
            stores = []
            for label, url in (("empty", empty_url), ("full", full_url)):
                migrate(url)
                engine = make_engine(url)
                state = tmp / f"state-{label}"
                state.mkdir()
                stores.append(Store(label, engine, state, None, None))
            try:
                fill(stores[0].engine, args.baseline_jobs)
                if args.baseline_jobs:
                    stores[0].old_run, stores[0].old_job = pick_old(stores[0].engine)
                started = time.perf_counter()
                written = fill(stores[1].engine, args.jobs)
                stores[1].old_run, stores[1].old_job = pick_old(stores[1].engine)
                print(f"{name}: {written:,} finished jobs written in {time.perf_counter() - started:.1f} s",
                      file=sys.stderr, flush=True)
                for store in stores:
                    store.recorder.attach(store.engine)
                    for _ in range(3):  # warm the pools and statement caches
                        one_round(store, explain=False)
                    store.samples.clear()
                for index in range(args.rounds):
                    for store in (stores if index % 2 == 0 else stores[::-1]):
                        one_round(store, explain=args.explain and index == 0)
                return report(name, stores)
            finally:
                for store in stores:
                    store.engine.dispose()


def p90(samples: list[float]) -> float:
    return statistics.quantiles(samples, n=10)[-1] if len(samples) > 1 else samples[0]


def report(backend: str, stores: list[Store]) -> list[tuple[str, ...]]:
    empty, full = stores
    lines = []
    for name in STEPS:
        e, f = empty.samples[name], full.samples[name]
        em, fm = statistics.median(e) * 1000, statistics.median(f) * 1000
        lines.append((backend, name, f"{em:.2f}", f"{p90(e) * 1000:.2f}", f"{fm:.2f}", f"{p90(f) * 1000:.2f}",
                      f"{fm / em:.2f}x" if em > 0 else "-"))
    for name in STEPS:
        for line in sorted(full.scans.get(name, ())):
            print(f"  {backend} {name}: {line}", file=sys.stderr)
    return lines


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--baseline-jobs", type=int, default=2500,
                        help="the small store's history (0: empty; 2,500: a full page for every filter)")
    parser.add_argument("--rounds", type=int, default=60)
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--explain", action="store_true", help="print the whole-table reads of each step")
    args = parser.parse_args()
    pairs = {"sqlite": sqlite_pair, "postgresql": postgres_pair}
    rows: list[tuple[str, ...]] = []
    for backend in args.backends.split(","):
        rows += bench_backend(backend, pairs[backend], args)
    print(f"\n{args.rounds} rounds, small and full store interleaved; ms (time.perf_counter), "
          f"Python {sys.version.split()[0]}\n")
    print(f"| database | step | empty median | empty p90 | {args.jobs // 1000}k jobs median | "
          f"{args.jobs // 1000}k jobs p90 | full / empty |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
