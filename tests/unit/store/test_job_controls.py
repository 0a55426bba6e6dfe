"""Which jobs a person may retry or play, and the sentence a refusal gives (pure rules)."""

from __future__ import annotations

import pytest

from pipelines.store.transitions.controls import play_refusal
from pipelines.store.transitions.retry import retry_refusal


@pytest.mark.parametrize(("job", "run", "refused"), [
    ("succeeded", "succeeded", None),
    ("failed", "failed", None),
    ("error", "running", None),
    ("cancelled", "cancelled", None),  # GitLab retries jobs of a cancelled pipeline too
    ("queued", "running", "still queued"),
    ("running", "running", "still running"),
    ("created", "running", "has not run yet"),
    ("manual", "manual", "play it instead"),
    ("skipped", "failed", "retry the job it depends on"),
    ("failed", "waiting_for_approval", "waiting for approval"),
    ("bogus", "running", "not one a job ends in"),
])
def test_retry_refusals(job: str, run: str, refused: str | None) -> None:
    """Only a finished job of a run not held for approval is retried; any other gets a reason."""
    reason = retry_refusal(job, run)
    assert reason is None if refused is None else (reason is not None and refused in reason)


@pytest.mark.parametrize(("job", "run", "cancelled", "refused"), [
    ("manual", "manual", False, None),
    ("manual", "succeeded", False, None),  # a manual job that may fail does not hold its run open
    ("manual", "cancelled", True, "run was cancelled"),
    ("created", "waiting_for_approval", False, "waiting for approval"),
    ("created", "running", False, "still waits"),
    ("succeeded", "succeeded", False, "retried instead"),
    ("skipped", "failed", False, "it is skipped)"),
    ("running", "running", False, "it is running"),
])
def test_play_refusals(job: str, run: str, cancelled: bool, refused: str | None) -> None:
    """Only a manual job of a live run is played; a finished one is pointed to retry."""
    reason = play_refusal(job, run, cancelled)
    assert reason is None if refused is None else (reason is not None and refused in reason)
