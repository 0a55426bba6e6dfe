"""What happens next in a run, as pure functions of its jobs' states (GitLab semantics).

- :func:`decide_advance`: which waiting (``created``) jobs become ``queued``, ``manual`` or
  ``skipped`` now that some job reached a final state.
- :func:`derive_run_status`: a run's status from its jobs (through :class:`RunCounts`, the
  counters a transition updates instead of reading the run's jobs).
- :func:`decide`: the one rule of what a waiting job becomes once nothing it waits for is pending
  (:func:`decide_advance` applies it to a whole run; :mod:`pipelines.store.frontier` to the
  direct dependents of a job that changed).
- :func:`should_retry`: whether a failed attempt is retried (``retry: max / when / exit_codes``).

A predecessor (an entry of the job's ``depends_on``: its ``needs``, else every job of earlier
stages) counts as *ok* when it succeeded, failed with ``allow_failure``, was skipped because its
``when`` did not apply, or is a manual job that may fail (GitLab's non-blocking manual job). It
counts as *failed* when it failed, errored or was cancelled without ``allow_failure``, or was
itself skipped with ``dependency_failed``, so failure propagates down the whole graph.

>>> jobs = [JobState("build", "failed", "on_success", False, ()),
...         JobState("test", "created", "on_success", False, ("build",)),
...         JobState("notify", "created", "on_failure", False, ("build",))]
>>> [(d.name, d.status, d.reason) for d in decide_advance(jobs, run_cancelled=False)]
[('test', 'skipped', 'dependency_failed'), ('notify', 'queued', None)]
>>> derive_run_status([jobs[0], JobState("test", "skipped", "on_success", False, ("build",),
...                   "dependency_failed")], run_cancelled=False)
'failed'
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from pipelines.language.model import Retry

JobStatus = Literal["created", "queued", "running", "succeeded", "failed", "cancelled", "error", "skipped", "manual"]
RunStatus = Literal["created", "running", "manual", "succeeded", "failed", "cancelled"]
Outcome = Literal["pending", "ok", "failed"]

JOB_STATUSES: tuple[str, ...] = (
    "created",
    "queued",
    "running",
    "succeeded",
    "failed",
    "cancelled",
    "error",
    "skipped",
    "manual",
)
FINAL_JOB_STATUSES = frozenset({"succeeded", "failed", "cancelled", "error", "skipped"})
ACTIVE_JOB_STATUSES = frozenset({"queued", "running"})
FAILED_JOB_STATUSES = frozenset({"failed", "error"})

# Our record reasons as GitLab's failure kinds, the words `retry: when` speaks.
FAILURE_KINDS: dict[str, str] = {
    "exit_code": "script_failure",
    "oom": "script_failure",
    "pids_limit": "script_failure",
    "disk_quota": "script_failure",
    "log_limit": "script_failure",
    "timeout": "job_execution_timeout",
    "worker_lost": "runner_system_failure",
    "infra_error": "runner_system_failure",
    "invalid_spec": "unmet_prerequisites",
}
#: failures another attempt cannot mend, so no ``retry:`` tries them again (``always`` included):
#: a refused request (``invalid_spec``: an image the store does not have, a bad variable, artifacts
#: it takes that expired) is refused the same way the next time. GitLab likewise stopped
#: auto-retrying its missing_dependency_failure, which only spawned the same failure again.
NEVER_RETRIED = frozenset({"invalid_spec"})


@dataclass(frozen=True, slots=True)
class JobState:
    """What the advance rules need to know about one job of a run."""

    name: str
    status: str
    when: str
    allow_failure: bool
    depends_on: tuple[str, ...]
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class Decision:
    """A waiting job's next state."""

    name: str
    status: Literal["queued", "manual", "skipped", "cancelled"]
    reason: str | None = None


def outcome(job: JobState) -> Outcome:
    """How ``job`` counts for the jobs that depend on it.

    >>> outcome(JobState("lint", "failed", "on_success", True, ()))
    'ok'
    """
    if job.status in ("created", "queued", "running"):
        return "pending"
    if job.status == "manual":
        return "ok" if job.allow_failure else "pending"
    if job.status in ("failed", "error", "cancelled"):
        return "ok" if job.allow_failure else "failed"
    if job.status == "skipped":
        return "failed" if job.reason == "dependency_failed" else "ok"
    return "ok"


