"""The pool of ready egress namespaces (worker/sandbox/network/pool/), in the
isolated test world: single use under concurrent claimers, the same egress and policy as a fresh
job network, refill, draining, and nothing left after SIGKILLed claimers and refills."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from worker.sandbox.network import NetworkSettings, drain_pool, fill_pool, prepare_host, reap_networks, teardown_host
from worker.sandbox.network.pool.claim import PooledNetwork, claim
from worker.sandbox.network.pool.fill import pool_entries
from worker.sandbox.network.pool.layout import PoolRequest, is_netns
from worker.sandbox.network.pool.refill import refill_if_low

from .test_lifecycle import lease_files, sandpit_veths
from .test_policy import STOPPED, host_addresses
from .world import HERE, HOST_TCP_PORTS, METADATA, PRIVATE_HOST, RESOLVER, WEB, World, in_netns, link_names, probe

pytestmark = pytest.mark.root
REPO = Path(__file__).parents[3]


def pool_mounts(settings: NetworkSettings) -> list[str]:
    prefix = str(settings.pool_dir) + "/"
    with open("/proc/self/mountinfo") as f:
        return [line.split()[4] for line in f if line.split()[4].startswith(prefix)]


def wait_for(predicate, timeout_s: float = 30.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


def assert_nothing_left(world: World, settings: NetworkSettings) -> None:
    """No entry, bind mount, lease or sandpit veth (the kernel frees veths asynchronously)."""
    assert pool_entries(settings) == []
    assert pool_mounts(settings) == []
    assert wait_for(lambda: not sandpit_veths(world)), sandpit_veths(world)
    reap_networks(settings)
    assert lease_files(settings) == []


@pytest.fixture
def pooled(world: World, tmp_path: Path) -> Iterator[NetworkSettings]:
    """The world's network settings with a pool of 4 under a run dir of this test; drained after."""
    settings = replace(world.settings, pool_size=4, run_dir=tmp_path / "run")
    try:
        yield settings
    finally:
        drain_pool(settings)
        assert_nothing_left(world, settings)


def request_of(settings: NetworkSettings) -> PoolRequest:
    request = settings.pool_request()
    assert request is not None
    return request


def test_fill_makes_private_bind_mounted_entries(world: World, pooled: NetworkSettings) -> None:
    """A fill makes pool_size entries: nsfs bind mounts in a root-only directory, each a configured
    egress namespace (eth0 with an address, a default route) whose veth is an isolated bridge port."""
    fill_pool(pooled, world.network)
    names = pool_entries(pooled)
    assert len(names) == 4
    assert len(pool_mounts(pooled)) == 4
    assert os.stat(pooled.pool_dir).st_mode & 0o777 == 0o700
    for name in names:
        path = str(pooled.pool_dir / name)
        fd = os.open(path, os.O_RDONLY)
        try:
            assert is_netns(fd)
        finally:
            os.close(fd)
        routes = in_netns(path, "ip", "route").stdout
        assert routes.startswith("default via "), routes
        veth = world.settings.veth_prefix + format(int(name.split(".")[0]), "x")
        details = in_netns(world.host_path, "ip", "-d", "link", "show", veth).stdout
        assert "isolated on" in details and "master sandpit0" in details, details
    fill_pool(pooled, world.network)
    assert pool_entries(pooled) == names, "a full pool is left as it is"


def test_concurrent_claimers_never_get_the_same_entry(world: World, pooled: NetworkSettings) -> None:
    """Six processes claim at once from a pool of four: four get an entry each, all different (slot
    and namespace), two get none; the pool is then empty."""
    fill_pool(pooled, world.network)
    request = request_of(pooled)
    claimers = [subprocess.Popen([sys.executable, str(HERE / "claim_entry.py"), request.as_args(), f"job-{i}"],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=REPO)
                for i in range(6)]
    try:
        for proc in claimers:
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        got = [json.loads(proc.stdout.readline()) for proc in claimers if proc.stdout is not None]
        won = [g for g in got if g["slot"] is not None]
        assert len(won) == 4, got
        assert len({g["slot"] for g in won}) == 4
        assert len({g["netns"] for g in won}) == 4
        assert pool_entries(pooled) == []
        assert claim(request, "late") is None
    finally:
        for proc in claimers:
            if proc.stdin is not None:
                proc.stdin.close()
            proc.wait(timeout=10)
            if proc.stdout is not None:
                proc.stdout.close()


