"""How a job whose container ran is judged: one rule from what the supervisor saw and what the
job's cgroup and disk counted to a status and a reason (pure).

In order, the first that applies wins:

=========================================  ===========  ==============
what happened                              status       reason
=========================================  ===========  ==============
the runtime could not run the job          error        infra_error (its message)
sandpit stopped it: cancel                 cancelled    cancelled
sandpit stopped it: a limit it enforced    failed       timeout, oom, pids_limit, log_limit
the cgroup counted an OOM kill             failed       oom
the cgroup refused a fork (pids.max)       failed       pids_limit
its disk is full (or escaped its limit)    failed       disk_quota
it exited 0                                succeeded    None
it exited non-zero                         failed       exit_code
=========================================  ===========  ==============

A limit is named even when the job's command then exited 0 (a job that hit its memory limit never
looks successful). The disk is judged last and only when nothing else explains the end: asking
costs a btrfs tree search (and, when the job failed, a commit), so ``disk_quota_hit`` is a callable,
called at most once, with whether the job failed.

>>> classify_end(0, None, None, oom_kills=0, pids_limit_hits=0, disk_quota_hit=lambda failed: False)
Verdict(status=<Status.SUCCEEDED: 'succeeded'>, reason=None, message=None)
>>> str(classify_end(137, None, None, oom_kills=1, pids_limit_hits=0, disk_quota_hit=lambda failed: False).reason)
'oom'
"""

from __future__ import annotations

from pipelines.job_record import Reason, Status, Verdict
from worker import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable


def classify_end(exit_code: int | None, enforced: Reason | None, runtime_error: str | None, *, oom_kills: int,
                 pids_limit_hits: int, disk_quota_hit: Callable[[bool], bool]) -> Verdict:
    """The verdict on a finished container: ``exit_code`` of its process (128+N for signal N),
    ``enforced`` the limit or cancel sandpit stopped it for, ``runtime_error`` the runtime's own
    failure; ``oom_kills`` and ``pids_limit_hits`` the cgroup's counters; ``disk_quota_hit(failed)``
    whether the job's disk was full (see the table above)."""
    if runtime_error:
        return Verdict(Status.ERROR, Reason.INFRA_ERROR, runtime_error)
    reason = enforced
    if reason is None and oom_kills > 0:
        reason = Reason.OOM
    if reason is None and pids_limit_hits > 0:
        reason = Reason.PIDS_LIMIT
    if reason is None and disk_quota_hit(exit_code != 0):
        reason = Reason.DISK_QUOTA
    if reason is None:
        return Verdict(Status.SUCCEEDED, None) if exit_code == 0 else Verdict(Status.FAILED, Reason.EXIT_CODE)
    return Verdict(Status.CANCELLED if reason is Reason.CANCELLED else Status.FAILED, reason)