def _decide(job: JobState, states: dict[str, JobState]) -> Decision | None:
    outcomes = [outcome(states[name]) for name in job.depends_on if name in states]
    if "pending" in outcomes:
        return None
    status, reason = decide(job.when, upstream_failed="failed" in outcomes)
    return Decision(job.name, status, reason)


def decide(when: str, *, upstream_failed: bool) -> tuple[Literal["queued", "manual", "skipped"], str | None]:
    """A waiting job's next state once none of its predecessors is pending (the table in
    docs/store.md); the one place this rule is written.

    >>> decide("on_failure", upstream_failed=False)
    ('skipped', None)
    """
    if when == "always":
        return "queued", None
    if when == "on_failure":
        # Skipped with no reason: its condition did not apply, which is not a failure.
        return ("queued", None) if upstream_failed else ("skipped", None)
    if upstream_failed:
        return "skipped", "dependency_failed"
    if when == "manual":
        return "manual", None
    return "queued", None  # on_success, and delayed (start_in is not honoured yet)


def decide_advance(jobs: Sequence[JobState], *, run_cancelled: bool) -> tuple[Decision, ...]:
    """Every decision the current states allow, in the order of ``jobs``.

    A job that becomes skipped or non-blocking manual can unblock its own dependents, so this
    iterates to a fixed point. In a cancelled run nothing new starts: waiting jobs are cancelled.

    >>> jobs = [JobState("a", "succeeded", "on_success", False, ()),
    ...         JobState("b", "created", "manual", True, ("a",)),
    ...         JobState("c", "created", "on_success", False, ("b",))]
    >>> [(d.name, d.status) for d in decide_advance(jobs, run_cancelled=False)]
    [('b', 'manual'), ('c', 'queued')]
    """
    if run_cancelled:
        return tuple(Decision(j.name, "cancelled", "cancelled") for j in jobs if j.status in ("created", "manual"))
    states = {job.name: job for job in jobs}
    decided: dict[str, Decision] = {}
    changed = True
    while changed:
        changed = False
        for job in jobs:
            if job.name in decided or states[job.name].status != "created":
                continue
            decision = _decide(job, states)
            if decision is None:
                continue
            decided[job.name] = decision
            states[job.name] = JobState(
                job.name, decision.status, job.when, job.allow_failure, job.depends_on, decision.reason
            )
            changed = True
    return tuple(decided[job.name] for job in jobs if job.name in decided)


def derive_run_status(jobs: Sequence[JobState], *, run_cancelled: bool) -> RunStatus:
    """A run's status from its jobs: cancelled > running > manual (blocked) > failed > cancelled
    job > succeeded. Allowed failures and skipped jobs do not fail a run.

    >>> derive_run_status([JobState("a", "failed", "on_success", False, ())], run_cancelled=False)
    'failed'
    """
    counts = RunCounts()
    for job in jobs:
        counts.add(0, Standing(job.status, job.allow_failure, job.reason))
    return counts.status(run_cancelled=run_cancelled)


@dataclass(frozen=True, slots=True)
class Standing:
    """What a job's counts depend on: its status, whether its failure is allowed, its reason."""

    status: str
    allow_failure: bool = False
    reason: str | None = None

    @property
    def outcome(self) -> Outcome:
        return outcome(JobState("", self.status, "", self.allow_failure, (), self.reason))


