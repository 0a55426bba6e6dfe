"""The engine's seam to the network (worker/sandbox/network/egress.py), with files only: no root.

The real thing (a pooled or freshly made namespace under a real container) is tested by
tests/sandbox/network/test_pool.py and tests/sandbox/test_egress.py; here: what the seam imports, and
what ``JobEgress`` does with what it holds.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import Future
from pathlib import Path
from typing import cast

import pytest

from tests.unit.network.test_pool_client import HEAVY
from worker.sandbox.network.egress import JobEgress, ReadyNetwork
from worker.sandbox.network.pool.claim import PooledNetwork

TYPE_CHECKING = False
if TYPE_CHECKING:
    from worker.sandbox.network.job import JobNetwork

REPO = Path(__file__).parents[3]


def test_opening_a_pooled_network_imports_nothing_heavy() -> None:
    """Importing the seam (what `sandpit exec --network egress` does on its way to a pooled namespace)
    loads none of the modules the claim path must not load."""
    code = ("import sys; before = set(sys.modules); "
            "from worker.sandbox.network.egress import open_for_job; "
            "print(sorted(set(sys.modules) - before))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    loaded = set(json.loads(done.stdout.replace("'", '"')))
    assert not loaded & HEAVY, loaded & HEAVY
    assert not any(name.startswith("pyroute2") for name in loaded)


def pooled(tmp_path: Path) -> PooledNetwork:
    """A claimed entry as the claim leaves it: a namespace fd (this process's own, which the test may
    open without root) and a lease fd."""
    netns = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    lease = os.open(tmp_path / "lease", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    return PooledNetwork(netns, lease, b"nameserver 198.51.100.53\n", slot=3, remaining=5)


def test_a_pooled_network_is_ready_at_once_and_closed_once(tmp_path: Path) -> None:
    """A pooled namespace is ready without waiting (its path and resolv.conf); closing drops both of
    its fds, and a second close does nothing."""
    claimed = pooled(tmp_path)
    path = claimed.netns_path
    with JobEgress(None, claimed, None) as egress:
        assert egress.ready() == ReadyNetwork(path, b"nameserver 198.51.100.53\n")
        assert os.path.exists(path)
    assert claimed.closed and not os.path.exists(path)
    egress.close()
    assert claimed.closed


class Made:
    """Stands for a JobNetwork: what JobEgress reads of it, and whether it was closed."""

    netns_path = "/proc/self/fd/99"
    resolv_conf = None
    closes = 0

    def close(self) -> None:
        self.closes += 1


def test_a_network_being_made_is_waited_for_and_closed_once_made() -> None:
    """A network made on another thread: ready() gives what it became (no resolv.conf: empty), close()
    closes it once, and a network whose making failed raises from ready() and closes as nothing."""
    made = Made()
    future: Future[Made] = Future()
    future.set_result(made)
    egress = JobEgress(None, None, cast("Future[JobNetwork]", future))
    assert egress.ready() == ReadyNetwork("/proc/self/fd/99", b"")
    egress.close()
    egress.close()
    assert made.closes == 1
    failed: Future[Made] = Future()
    failed.set_exception(OSError("no bridge"))
    broken = JobEgress(None, None, cast("Future[JobNetwork]", failed))
    with pytest.raises(OSError, match="no bridge"):
        broken.ready()
    broken.close()
