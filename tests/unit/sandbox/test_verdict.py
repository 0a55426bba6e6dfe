"""``classify_end``: the engine's one rule from a finished container to a status and a reason."""

from __future__ import annotations

import pytest

from pipelines.job_record import Reason, Status
from worker.sandbox.verdict import classify_end

R = Reason

# exit code, enforced, runtime error, oom kills, pids hits, disk full -> status, reason
CASES = [
    # the job's own ends
    (0, None, None, 0, 0, False, "succeeded", None),
    (1, None, None, 0, 0, False, "failed", "exit_code"),
    (2, None, None, 0, 0, False, "failed", "exit_code"),
    (143, None, None, 0, 0, False, "failed", "exit_code"),  # killed by a signal of its own doing
    # what sandpit enforced wins over everything the counters say
    (137, R.TIMEOUT, None, 1, 1, True, "failed", "timeout"),
    (137, R.OOM, None, 0, 0, False, "failed", "oom"),
    (137, R.PIDS_LIMIT, None, 0, 0, False, "failed", "pids_limit"),
    (137, R.LOG_LIMIT, None, 0, 0, False, "failed", "log_limit"),
    (143, R.CANCELLED, None, 0, 0, False, "cancelled", "cancelled"),
    (0, R.TIMEOUT, None, 0, 0, False, "failed", "timeout"),  # a limit never looks successful
    # then the cgroup's counters, OOM first
    (137, None, None, 1, 0, False, "failed", "oom"),
    (0, None, None, 1, 0, False, "failed", "oom"),  # a child was OOM-killed, the main process exited 0
    (1, None, None, 1, 3, True, "failed", "oom"),
    (1, None, None, 0, 3, True, "failed", "pids_limit"),
    (0, None, None, 0, 1, False, "failed", "pids_limit"),
    # then the disk
    (1, None, None, 0, 0, True, "failed", "disk_quota"),
    (0, None, None, 0, 0, True, "failed", "disk_quota"),  # nested subvolumes took it past the limit
    # the runtime's own failure is sandpit's, whatever else is known
    (1, None, "crun: cannot set up the user namespace", 0, 0, False, "error", "infra_error"),
    (None, None, "runc: exec failed", 1, 1, True, "error", "infra_error"),
]


@pytest.mark.parametrize(("code", "enforced", "runtime_error", "ooms", "pids", "disk_full", "status", "reason"),
                         CASES)
def test_table(code: int | None, enforced: Reason | None, runtime_error: str | None, ooms: int, pids: int,
               disk_full: bool, status: str, reason: str | None) -> None:
    """Each end gets the status and reason of the table in the module's docstring."""
    verdict = classify_end(code, enforced, runtime_error, oom_kills=ooms, pids_limit_hits=pids,
                           disk_quota_hit=lambda _failed: disk_full)
    assert (verdict.status, verdict.reason) == (status, reason)
    assert isinstance(verdict.status, Status) and (verdict.reason is None or isinstance(verdict.reason, Reason))
    assert verdict.message == runtime_error


@pytest.mark.parametrize(("code", "enforced", "ooms", "pids", "asked"), [
    (0, None, 0, 0, [False]),  # succeeded: is the disk over (nested subvolumes)?
    (3, None, 0, 0, [True]),  # failed: was the disk full?
    (137, R.TIMEOUT, 0, 0, []),  # explained already: the btrfs search is not paid
    (137, None, 1, 0, []),
    (1, None, 0, 2, []),
])
def test_the_disk_is_asked_only_when_nothing_else_explains_the_end(code: int, enforced: Reason | None, ooms: int,
                                                                   pids: int, asked: list[bool]) -> None:
    """``disk_quota_hit`` is called at most once, with whether the job failed, and only when needed."""
    calls: list[bool] = []

    def disk_quota_hit(failed: bool) -> bool:
        calls.append(failed)
        return False

    classify_end(code, enforced, None, oom_kills=ooms, pids_limit_hits=pids, disk_quota_hit=disk_quota_hit)
    assert calls == asked
