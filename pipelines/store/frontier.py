"""The advance made incremental: a job's change decides only its direct dependents (pure).

:func:`pipelines.store.advance.decide_advance` looks at every job of a run to find what may
move; on a 20,000-job run every transition then read and weighed the whole run, O(N) per
transition and O(N²) per run, under the run's lock. Here a change is pushed along the job's
edges instead:

- a job that ``needs`` others (or whose predecessors are not exactly "every job of the earlier
  stages") keeps two counts, ``waiting_on`` (predecessors whose outcome is pending) and
  ``failed_on`` (predecessors that failed), updated through its edges when a predecessor's
  outcome changes; it is ready when ``waiting_on`` reaches 0;
- a job that follows stage order depends on every job of the earlier stages, which as edges
  would be O(N²); it reads the run's per-stage counts (:class:`~pipelines.store.advance.RunCounts`)
  instead, and the jobs of stage ``k`` are looked at when the stages before ``k`` have nothing
  pending any more.

A ready job is decided by :func:`~pipelines.store.advance.decide` (the same rule as
``decide_advance``, which stays the reference: a unit test checks that both agree), and a
decision that changes its outcome (skipped, a non-blocking manual job) is pushed on in turn.
How dependents are found and counted is the :class:`Graph`'s business: rows in the store, plain
objects when a run is created.

>>> from pipelines.store.advance import RunCounts, Standing
>>> build = Waiting("b", 0, 0, "on_success", False, follows_stages=True)
>>> test = Waiting("t", 1, 1, "on_success", False, follows_stages=True)
>>> graph = MemoryGraph([build, test], {})
>>> counts = RunCounts()
>>> for job in (build, test):
...     counts.add(job.stage, Standing("created"))
>>> [(s.job.id, s.status) for s in advance(counts, graph, (), ready=graph.ready(counts), run_cancelled=False)]
[('b', 'queued')]
>>> change = Change("b", 0, Standing("running"), Standing("failed", False, "exit_code"))
>>> [(s.job.id, s.status, s.reason) for s in advance(counts, graph, [change], run_cancelled=False)]
[('t', 'skipped', 'dependency_failed')]
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from pipelines.store.advance import RunCounts, Standing, decide


@dataclass(slots=True)
class Waiting:
    """A ``created`` job as the frontier sees it (``position``: its order in the plan)."""

    id: str
    position: int
    stage: int
    when: str
    allow_failure: bool
    follows_stages: bool
    waiting_on: int = 0
    failed_on: int = 0


@dataclass(frozen=True, slots=True)
class Change:
    """Job ``id`` of stage ``stage`` went from ``before`` to ``after``."""

    id: str
    stage: int
    before: Standing
    after: Standing


@dataclass(frozen=True, slots=True)
class Settled:
    """What a waiting job became."""

    job: Waiting
    status: str
    reason: str | None = None


class Graph(Protocol):
    """Where the frontier finds a job's waiting dependents."""

    def dependents(self, job_id: str, pending: int, failed: int) -> Iterable[Waiting]:
        """Add ``pending``/``failed`` to the counts of the still-waiting jobs with an edge from
        ``job_id``; return them with their new counts."""
        ...

    def followers(self, stage: int) -> Iterable[Waiting]:
        """The still-waiting jobs of ``stage`` that follow stage order."""
        ...


def advance(
    counts: RunCounts,
    graph: Graph,
    changes: Iterable[Change],
    *,
    ready: Iterable[Waiting] = (),
    run_cancelled: bool,
) -> list[Settled]:
    """Count ``changes`` in ``counts`` and decide every waiting job they (or ``ready``) let
    move, and the jobs those decisions let move in turn; the decisions in plan order. In a
    cancelled run nothing new is decided (cancelling settles the waiting jobs itself)."""
    work = deque(changes)
    decided: dict[str, Settled] = {}

    def settle(candidates: Iterable[Waiting]) -> None:
        for job in sorted(candidates, key=lambda j: j.position):
            if job.id in decided or run_cancelled:
                continue
            failed = counts.prefix_failed(job.stage) if job.follows_stages else job.failed_on
            status, reason = decide(job.when, upstream_failed=failed > 0)
            decided[job.id] = Settled(job, status, reason)
            work.append(Change(job.id, job.stage, Standing("created", job.allow_failure),
                               Standing(status, job.allow_failure, reason)))

    settle(ready)
    while work:
        change = work.popleft()
        pending, failed = counts.move(change.stage, change.before, change.after)
        if run_cancelled or not (pending or failed):
            continue
        candidates = [job for job in graph.dependents(change.id, pending, failed)
                      if job.waiting_on == 0 and job.id not in decided]
        if pending < 0:
            # the stages after this one whose predecessors have nothing pending any more
            for stage in range(change.stage + 1, len(counts.stage_pending) + 1):
                if counts.prefix_pending(stage) != 0:
                    break
                candidates += graph.followers(stage)
        settle(candidates)
    return sorted(decided.values(), key=lambda s: s.job.position)


class MemoryGraph:
    """A :class:`Graph` over plain objects: a run being created, a test."""

    def __init__(self, jobs: Sequence[Waiting], edges: Mapping[str, Sequence[str]]) -> None:
        self._by_id = {job.id: job for job in jobs}
        self._edges = edges  # job id -> ids of the jobs with an edge from it
        self._by_stage: dict[int, list[Waiting]] = {}
        for job in jobs:
            if job.follows_stages:
                self._by_stage.setdefault(job.stage, []).append(job)
        self._done: set[str] = set()

    def ready(self, counts: RunCounts) -> list[Waiting]:
        """The jobs with nothing to wait for (a new run's first decisions)."""
        found = [job for job in self._by_id.values() if not job.follows_stages and job.waiting_on == 0]
        for stage, jobs in self._by_stage.items():
            if counts.prefix_pending(stage) == 0:
                found += jobs
        return found

    def mark(self, job_ids: Iterable[str]) -> None:
        """Jobs that are no longer waiting (decided, or cancelled)."""
        self._done.update(job_ids)

    def dependents(self, job_id: str, pending: int, failed: int) -> list[Waiting]:
        found = []
        for dependent_id in self._edges.get(job_id, ()):
            if dependent_id in self._done:
                continue
            job = self._by_id[dependent_id]
            job.waiting_on += pending
            job.failed_on += failed
            found.append(job)
        return found

    def followers(self, stage: int) -> list[Waiting]:
        return [job for job in self._by_stage.get(stage, ()) if job.id not in self._done]