def test_claimed_namespace_has_egress_and_the_same_policy(world: World, pooled: NetworkSettings) -> None:
    """A namespace from the pool reaches the stand-in internet and the resolver, and nothing of the
    host (every address, TCP ports), private ranges or the metadata address: the policy covers it as it
    covers a fresh job network."""
    fill_pool(pooled, world.network)
    net = claim(request_of(pooled), "pooled-job")
    assert net is not None
    try:
        assert net.resolv_conf.startswith(f"nameserver {RESOLVER}\n".encode())
        allowed = probe(net.netns_path, [{"kind": "http", "host": WEB, "port": 80},
                                         {"kind": "dns", "host": RESOLVER, "port": 53}])
        assert {r["outcome"] for r in allowed} == {"reply"}, allowed
        targets: list[dict[str, object]] = [{"kind": "http", "host": PRIVATE_HOST, "port": 80},
                                            {"kind": "http", "host": METADATA, "port": 80}]
        for address in host_addresses(world):
            targets += [{"kind": "tcp", "host": address, "port": p} for p in HOST_TCP_PORTS]
        blocked = probe(net.netns_path, targets)
        assert {r["outcome"] for r in blocked} <= STOPPED, blocked
    finally:
        net.close()


def test_a_used_namespace_is_never_handed_out_again(world: World, pooled: NetworkSettings) -> None:
    """A job marks its pooled namespace (a veth pair of its own); after it ends and the pool is refilled, no
    entry has the mark: every claim gets a namespace no job has used."""
    fill_pool(pooled, world.network)
    request = request_of(pooled)
    net = claim(request, "marker")
    assert net is not None
    try:
        in_netns(net.netns_path, "ip", "link", "add", "usedmark0", "type", "veth", "peer", "name", "usedmark1")
    finally:
        net.close()
    fill_pool(pooled, world.network)
    claimed: list[PooledNetwork] = []
    try:
        while (again := claim(request, f"after-{len(claimed)}")) is not None:
            claimed.append(again)
            assert "usedmark0" not in link_names(again.netns_path)
        assert len(claimed) == 4
    finally:
        for net in claimed:
            net.close()


def test_refill_starts_in_the_background_when_the_pool_runs_low(world: World, pooled: NetworkSettings) -> None:
    """A claim that leaves fewer than low-water entries starts one detached refill at teardown; it
    tops the pool up again and frees the used entries' leases."""
    fill_pool(pooled, world.network)
    request = request_of(pooled)
    used = [claim(request, f"busy-{i}") for i in range(3)]
    assert all(used) and pool_entries(pooled) != []
    for net in used:
        assert net is not None
        net.close()
    refill_if_low(request, used[-1])  # 1 left, low water 2
    assert wait_for(lambda: len(pool_entries(pooled)) == 4), pool_entries(pooled)
    assert wait_for(lambda: "made" in (pooled.pool_dir / "refill.log").read_text())
    log = (pooled.pool_dir / "refill.log").read_text()
    assert "made 3 entries" in log, log
    assert log.count("busy-") == 3, log  # the used entries' leases, freed
    assert len(lease_files(pooled)) == 4


def test_pool_off_claims_nothing_and_makes_nothing(world: World, tmp_path: Path) -> None:
    """With pool_size 0 there is no pool request, and a fill makes nothing."""
    off = replace(world.settings, run_dir=tmp_path / "run")
    assert off.pool_size == 0 and off.pool_request() is None
    assert fill_pool(off, world.network) == []
    assert not off.pool_dir.exists()


