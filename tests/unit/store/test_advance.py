"""The pure advance rules: what runs next, a run's status, and retry, as tables of cases."""

from __future__ import annotations

import pytest

from pipelines.language.model import Retry
from pipelines.store.advance import JobState, decide_advance, derive_run_status, failure_kind, should_retry


def J(name: str, status: str, when: str = "on_success", needs: tuple[str, ...] = (), **kw: object) -> JobState:
    return JobState(name, status, when, bool(kw.get("allow", False)), needs, kw.get("reason"))  # type: ignore[arg-type]


ADVANCE_CASES = [
    ("no needs: queued at once", [J("a", "created")], {"a": ("queued", None)}),
    ("waits for a running need", [J("a", "running"), J("b", "created", needs=("a",))], {}),
    ("need succeeded", [J("a", "succeeded"), J("b", "created", needs=("a",))], {"b": ("queued", None)}),
    (
        "need failed: skipped with dependency_failed",
        [J("a", "failed"), J("b", "created", needs=("a",))],
        {"b": ("skipped", "dependency_failed")},
    ),
    (
        "failure propagates down the chain in one pass",
        [J("a", "error"), J("b", "created", needs=("a",)), J("c", "created", needs=("b",))],
        {"b": ("skipped", "dependency_failed"), "c": ("skipped", "dependency_failed")},
    ),
    (
        "allowed failure counts as success",
        [J("a", "failed", allow=True), J("b", "created", needs=("a",))],
        {"b": ("queued", None)},
    ),
    (
        "cancelled need counts as a failure",
        [J("a", "cancelled", reason="cancelled"), J("b", "created", needs=("a",))],
        {"b": ("skipped", "dependency_failed")},
    ),
    (
        "on_failure runs after a failure",
        [J("a", "failed"), J("n", "created", "on_failure", ("a",))],
        {"n": ("queued", None)},
    ),
    (
        "on_failure skipped without reason when nothing failed",
        [J("a", "succeeded"), J("n", "created", "on_failure", ("a",))],
        {"n": ("skipped", None)},
    ),
    (
        "on_failure ignores allowed failures",
        [J("a", "failed", allow=True), J("n", "created", "on_failure", ("a",))],
        {"n": ("skipped", None)},
    ),
    (
        "a skipped on_failure job does not block on_success dependents",
        [J("n", "skipped", "on_failure"), J("b", "created", needs=("n",))],
        {"b": ("queued", None)},
    ),
    (
        "on_failure sees failures upstream of a skipped need",
        [
            J("a", "failed"),
            J("b", "skipped", needs=("a",), reason="dependency_failed"),
            J("n", "created", "on_failure", ("b",)),
        ],
        {"n": ("queued", None)},
    ),
    (
        "always runs after success and failure alike",
        [J("a", "failed"), J("x", "created", "always", ("a",))],
        {"x": ("queued", None)},
    ),
    (
        "always still waits for running needs",
        [J("a", "running"), J("x", "created", "always", ("a",))],
        {},
    ),
    ("manual waits as manual", [J("m", "created", "manual")], {"m": ("manual", None)}),
    (
        "manual after a failure is skipped",
        [J("a", "failed"), J("m", "created", "manual", ("a",))],
        {"m": ("skipped", "dependency_failed")},
    ),
    (
        "a blocking manual job holds its dependents",
        [J("m", "manual"), J("b", "created", needs=("m",))],
        {},
    ),
    (
        "a non-blocking manual job does not",
        [J("m", "manual", "manual", allow=True), J("b", "created", needs=("m",))],
        {"b": ("queued", None)},
    ),
    (
        "a job made manual now unblocks its dependents in the same pass",
        [J("m", "created", "manual", allow=True), J("b", "created", needs=("m",))],
        {"m": ("manual", None), "b": ("queued", None)},
    ),
    (
        "delayed behaves as on_success",
        [J("a", "succeeded"), J("d", "created", "delayed", ("a",))],
        {"d": ("queued", None)},
    ),
    ("unknown needs are ignored", [J("b", "created", needs=("gone",))], {"b": ("queued", None)}),
    ("final and queued jobs are left alone", [J("a", "succeeded"), J("b", "queued")], {}),
]


@pytest.mark.parametrize(("case", "jobs", "expected"), ADVANCE_CASES, ids=[c[0] for c in ADVANCE_CASES])
def test_decide_advance(case: str, jobs: list[JobState], expected: dict[str, tuple[str, str | None]]) -> None:
    """Each waiting job gets the GitLab decision its needs' states call for."""
    got = {d.name: (d.status, d.reason) for d in decide_advance(jobs, run_cancelled=False)}
    assert got == expected, case


