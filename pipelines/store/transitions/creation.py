"""Creating a run: a plan laid out as rows, its first advance decided in memory, written once.

Every job is new, so the first advance is decided on plain objects (the frontier over a
:class:`~pipelines.store.frontier.MemoryGraph`) and the rows are written once, one multi-row
INSERT per table, in one short transaction: this is on the path of every API request (a
1,000-job run, bench/bench_store.py). A new job's row is an attribute bag, not a SQLModel
object: building 1,000 of those cost more than writing them (≈ 1 ms each).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, Literal, cast

from sqlmodel import Session

from pipelines.language.model import Job as PlannedJob
from pipelines.language.model import Plan
from pipelines.store.advance import RunCounts, Standing
from pipelines.store.auto_cancel import record_auto_cancel
from pipelines.store.frontier import MemoryGraph, Waiting, advance
from pipelines.store.ids import new_id
from pipelines.store.models import Job, Run
from pipelines.store.outbox import mark_queued
from pipelines.store.progress import set_counts, write_outbox
from pipelines.store.spec import job_to_spec, shared_variables, stored_spec_json
from pipelines.store.statements import INSERT_EDGES, INSERT_NEW_JOBS, INSERT_RUN, NEW_JOB, RUNS, json_text
from pipelines.store.transitions.step import settle

Trust = Literal["trusted", "untrusted"]
Source = Literal["cli", "api", "webhook"]
TRUST_LEVELS = ("trusted", "untrusted")
SOURCES = ("cli", "api", "webhook")
_CREATED = Standing("created")
# what layout_jobs does not set itself
_NEW_JOB_DEFAULTS = {name: NEW_JOB[name] for name in ("status", "reason", "queued_at", "finished_at", "failed_on",
                                                      "exit_code", "signal", "attempt", "lease_owner",
                                                      "lease_expires_at", "deadline_at", "cancel_requested",
                                                      "started_at", "duration_s", "log_path")}


@dataclass(frozen=True, slots=True)
class StoredRun:
    """What :func:`create_run` stored: the run, its jobs in plan order, the ids it queued
    (snapshots, not attached to any session)."""

    run: Run
    jobs: tuple[Job, ...]
    queued: tuple[str, ...]


def create_run(
    session: Session,
    plan: Plan,
    *,
    trust: Trust,
    source: Source,
    variables: Mapping[str, str],
    now: dt.datetime,
    pipeline: str = "",
    ref: str = "",
    sha: str = "",
    message: str = "",
    secrets: Mapping[str, str] | None = None,
    new_id: Callable[[], str] = new_id,
    run_id: str | None = None,
    mark_sent: bool = False,
) -> StoredRun:
    """Store a run and one job per planned job; jobs with nothing to wait for are queued (with
    outbox rows) and manual ones wait as ``manual``. Publish ``queued`` after the commit.

    ``secrets`` are stored for the worker to inject and mask; nothing that shows a run returns
    them. ``run_id``: the run's id, chosen by a caller that listens for the run's events before
    its jobs are published. ``mark_sent``: the outbox rows are written as published (the caller
    publishes right after the commit, and calls ``outbox.mark_unpublished`` if that fails)."""
    if trust not in TRUST_LEVELS:
        raise ValueError(f"trust must be one of {TRUST_LEVELS}, not {trust!r}")
    if source not in SOURCES:
        raise ValueError(f"source must be one of {SOURCES}, not {source!r}")
    run = Run(
        id=run_id or new_id(),
        created_at=now,
        trust=trust,
        source=source,
        pipeline=pipeline,
        variables=dict(variables),
        secrets=dict(secrets or {}),
        stages=list(plan.stages),
        ref=ref,
        sha=sha,
        message=message,
    )
    layout = layout_jobs(plan, run.id, new_id)
    run.job_variables = [list(pair) for pair in layout.job_variables]
    counts = RunCounts(stage_pending=[0] * len(layout.stages), stage_failed=[0] * len(layout.stages))
    for job in layout.jobs:
        counts.add(job.stage_index, _CREATED)
    graph = MemoryGraph(layout.waiting, layout.edges)
    by_id = {job.id: job for job in layout.jobs}
    queued = []
    for settled in advance(counts, graph, (), ready=graph.ready(counts), run_cancelled=False):
        job = by_id[settled.job.id]
        if settled.status == "queued":
            mark_queued(job, now)
            queued.append(job.id)
        elif settled.status == "manual":
            job.status = "manual"
        else:
            settle(job, settled.status, settled.reason, now)
    set_counts(run, counts, now)
    connection = session.connection()
    connection.execute(INSERT_RUN, [{c.name: getattr(run, c.name) for c in RUNS.columns}])
    record_auto_cancel(session, run.id, plan.auto_cancel)
    if layout.jobs:
        INSERT_NEW_JOBS.execute(connection, [vars(job) for job in layout.jobs])
    INSERT_EDGES.execute(
        connection,
        [{"job_id": before, "dependent_id": after} for before, afters in layout.edges.items() for after in afters],
    )
    write_outbox(connection, queued, now, sent=mark_sent)
    return StoredRun(run, tuple(layout.jobs), tuple(queued))


class _NewJob(SimpleNamespace):
    """A new job's row as an attribute bag (what ``create_run`` returns, like a detached Job);
    its ``spec`` is kept as the stored JSON text, and the whole spec is made only if asked for."""

    spec_json: str
    needs_json: str
    planned: PlannedJob

    @property
    def spec(self) -> dict[str, Any]:
        return job_to_spec(self.planned)


@dataclass(frozen=True, slots=True)
class JobLayout:
    """A plan's jobs as rows (attribute bags with a Job's attributes), with the frontier's view
    of them and their edges, and the variables every job starts with (stored once, on the run)."""

    stages: tuple[str, ...]
    jobs: list[Job]
    waiting: list[Waiting]
    edges: dict[str, list[str]]  # job id -> ids of its dependents
    job_variables: tuple[tuple[str, str], ...] = ()


def layout_jobs(plan: Plan, run_id: str, new_id: Callable[[], str] = new_id) -> JobLayout:
    """One job row per planned job. A job whose predecessors are every job of the earlier
    stages (the planner's rule when it has no ``needs``) *follows stage order*: it gets no edges
    and waits on the run's per-stage counts; any other job gets one edge per predecessor.

    Its stored spec (:func:`~pipelines.store.spec.stored_spec_json`) leaves out the variables
    every job starts with and, when its predecessors are the run's first jobs in plan order
    (stage order), their names: both O(N) per job, O(N²) per run."""
    stages = list(plan.stages)
    stage_of = {name: i for i, name in enumerate(stages)}
    for job in plan.jobs:
        if job.stage not in stage_of:  # the planner names only declared stages; be safe anyway
            stage_of[job.stage] = len(stages)
            stages.append(job.stage)
    earlier = [0] * (len(stages) + 1)  # jobs of the stages before index i
    for job in plan.jobs:
        earlier[stage_of[job.stage] + 1] += 1
    for i in range(1, len(earlier)):
        earlier[i] += earlier[i - 1]
    ids = {job.name: new_id() for job in plan.jobs}
    shared = shared_variables(plan.jobs)
    names = tuple(ids)
    jobs: list[Job] = []
    waiting: list[Waiting] = []
    edges: dict[str, list[str]] = {}
    for position, planned in enumerate(plan.jobs):
        stage = stage_of[planned.stage]
        before = [name for name in dict.fromkeys(planned.depends_on) if name in ids]
        follows = planned.needs is None and len(before) == earlier[stage]
        job_id = ids[planned.name]
        edged = () if follows else before
        for name in edged:
            edges.setdefault(ids[name], []).append(job_id)
        count = len(planned.depends_on)
        leading = planned.needs is None and count > 0 and planned.depends_on == names[:count]
        needs = list(planned.depends_on)  # what a snapshot shows; the row stores none for a leading job
        jobs.append(cast(Job, _NewJob(
            **_NEW_JOB_DEFAULTS, id=job_id, run_id=run_id, position=position, name=planned.name, stage=planned.stage,
            spec_json=stored_spec_json(planned, shared_variables=len(shared), leading_jobs=leading),
            planned=planned, needs=needs, needs_json="[]" if leading or not needs else json_text(needs),
            when=planned.when, allow_failure=planned.allow_failure.allowed, stage_index=stage,
            follows_stages=follows, waiting_on=len(edged), usage={}, result={},
        )))
        waiting.append(Waiting(job_id, position, stage, planned.when, planned.allow_failure.allowed, follows,
                               len(edged)))
    return JobLayout(tuple(stages), jobs, waiting, edges, shared)
