"""Address leases across processes (files and flock only: no root, no network)."""

from __future__ import annotations

import ipaddress
import multiprocessing
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from worker.sandbox.network.addresses import AddressPlan
from worker.sandbox.network.errors import AddressesExhausted
from worker.sandbox.network.leases import LeaseStore, ReapLock, remove_stale, stale_leases

SMALL = AddressPlan(ipaddress.IPv4Network("10.9.0.0/28"))  # 13 slots


def take_many(directory: str, count: int, queue: multiprocessing.Queue[list[int]]) -> None:
    store = LeaseStore(Path(directory), AddressPlan(ipaddress.IPv4Network("10.9.0.0/22")))
    leases = [store.acquire(f"job-{os.getpid()}-{i}", start=i * 7) for i in range(count)]
    queue.put([lease.slot for lease in leases])


@pytest.mark.parametrize(("processes", "per_process"), [(2, 50), (4, 60)])
def test_concurrent_processes_never_share_a_slot(tmp_path: Path, processes: int, per_process: int) -> None:
    """Several worker processes leasing at once from the same start points get distinct slots."""
    ctx = multiprocessing.get_context("spawn")
    queue: multiprocessing.Queue[list[int]] = ctx.Queue()
    workers = [ctx.Process(target=take_many, args=(str(tmp_path), per_process, queue))
               for _ in range(processes)]
    for worker in workers:
        worker.start()
    slots = [slot for _ in workers for slot in queue.get(timeout=60)]
    for worker in workers:
        worker.join(timeout=60)
    assert len(slots) == processes * per_process
    assert len(set(slots)) == len(slots)


def test_release_frees_the_slot_and_is_idempotent(tmp_path: Path) -> None:
    """A released slot can be leased again; releasing twice is harmless."""
    store = LeaseStore(tmp_path, SMALL)
    lease = store.acquire("a", start=3)
    assert lease.slot == 3 and store.held_slots() == [3]
    lease.release()
    lease.release()
    assert store.held_slots() == []
    assert store.acquire("b", start=3).slot == 3


def test_exhaustion_is_an_error_and_leaves_no_temporary_file(tmp_path: Path) -> None:
    """With every slot leased, acquiring fails cleanly."""
    store = LeaseStore(tmp_path, SMALL)
    held = [store.acquire(str(i), start=0) for i in range(SMALL.slots)]
    assert sorted(lease.slot for lease in held) == list(range(SMALL.slots))
    with pytest.raises(AddressesExhausted):
        store.acquire("one too many", start=0)
    assert sorted(p.name for p in store.directory.iterdir()) == sorted(str(i) for i in range(SMALL.slots))


def test_live_leases_are_never_stale(tmp_path: Path) -> None:
    """Leases held by a live process (this one) are skipped by the reaper's scan."""
    store = LeaseStore(tmp_path, SMALL)
    store.acquire("live", start=0)
    with ReapLock(tmp_path / "reap.lock"):
        assert list(stale_leases(store.directory)) == []


def test_a_killed_owner_leaves_a_stale_lease_the_reaper_removes(tmp_path: Path) -> None:
    """When the owner process is SIGKILLed its lock is gone: the lease is stale and can be removed."""
    code = ("import ipaddress, sys, time; from pathlib import Path;"
            "from worker.sandbox.network.addresses import AddressPlan;"
            "from worker.sandbox.network.leases import LeaseStore;"
            "s = LeaseStore(Path(sys.argv[1]), AddressPlan(ipaddress.IPv4Network('10.9.0.0/28')));"
            "print(s.acquire('doomed', start=5).slot, flush=True); time.sleep(600)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True,
                            cwd=Path(__file__).parents[3])
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "5"
    store = LeaseStore(tmp_path, SMALL)
    with ReapLock(tmp_path / "reap.lock"):
        assert list(stale_leases(store.directory)) == []
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    proc.stdout.close()
    with ReapLock(tmp_path / "reap.lock"):
        found = list(stale_leases(store.directory))
        assert [(s.slot, s.owner.split()[1]) for s, _ in found] == [(5, "doomed")]
        for stale, fd in found:
            remove_stale(stale, fd)
    assert store.held_slots() == []


def test_a_dead_creators_temporary_file_is_stale_at_once(tmp_path: Path) -> None:
    """A temporary lease file (``.new-<pid>-<n>``) of a process that no longer exists (SIGKILLed
    while leasing) is reaped at once; a young one of a live process waits for its grace period."""
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    dead = tmp_path / f".new-{int(done.stdout)}-1"
    dead.write_text("gone job\n")
    live = tmp_path / f".new-{os.getpid()}-99"
    live.write_text(f"{os.getpid()} live\n")
    with ReapLock(tmp_path / "reap.lock"):
        found = list(stale_leases(tmp_path))
        assert [(s.path.name, s.slot) for s, _ in found] == [(dead.name, -1)]
        for stale, fd in found:
            remove_stale(stale, fd)
    assert not dead.exists() and live.exists()
