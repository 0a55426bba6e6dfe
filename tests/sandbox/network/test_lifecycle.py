"""Job networks leave nothing behind: after success, failure, and a SIGKILLed worker (+ the reaper)."""

from __future__ import annotations

import ctypes
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from pathlib import Path

import pytest

from worker.sandbox.network import (
    JobNetwork,
    NetworkMode,
    NetworkSettings,
    prepare_host,
    reap_networks,
    teardown_host,
)
from worker.sandbox.network.netlink import create_netns

from .world import HERE, RESOLVER, World, in_netns, link_names

pytestmark = pytest.mark.root


def sandpit_veths(world: World) -> set[str]:
    return {n for n in link_names(world.host_path) if n.startswith(world.settings.veth_prefix)}


def lease_files(settings: NetworkSettings) -> list[Path]:
    root = settings.net_dir / "leases"
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


def open_netns_fds() -> set[str]:
    found = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("net:"):
            found.add(target)
    return found


def wait_until_clean(world: World, timeout_s: float = 20.0) -> None:
    """The kernel frees torn-down pairs asynchronously; give it time, then settle the leases."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        world.network.settle()
        if not sandpit_veths(world) and world.network.pending == 0:
            return
        time.sleep(0.05)


def nft_ruleset(world: World) -> str:
    return in_netns(world.host_path, "nft", "list", "ruleset").stdout


def start_doomed_worker(world: World, job_id: str, *extra: str) -> tuple[subprocess.Popen[str], list[str]]:
    proc = subprocess.Popen([sys.executable, str(HERE / "hold_job.py"), str(world.settings.state_dir),
                             world.host_path, job_id, *extra], stdout=subprocess.PIPE, text=True,
                            cwd=Path(__file__).parents[3])
    assert proc.stdout is not None
    line = proc.stdout.readline().split()
    assert len(line) == 3, f"worker {job_id} did not start"
    return proc, line


def kill(proc: subprocess.Popen[str]) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    if proc.stdout is not None:
        proc.stdout.close()


@pytest.mark.slow
def test_a_thousand_jobs_leave_nothing_behind(world: World) -> None:
    """1,000 jobs (egress and none; some failing mid-run; some in workers SIGKILLed mid-run, then the
    reaper) leave no namespace, veth, lease or nft rule of sandpit behind."""
    rules_before = nft_ruleset(world)
    fds_before = open_netns_fds()
    killed = []
    running: deque[JobNetwork] = deque()  # up to 8 jobs open at once, like a busy worker
    for i in range(1000):
        if i % 50 == 7:
            killed.append(start_doomed_worker(world, f"doomed-{i}"))
            continue
        mode: NetworkMode = "none" if i % 5 == 0 else "egress"
        job = JobNetwork(world.settings, f"job-{i}", mode, world.network)
        running.append(job)
        if i % 97 == 3:
            with pytest.raises(RuntimeError), job:
                raise RuntimeError("the job's own failure")
        if len(running) > 8:
            running.popleft().close()
        live = [str(j.address.ip) for j in running if j.address is not None and not j.closed]
        live += [line[0] for _, line in killed]
        assert len(set(live)) == len(live), "two live jobs got one address"
    while running:
        running.popleft().close()
    for proc, _ in killed:
        kill(proc)
    removed = reap_networks(world.settings)
    assert sum(r.startswith("lease ") for r in removed) == len(killed), removed
    wait_until_clean(world)
    assert sandpit_veths(world) == set()
    assert lease_files(world.settings) == []
    assert open_netns_fds() == fds_before
    assert nft_ruleset(world) == rules_before, "jobs must not add or leave nft rules"
    assert reap_networks(world.settings) == []


def test_reaper_removes_the_veth_of_a_dead_worker_whose_job_namespace_lives_on(world: World) -> None:
    """When a process in the job namespace outlives the SIGKILLed worker, the reaper deletes the job's
    veth and lease; it never touches the jobs of live workers."""
    with JobNetwork(world.settings, "bystander", "egress", world.network) as bystander:
        proc, (address, veth, holder) = start_doomed_worker(world, "doomed-holder", "--hold-netns")
        try:
            kill(proc)
            assert veth in sandpit_veths(world)
            removed = reap_networks(world.settings)
            assert f"veth {veth}" in removed
            assert any(r.startswith("lease ") and "doomed-holder" in r for r in removed), removed
            assert veth not in sandpit_veths(world)
            assert bystander.veth in sandpit_veths(world)
            assert bystander.address is not None and str(bystander.address.ip) != address
        finally:
            os.kill(int(holder), signal.SIGKILL)
    wait_until_clean(world)
    assert lease_files(world.settings) == []


def test_failed_setup_releases_everything(world: World) -> None:
    """A setup that fails half-way (the veth cannot be made) leaves no lease and no veth."""
    existing = world.network.bridge_index
    world.network.bridge_index = 999_999  # no such bridge: the veth request fails
    try:
        with pytest.raises(OSError):
            JobNetwork(world.settings, "broken", "egress", world.network)
    finally:
        world.network.bridge_index = existing
    wait_until_clean(world)
    assert lease_files(world.settings) == []
    assert sandpit_veths(world) == set()


def test_close_is_idempotent_and_fast(world: World) -> None:
    """close() may be called twice; the namespace path is valid until the first close."""
    job = JobNetwork(world.settings, "twice", "egress", world.network)
    path = job.netns_path
    assert os.path.exists(path)
    job.close()
    job.close()
    assert job.closed


def test_prepare_host_is_idempotent_and_shared(world: World) -> None:
    """Preparing the host again (another worker) keeps the bridge, subnet and one copy of the rules."""
    rules = nft_ruleset(world)
    with prepare_host(world.settings) as again:
        assert again.plan == world.network.plan
        assert again.bridge_index == world.network.bridge_index
    assert nft_ruleset(world) == rules
    assert nft_ruleset(world).count("chain forward") == 2  # inet + bridge tables, once each


def test_subnet_is_chosen_clear_of_host_routes(tmp_path: Path) -> None:
    """With the first candidate subnets already routed on the host, start-up picks a free one; an
    explicitly configured colliding subnet is refused."""
    from worker.sandbox.network.errors import HostNetworkError
    from worker.sandbox.network.settings import CANDIDATE_SUBNETS

    host = create_netns(ipv6=True)
    try:
        in_netns(host.path, "ip", "link", "add", "lan0", "type", "veth", "peer", "name", "lan1")
        in_netns(host.path, "ip", "addr", "add", f"{CANDIDATE_SUBNETS[0][1]}/20", "dev", "lan0")
        in_netns(host.path, "ip", "link", "set", "lan0", "up")
        in_netns(host.path, "ip", "route", "add", str(CANDIDATE_SUBNETS[1]), "dev", "lan0")
        settings = NetworkSettings(state_dir=tmp_path, host_netns=Path(host.path), resolvers=(RESOLVER,))
        try:
            with prepare_host(settings) as prepared:
                assert prepared.plan.subnet == CANDIDATE_SUBNETS[2]
            clashing = NetworkSettings(state_dir=tmp_path / "b", host_netns=Path(host.path),
                                       bridge="sandpit1", subnet=CANDIDATE_SUBNETS[0], table="sandpit1")
            with pytest.raises(HostNetworkError, match="collides"):
                prepare_host(clashing)
        finally:
            teardown_host(settings)
        assert "sandpit" not in in_netns(host.path, "nft", "list", "ruleset").stdout
        assert link_names(host.path) == {"lo", "lan0", "lan1"}
    finally:
        host.close()


def test_teardown_host_removes_bridge_and_tables(world: World) -> None:
    """teardown_host removes the bridge and the nft tables; prepare_host brings them back."""
    world.network.close()
    teardown_host(world.settings)
    assert "sandpit0" not in link_names(world.host_path)
    assert json.loads(in_netns(world.host_path, "nft", "-j", "list", "tables").stdout)["nftables"][1:] == []
    world.network = prepare_host(world.settings)
    assert "sandpit0" in link_names(world.host_path)


def test_jobs_from_many_threads_in_any_namespace_use_the_host_namespace(world: World) -> None:
    """A HostNetwork is shared by threads, and its netlink work lands in the host namespace whatever
    namespace the calling thread is in (pyroute2 sockets are per thread: a socket shared behind a lock
    would follow the caller into its namespace). Four threads, two of them in a throwaway namespace
    of their own, open and close egress jobs at once: every veth appears on the host's bridge, no two
    live jobs share an address, and nothing is left."""
    libc = ctypes.CDLL(None, use_errno=True)
    errors: list[BaseException] = []
    live: list[str] = []
    lock = threading.Lock()
    host_veths: set[str] = set()

    def run(worker: int, elsewhere: bool) -> None:
        try:
            if elsewhere:
                assert libc.unshare(0x40000000) == 0  # CLONE_NEWNET, this thread only
            for i in range(15):
                with JobNetwork(world.settings, f"thread-{worker}-{i}", "egress", world.network) as job:
                    assert job.address is not None and job.veth is not None
                    with lock:
                        assert str(job.address.ip) not in live
                        live.append(str(job.address.ip))
                        host_veths.add(job.veth)
                    assert job.veth in sandpit_veths(world)
                    with lock:
                        live.remove(str(job.address.ip))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(n, n % 2 == 1)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(host_veths) > 1
    wait_until_clean(world)
    assert sandpit_veths(world) == set()
    assert lease_files(world.settings) == []