@dataclass(slots=True)
class RunCounts:
    """A run's jobs counted by what its status and its stage-ordered jobs depend on, so a
    transition updates a few numbers instead of reading every job of the run (stored on the
    ``run`` row, revision 0004). ``stage_pending[k]`` / ``stage_failed[k]``: jobs of stage
    ``k`` whose outcome is pending / failed (a job that follows stage order waits for every
    job of the earlier stages: it is ready when their pending count is 0).

    >>> counts = RunCounts()
    >>> counts.add(0, Standing("running"))
    >>> counts.move(0, Standing("running"), Standing("failed", False, "exit_code"))
    (-1, 1)
    >>> counts.status(run_cancelled=False), counts.settled, counts.prefix_failed(1)
    ('failed', True, 1)
    """

    total: int = 0
    created: int = 0
    active: int = 0  # queued or running
    blocking: int = 0  # manual and may not fail: nothing after it moves until it is played
    failed: int = 0  # failed or error, not allowed
    cancelled: int = 0  # cancelled, not allowed
    stage_pending: list[int] = field(default_factory=list)
    stage_failed: list[int] = field(default_factory=list)

    def add(self, stage: int, standing: Standing, sign: int = 1) -> None:
        """Count (``sign`` 1) or uncount (-1) one job of ``stage`` standing as ``standing``
        (``sign`` n: n such jobs)."""
        status, allowed = standing.status, standing.allow_failure
        self.total += sign
        if status == "created":
            self.created += sign
        elif status in ACTIVE_JOB_STATUSES:
            self.active += sign
        elif status == "manual" and not allowed:
            self.blocking += sign
        elif status in FAILED_JOB_STATUSES and not allowed:
            self.failed += sign
        elif status == "cancelled" and not allowed:
            self.cancelled += sign
        kind = standing.outcome
        if kind != "ok":
            column = self.stage_pending if kind == "pending" else self.stage_failed
            column.extend([0] * (stage + 1 - len(column)))
            column[stage] += sign

    def move(self, stage: int, before: Standing, after: Standing) -> tuple[int, int]:
        """Count a job's change; returns how its pending and failed outcomes changed (-1, 0, 1)."""
        self.add(stage, before, -1)
        self.add(stage, after)
        old, new = before.outcome, after.outcome
        return (new == "pending") - (old == "pending"), (new == "failed") - (old == "failed")

    def prefix_pending(self, stage: int) -> int:
        """Jobs of the stages before ``stage`` still pending."""
        return sum(self.stage_pending[:stage])

    def prefix_failed(self, stage: int) -> int:
        """Jobs of the stages before ``stage`` that failed (for the jobs that follow stage order)."""
        return sum(self.stage_failed[:stage])

    @property
    def settled(self) -> bool:
        """Nothing of the run can move any more (a non-blocking manual job may still be played)."""
        return self.created == 0 and self.active == 0 and self.blocking == 0

    def status(self, *, run_cancelled: bool) -> RunStatus:
        """The run's status (see :func:`derive_run_status`)."""
        if run_cancelled:
            return "cancelled"
        if self.total == 0:
            return "succeeded"
        if self.created == self.total:
            return "created"
        if self.active:
            return "running"
        if self.created or self.blocking:
            return "manual"  # nothing can move until someone plays a blocking manual job
        if self.failed:
            return "failed"
        if self.cancelled:
            return "cancelled"
        return "succeeded"


def failure_kind(reason: str | None) -> str:
    """A record ``reason`` as the failure kind ``retry: when`` names.

    >>> failure_kind("timeout")
    'job_execution_timeout'
    """
    return FAILURE_KINDS.get(reason or "", "unknown_failure")


def should_retry(retry: Retry, *, status: str, reason: str | None, exit_code: int | None, attempt: int) -> bool:
    """Whether attempt number ``attempt`` (from 1), which ended ``status``, is tried again.

    As GitLab: at most ``retry.max`` retries; the failure kind must be listed in ``retry.when``
    (or ``always`` be), and when ``exit_codes`` is given the exit code must be one of them too.

    >>> should_retry(Retry(1, ("script_failure",), (137,)), status="failed", reason="exit_code",
    ...              exit_code=137, attempt=1)
    True
    >>> should_retry(Retry(2, ("always",), ()), status="failed", reason="invalid_spec",
    ...              exit_code=None, attempt=1)
    False
    """
    if status not in FAILED_JOB_STATUSES or attempt > retry.max or reason in NEVER_RETRIED:
        return False
    if "always" not in retry.when and failure_kind(reason) not in retry.when:
        return False
    return not retry.exit_codes or exit_code in retry.exit_codes