def test_sigkilled_claimer_leaves_nothing_after_the_reaper(world: World, pooled: NetworkSettings) -> None:
    """A job process SIGKILLed while it holds a pooled namespace: the reaper removes its lease and veth
    and keeps the entries still waiting."""
    fill_pool(pooled, world.network)
    proc = subprocess.Popen([sys.executable, str(HERE / "claim_entry.py"), request_of(pooled).as_args(), "doomed"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=REPO)
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write("go\n")
    proc.stdin.flush()
    got = json.loads(proc.stdout.readline())
    assert got["slot"] is not None
    holder = subprocess.Popen(["nsenter", f"--net={got['path']}", "sleep", "600"])  # outlives the job
    try:
        assert wait_for(lambda: os.stat(f"/proc/{holder.pid}/ns/net").st_ino == got["netns"])
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        veth = world.settings.veth_prefix + format(got["slot"], "x")
        assert veth in sandpit_veths(world)
        removed = reap_networks(pooled)
        assert f"veth {veth}" in removed and any("doomed" in r for r in removed), removed
        assert len(pool_entries(pooled)) == 3, "waiting entries are kept"
    finally:
        holder.kill()
        holder.wait(timeout=10)
        proc.stdin.close()
        proc.stdout.close()


def test_a_claim_interrupted_before_the_unmount_is_cleaned_up(world: World, pooled: NetworkSettings) -> None:
    """An entry whose lease was already rewritten for a job (a claimer killed between the rewrite and
    the unmount) is never claimed again and the reaper removes it, its lease and its veth."""
    fill_pool(pooled, world.network)
    name = pool_entries(pooled)[0]
    lease = next(p for p in lease_files(pooled) if p.name == name.split(".")[0])
    lease.write_text("999999999 killed-claimer\n")
    request = request_of(pooled)
    others = [claim(request, f"other-{i}") for i in range(4)]
    try:
        assert sum(net is not None for net in others) == 3
        assert pool_entries(pooled) == [name]
        removed = reap_networks(pooled)
        assert f"pool entry {name}" in removed, removed
        assert pool_entries(pooled) == []
    finally:
        for net in others:
            if net is not None:
                net.close()


def test_sigkilled_refill_leaves_nothing_behind(world: World, pooled: NetworkSettings) -> None:
    """A refill SIGKILLed in the middle of a batch: the reaper keeps its complete entries and removes
    the half-made one; draining then leaves no entry, mount, lease or veth."""
    big = replace(pooled, pool_size=60)
    script = ("import json, sys; from worker.sandbox.network.pool.fill import fill_pool, settings_from_request; "
              "fill_pool(settings_from_request(json.loads(sys.argv[1])))")
    request = big.pool_request()
    assert request is not None
    proc = subprocess.Popen([sys.executable, "-c", script, request.as_args()], cwd=REPO)
    try:
        assert wait_for(lambda: len(pool_entries(big)) >= 5)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    made = len(pool_entries(big))
    reap_networks(big)
    kept = pool_entries(big)
    assert made - 1 <= len(kept) <= made
    assert len(lease_files(big)) == len(kept)
    assert len(pool_mounts(big)) == len(kept)


def test_teardown_host_drains_the_pool(world: World, pooled: NetworkSettings) -> None:
    """teardown_host (and so `sandpit reap --all`) removes the pool with the bridge."""
    fill_pool(pooled, world.network)
    world.network.close()
    try:
        teardown_host(pooled)
        assert pool_entries(pooled) == [] and pool_mounts(pooled) == []
        assert lease_files(pooled) == []
    finally:
        world.network = prepare_host(world.settings)


def test_engine_runs_egress_jobs_in_pool_namespaces(world: World, pooled: NetworkSettings, settings,  # type: ignore[no-untyped-def]
                                                    runtime, no_leftovers) -> None:
    """Real container jobs with `network: egress` take ready namespaces from the pool (it shrinks by one
    per job), reach the internet and not the metadata address, and get the configured resolver."""
    from tests.sandbox.conftest import Runner
    from worker.sandbox.engine import Engine

    fill_pool(pooled, world.network)
    before = pool_entries(pooled)
    run = Runner(Engine(settings, network=pooled, host_network=world.network), runtime)
    targets = [{"kind": "http", "host": WEB, "port": 80}, {"kind": "http", "host": METADATA, "port": 80}]
    res, out, err = run("python3", "-c", (HERE / "probe.py").read_text(), json.dumps(targets), image="python",
                        network="egress")
    assert res.status == "succeeded", err
    web, metadata = json.loads(out)
    assert web["outcome"] == "reply" and metadata["outcome"] in STOPPED, (web, metadata)
    res, out, err = run("cat", "/etc/resolv.conf", network="egress")
    assert res.status == "succeeded", err
    assert f"nameserver {RESOLVER}" in out
    after = pool_entries(pooled)
    assert len(after) == len(before) - 2 and set(after) < set(before)


def test_a_pool_abandoned_by_changed_settings_is_drained(world: World, pooled: NetworkSettings) -> None:
    """Each configuration has its own pool; one that no claimer or refill touched for an hour (its
    settings changed) is drained by the reaper of the same host network; a recent one is kept."""
    from worker.sandbox.network.reaper import ABANDONED_POOL_S

    old = replace(pooled, resolvers=("198.51.100.54",))
    assert old.pool_dir != pooled.pool_dir and old.pool_dir.parent == pooled.pool_dir.parent
    try:
        fill_pool(old, world.network)
        fill_pool(pooled, world.network)
        assert len(pool_entries(old)) == 4
        reap_networks(pooled)
        assert len(pool_entries(old)) == 4, "a pool in use is never swept"
        past = time.time() - ABANDONED_POOL_S - 60
        os.utime(old.pool_dir, (past, past))
        removed = reap_networks(pooled)
        assert sum(r.startswith("pool entry ") for r in removed) == 4, removed
        assert pool_entries(old) == [] and pool_mounts(old) == []
        assert len(pool_entries(pooled)) == 4
        assert len(lease_files(pooled)) == 4
    finally:
        drain_pool(old)


def test_a_whole_sandpit_exec_process_takes_its_network_from_the_pool(world: World, settings,  # type: ignore[no-untyped-def]
                                                                     runtime, no_leftovers) -> None:
    """`sandpit exec --network egress` as a process of its own (settings from the environment, like a
    user's) runs its job in a pool namespace: the pool shrinks by one, the job reaches the internet and
    not the metadata address, and the process never imported pyroute2."""
    from worker.sandbox.network.pool.claim import pool_request
    from worker.sandbox.network.pool.fill import settings_from_request
    from worker.settings import Settings

    env = {**os.environ, "SANDPIT_STATE_DIR": str(settings.state_dir), "SANDPIT_RUN_DIR": str(settings.run_dir),
           "SANDPIT_NET_HOST_NETNS": world.host_path, "SANDPIT_RESOLVERS": RESOLVER, "SANDPIT_RUNTIME": runtime}
    request = pool_request(Settings.from_env(env))
    assert request is not None and request.size >= 4
    cli_pool = settings_from_request(json.loads(request.as_args()))
    try:
        fill_pool(cli_pool, config=request.config)
        before = pool_entries(cli_pool)
        targets = [{"kind": "http", "host": WEB, "port": 80}, {"kind": "http", "host": METADATA, "port": 80}]
        done = subprocess.run([str(REPO / ".venv" / "bin" / "python"), "-X", "importtime",
                               str(REPO / ".venv" / "bin" / "sandpit"), "exec", "--network", "egress",
                               "--image", "python", "--", "python3", "-c", (HERE / "probe.py").read_text(),
                               json.dumps(targets)],
                              env=env, capture_output=True, text=True, timeout=120, cwd=REPO)
        assert done.returncode == 0, done.stderr[-2000:]
        web, metadata = json.loads(done.stdout)
        assert web["outcome"] == "reply" and metadata["outcome"] in STOPPED, (web, metadata)
        assert "pyroute2" not in done.stderr, "the CLI loaded pyroute2: it did not use the pool"
        assert len(pool_entries(cli_pool)) == len(before) - 1
    finally:
        drain_pool(cli_pool)
    assert pool_entries(cli_pool) == [] and pool_mounts(cli_pool) == []


SANDPIT = str(REPO / ".venv" / "bin" / "sandpit")


def cli_env(world: World, settings, runtime: str, pool: int) -> dict[str, str]:  # type: ignore[no-untyped-def]
    """The environment of a `sandpit` process whose host side is the test world's."""
    return {**os.environ, "SANDPIT_STATE_DIR": str(settings.state_dir), "SANDPIT_RUN_DIR": str(settings.run_dir),
            "SANDPIT_NET_HOST_NETNS": world.host_path, "SANDPIT_RESOLVERS": RESOLVER, "SANDPIT_RUNTIME": runtime,
            "SANDPIT_NET_POOL": str(pool)}


def test_reap_all_removes_the_network_host_side(world: World, settings, runtime,  # type: ignore[no-untyped-def]
                                                 no_leftovers) -> None:
    """`sandpit reap --all` after egress jobs (which leave a bridge, the nft tables and a refilled pool
    in the host namespace): no bridge, no table, no pool entry or mount, no lease is left."""
    from worker.settings import Settings

    env = cli_env(world, settings, runtime, pool=2)
    cli_settings = Settings.from_env(env).network()
    try:
        for _ in range(2):  # the first makes the host side, its teardown starts a refill of the pool
            done = subprocess.run([SANDPIT, "exec", "--network", "egress", "--", "true"], env=env,
                                  capture_output=True, text=True, timeout=120)
            assert done.returncode == 0, done.stderr
        assert wait_for(lambda: len(pool_entries(cli_settings)) == 2)
        assert cli_settings.bridge in link_names(world.host_path)
        reaped = subprocess.run([SANDPIT, "reap", "--all"], env=env, capture_output=True, text=True, timeout=120)
        assert reaped.returncode == 0, reaped.stderr
        assert "removed the network host side" in reaped.stdout
        assert cli_settings.bridge not in link_names(world.host_path)
        tables = in_netns(world.host_path, "nft", "list", "tables").stdout
        assert cli_settings.table not in tables
        assert_nothing_left(world, cli_settings)
    finally:
        world.network.close()  # the world's own host side goes with the bridge: make it again
        teardown_host(cli_settings)
        world.network = prepare_host(world.settings)


def test_host_prep_reloads_a_flushed_policy(world: World, settings, runtime,  # type: ignore[no-untyped-def]
                                            no_leftovers) -> None:
    """After a firewall reload flushed sandpit's nft tables, `sandpit host-prep` loads them again
    (pooled namespaces and running workers rely on them); a host without sandpit's bridge is left
    alone."""
    from worker.settings import Settings

    env = cli_env(world, settings, runtime, pool=0)
    cli_settings = Settings.from_env(env).network()
    world.network.close()
    teardown_host(world.settings)  # a host that has never run an egress job: no bridge, no tables
    try:
        untouched = subprocess.run([SANDPIT, "host-prep"], env=env, capture_output=True, text=True, timeout=120)
        assert untouched.returncode == 0, untouched.stderr
        assert "reloaded the network policy" not in untouched.stdout
        assert cli_settings.bridge not in link_names(world.host_path)
        assert f"inet {cli_settings.table}" not in in_netns(world.host_path, "nft", "list", "tables").stdout
        done = subprocess.run([SANDPIT, "exec", "--network", "egress", "--", "true"], env=env,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        in_netns(world.host_path, "nft", "delete", "table", "inet", cli_settings.table)
        assert f"inet {cli_settings.table}" not in in_netns(world.host_path, "nft", "list", "tables").stdout
        again = subprocess.run([SANDPIT, "host-prep"], env=env, capture_output=True, text=True, timeout=120)
        assert again.returncode == 0, again.stderr
        assert "reloaded the network policy" in again.stdout
        assert f"inet {cli_settings.table}" in in_netns(world.host_path, "nft", "list", "tables").stdout
    finally:
        world.network.close()  # the world's own host side goes with the bridge: make it again
        teardown_host(cli_settings)
        world.network = prepare_host(world.settings)


@pytest.mark.slow
def test_many_pooled_jobs_leave_nothing_behind(world: World, pooled: NetworkSettings) -> None:
    """200 pooled jobs (refilled as they go, every 25th in a process SIGKILLed while it holds its
    namespace), then a drain: no entry, bind mount, lease, sandpit veth or nft change is left, and no
    two running jobs ever shared a namespace or an address."""
    from .test_lifecycle import nft_ruleset

    rules_before = nft_ruleset(world)
    request = request_of(pooled)
    running: list[PooledNetwork] = []  # up to 3 jobs at once, like a busy host
    for i in range(200):
        if len(pool_entries(pooled)) < request.low_water:
            fill_pool(pooled, world.network)
        if i % 25 == 3:
            proc = subprocess.Popen([sys.executable, str(HERE / "claim_entry.py"), request.as_args(), f"doomed-{i}"],
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=REPO)
            assert proc.stdin is not None and proc.stdout is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
            got = json.loads(proc.stdout.readline())
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
            proc.stdin.close()
            proc.stdout.close()
            assert got["slot"] is not None
            continue
        net = claim(request, f"job-{i}")
        assert net is not None
        live = {os.fstat(job.netns_fd).st_ino for job in running}
        assert os.fstat(net.netns_fd).st_ino not in live and net.slot not in {job.slot for job in running}
        running.append(net)
        if len(running) > 3:
            running.pop(0).close()
    for net in running:
        net.close()
    drain_pool(pooled)
    assert_nothing_left(world, pooled)
    assert nft_ruleset(world) == rules_before
