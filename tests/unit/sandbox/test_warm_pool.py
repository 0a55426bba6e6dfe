"""The warm sandbox pool's bookkeeping (worker/sandbox/warm.py), with stand-ins for the sandboxes;
the real ones are tests/sandbox/test_warm.py's."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from worker.sandbox.request import Limits, SandboxRequest
from worker.sandbox.seed import Seed
from worker.sandbox.warm import WarmPool, box_key, warm_eligible


@dataclass(eq=False)
class Standin:
    key: tuple[object, ...]
    made_at: float = field(default_factory=time.monotonic)
    living: bool = True
    closed: bool = False

    def alive(self) -> bool:
        return self.living

    def close(self) -> None:
        self.closed = True


def pool(capacity: int = 2, idle_s: float = 60.0) -> WarmPool:
    return WarmPool(capacity, idle_s)


def add(p: WarmPool, warm: Any) -> bool:
    return p.add(warm)


def test_a_job_takes_only_a_sandbox_of_its_kind_the_newest_first():
    p = pool(3)
    a1, b, a2 = Standin(("a",)), Standin(("b",)), Standin(("a",))
    assert all(add(p, w) for w in (a1, b, a2))
    assert p.take(("a",)) is a2 and p.take(("a",)) is a1 and p.take(("a",)) is None
    assert p.take(("c",)) is None and len(p) == 1 and not b.closed


def test_a_full_pool_closes_its_oldest_for_the_latest_kind():
    p = pool(2)
    old, new = Standin(("a",)), Standin(("b",))
    add(p, old)
    add(p, new)
    assert not add(p, Standin(("c",)))  # full: the caller closes the one it made
    assert p.make_room() and old.closed and not new.closed and len(p) == 1


def test_stale_and_dead_sandboxes_are_closed_not_taken():
    p = pool(3, idle_s=10)
    stale = Standin(("a",), made_at=time.monotonic() - 11)
    dead = Standin(("a",), living=False)
    add(p, stale)
    add(p, dead)
    assert p.take(("a",)) is None and stale.closed and dead.closed and len(p) == 0
    fresh, old = Standin(("a",)), Standin(("b",), made_at=time.monotonic() - 11)
    add(p, fresh)
    add(p, old)
    assert p.expire() == 1 and old.closed and not fresh.closed


def test_a_closed_pool_keeps_nothing():
    p = pool(2)
    waiting = Standin(("a",))
    add(p, waiting)
    p.close()
    assert waiting.closed and not p.make_room() and not add(p, Standin(("a",))) and len(p) == 0


def test_the_kind_is_every_limit_a_sandbox_is_made_with():
    base = SandboxRequest(argv=("/bin/sh", "-c", "true"))
    key = box_key("img", "crun", base)
    for other in (Limits(memory_bytes=1), Limits(cpus=0.5), Limits(pids=7), Limits(disk_bytes=1 << 20)):
        assert box_key("img", "crun", SandboxRequest(argv=base.argv, limits=other)) != key
    assert box_key("img", "crun", SandboxRequest(argv=base.argv, profile="strict")) != key
    assert box_key("other", "crun", base) != key and box_key("img", "runc", base) != key
    # what the job runs, its variables and its other limits are the job's own, not the sandbox's
    same = SandboxRequest(argv=("/bin/sh", "-c", "make"), env=(("A", "1"),), limits=Limits(timeout_s=5))
    assert box_key("img", "crun", same) == key


def test_which_jobs_may_start_warm():
    sh = SandboxRequest(argv=("/usr/bin/bash", "-c", "make"))
    assert warm_eligible(sh, "crun", None) and warm_eligible(sh, "crun", Seed())
    assert not warm_eligible(sh, "runc", None)
    assert not warm_eligible(SandboxRequest(argv=sh.argv, network="egress"), "crun", None)
    assert not warm_eligible(sh, "crun", Seed(files=(("a", Path(__file__)),)))
    assert not warm_eligible(SandboxRequest(argv=("/bin/sh", "script.sh")), "crun", None)
    assert not warm_eligible(SandboxRequest(argv=("node", "-c", "x")), "crun", None)