def test_cancelled_run_cancels_every_waiting_job() -> None:
    """In a cancelled run nothing starts: created and manual jobs are cancelled, even always ones."""
    jobs = [J("a", "succeeded"), J("x", "created", "always", ("a",)), J("m", "manual", "manual")]
    got = {d.name: (d.status, d.reason) for d in decide_advance(jobs, run_cancelled=True)}
    assert got == {"x": ("cancelled", "cancelled"), "m": ("cancelled", "cancelled")}


STATUS_CASES = [
    ("every job succeeded", [J("a", "succeeded"), J("b", "succeeded")], False, "succeeded"),
    ("nothing started", [J("a", "created")], False, "created"),
    ("a job queued", [J("a", "succeeded"), J("b", "queued")], False, "running"),
    ("a job running beats a failure", [J("a", "failed"), J("b", "running")], False, "running"),
    ("a failed job", [J("a", "failed"), J("b", "skipped", reason="dependency_failed")], False, "failed"),
    ("an errored job", [J("a", "error", reason="worker_lost")], False, "failed"),
    ("an allowed failure", [J("a", "failed", allow=True), J("b", "succeeded")], False, "succeeded"),
    ("skipped jobs do not fail a run", [J("a", "succeeded"), J("n", "skipped", "on_failure")], False, "succeeded"),
    ("a cancelled job", [J("a", "cancelled", reason="cancelled")], False, "cancelled"),
    ("failure beats a cancelled job", [J("a", "failed"), J("b", "cancelled")], False, "failed"),
    ("blocked on a manual job", [J("a", "succeeded"), J("m", "manual")], False, "manual"),
    ("a non-blocking manual job", [J("a", "succeeded"), J("m", "manual", allow=True)], False, "succeeded"),
    ("a cancelled run", [J("a", "running")], True, "cancelled"),
    ("no jobs", [], False, "succeeded"),
]


@pytest.mark.parametrize(("case", "jobs", "cancelled", "expected"), STATUS_CASES, ids=[c[0] for c in STATUS_CASES])
def test_derive_run_status(case: str, jobs: list[JobState], cancelled: bool, expected: str) -> None:
    """A run's status follows from its jobs' statuses."""
    assert derive_run_status(jobs, run_cancelled=cancelled) == expected, case


RETRY_CASES = [
    ("no retry configured", Retry(), "failed", "exit_code", 1, 1, False),
    ("retry: 1, first failure", Retry(1), "failed", "exit_code", 1, 1, True),
    ("retry: 1, second failure", Retry(1), "failed", "exit_code", 1, 2, False),
    ("success is never retried", Retry(2), "succeeded", None, 0, 1, False),
    ("cancel is never retried", Retry(2), "cancelled", "cancelled", None, 1, False),
    ("platform error retried by always", Retry(1), "error", "worker_lost", None, 1, True),
    ("when lists the kind", Retry(2, ("script_failure",)), "failed", "oom", None, 1, True),
    ("when lists another kind", Retry(2, ("runner_system_failure",)), "failed", "exit_code", 1, 1, False),
    (
        "worker_lost is a runner system failure",
        Retry(2, ("runner_system_failure",)),
        "error",
        "worker_lost",
        None,
        1,
        True,
    ),
    ("timeout kind", Retry(2, ("job_execution_timeout",)), "failed", "timeout", None, 1, True),
    ("exit code listed", Retry(2, ("always",), (137,)), "failed", "exit_code", 137, 1, True),
    ("exit code not listed", Retry(2, ("always",), (137,)), "failed", "exit_code", 1, 1, False),
    ("exit codes need a code", Retry(2, ("always",), (137,)), "error", "worker_lost", None, 1, False),
    (
        "when and exit_codes must both match",
        Retry(2, ("runner_system_failure",), (3,)),
        "failed",
        "exit_code",
        3,
        1,
        False,
    ),
]


@pytest.mark.parametrize(
    ("case", "retry", "status", "reason", "exit_code", "attempt", "expected"),
    RETRY_CASES,
    ids=[c[0] for c in RETRY_CASES],
)
def test_should_retry(
    case: str, retry: Retry, status: str, reason: str | None, exit_code: int | None, attempt: int, expected: bool
) -> None:
    """retry: max / when / exit_codes decide whether an attempt is tried again (as GitLab)."""
    got = should_retry(retry, status=status, reason=reason, exit_code=exit_code, attempt=attempt)
    assert got is expected, case


@pytest.mark.parametrize(
    ("reason", "kind"),
    [
        ("exit_code", "script_failure"),
        ("log_limit", "script_failure"),
        ("timeout", "job_execution_timeout"),
        ("infra_error", "runner_system_failure"),
        (None, "unknown_failure"),
        ("mystery", "unknown_failure"),
    ],
)
def test_failure_kind(reason: str | None, kind: str) -> None:
    """Record reasons map to the failure kinds `retry: when` names."""
    assert failure_kind(reason) == kind
