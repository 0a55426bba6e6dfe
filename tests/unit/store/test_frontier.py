"""The incremental advance (frontier) decides exactly what the whole-run rules decide.

``decide_advance`` over every job is the reference; random runs (needs DAGs mixed with stage
order, every ``when``, allowed failures, manual jobs played or cancelled, retries) are driven
through both, step by step, and must agree on every job's status and the run's status.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import pytest

from pipelines.store.advance import JobState, RunCounts, Standing, decide_advance, derive_run_status
from pipelines.store.frontier import Change, MemoryGraph, Waiting, advance

WHENS = ("on_success", "on_success", "on_success", "on_failure", "always", "manual")


@dataclass
class Spec:
    name: str
    stage: int
    when: str
    allow_failure: bool
    depends_on: tuple[str, ...]
    follows_stages: bool


def random_run(rng: random.Random, size: int) -> list[Spec]:
    stages = rng.randint(1, 4)
    specs: list[Spec] = []
    for i in range(size):
        stage = min(stages - 1, i * stages // size)
        earlier = [s.name for s in specs if s.stage < stage]
        if specs and rng.random() < 0.5:
            before = [s.name for s in specs]
            needs = tuple(rng.sample(before, rng.randint(0, min(3, len(before)))))
            follows = False
        else:
            needs, follows = tuple(earlier), True
        when = rng.choice(WHENS)
        allowed = rng.random() < 0.2 or (when == "manual" and rng.random() < 0.7)
        specs.append(Spec(f"j{i}", stage, when, allowed, needs, follows))
    return specs


class Reference:
    """The run as the whole-run rules see it."""

    def __init__(self, specs: list[Spec]) -> None:
        self.specs = {s.name: s for s in specs}
        self.state = {s.name: Standing("created", s.allow_failure) for s in specs}

    def states(self) -> list[JobState]:
        return [JobState(n, st.status, self.specs[n].when, st.allow_failure, self.specs[n].depends_on, st.reason)
                for n, st in self.state.items()]

    def settle(self) -> None:
        for d in decide_advance(self.states(), run_cancelled=False):
            self.state[d.name] = Standing(d.status, self.state[d.name].allow_failure, d.reason)


class Incremental:
    """The same run through RunCounts, a MemoryGraph and the frontier."""

    def __init__(self, specs: list[Spec]) -> None:
        self.specs = {s.name: s for s in specs}
        edges: dict[str, list[str]] = {}
        self.waiting = []
        for position, s in enumerate(specs):
            edged = () if s.follows_stages else s.depends_on
            for name in edged:
                edges.setdefault(name, []).append(s.name)
            self.waiting.append(Waiting(s.name, position, s.stage, s.when, s.allow_failure, s.follows_stages,
                                        len(edged)))
        self.graph = MemoryGraph(self.waiting, edges)
        self.counts = RunCounts(stage_pending=[0] * 4, stage_failed=[0] * 4)
        self.state = {s.name: Standing("created", s.allow_failure) for s in specs}
        for s in specs:
            self.counts.add(s.stage, self.state[s.name])
        self._apply(advance(self.counts, self.graph, (), ready=self.graph.ready(self.counts), run_cancelled=False))

    def _apply(self, settled: list) -> None:
        self.graph.mark(s.job.id for s in settled)
        for s in settled:
            self.state[s.job.id] = Standing(s.status, s.job.allow_failure, s.reason)

    def change(self, name: str, after: Standing) -> None:
        before, self.state[name] = self.state[name], after
        if before.status == "created":
            self.graph.mark([name])  # cancelled while waiting
        change = Change(name, self.specs[name].stage, before, after)
        self._apply(advance(self.counts, self.graph, [change], run_cancelled=False))


def step(rng: random.Random, ref: Reference, inc: Incremental) -> bool:
    """One random transition applied to both; False when nothing can move."""
    movable = [n for n, st in ref.state.items() if st.status in ("queued", "running", "manual", "created")]
    if not movable:
        return False
    name = rng.choice(movable)
    current = ref.state[name]
    if current.status == "queued":
        after = Standing("running", current.allow_failure)
    elif current.status == "running":
        kind = rng.choice(("succeeded", "succeeded", "failed", "error", "cancelled", "queued"))  # queued: a retry
        allowed = current.allow_failure or (kind == "failed" and rng.random() < 0.2)  # allow_failure: exit_codes
        after = Standing(kind, allowed, None if kind in ("succeeded", "queued") else "exit_code")
    elif current.status == "manual" and rng.random() < 0.7:
        after = Standing("queued", current.allow_failure)  # played
    else:
        after = Standing("cancelled", current.allow_failure, "cancelled")  # cancel_job
    ref.state[name] = after
    ref.settle()
    inc.change(name, after)
    return True


@pytest.mark.parametrize("seed", range(150))
def test_frontier_agrees_with_the_whole_run_rules(seed: int) -> None:
    """Every job's status, the run's status and its end agree after every transition."""
    rng = random.Random(seed)
    specs = random_run(rng, rng.randint(1, 25))
    ref, inc = Reference(specs), Incremental(specs)
    ref.settle()
    for _ in range(200):
        assert inc.state == ref.state
        assert inc.counts.status(run_cancelled=False) == derive_run_status(ref.states(), run_cancelled=False)
        if not step(rng, ref, inc):
            break
    assert inc.state == ref.state
    settled = all(st.status not in ("created", "queued", "running") and not (st.status == "manual"
                  and not st.allow_failure) for st in ref.state.values())
    assert inc.counts.settled == settled


def test_a_job_following_stage_order_needs_no_edges() -> None:
    """A 3-stage run of jobs that follow stage order has no edges and still runs stage by stage."""
    specs = [Spec("a", 0, "on_success", False, (), True), Spec("b", 1, "on_success", False, ("a",), True),
             Spec("c", 2, "on_failure", False, ("a", "b"), True)]
    inc = Incremental(specs)
    assert inc.graph._edges == {}
    assert [n for n, st in inc.state.items() if st.status == "queued"] == ["a"]
    inc.change("a", Standing("running"))
    inc.change("a", Standing("failed", False, "exit_code"))
    assert inc.state["b"] == Standing("skipped", False, "dependency_failed")
    assert inc.state["c"].status == "queued"
