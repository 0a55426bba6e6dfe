"""Several sandpit instances on one host, network side (worker/sandbox/instance.py): each instance has
a bridge, nft tables, veths and subnet of its own, so one instance's reaper or teardown never touches
another's live job networks. In the isolated test world: its own host side plays the default
instance; two more instances get run and state dirs of their own."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from worker.sandbox.network import HostNetwork, JobNetwork, NetworkSettings, prepare_host, reap_networks, teardown_host
from worker.settings import Settings

from .world import HERE, RESOLVER, WEB, World, in_netns, link_names, probe

pytestmark = pytest.mark.root
REPO = Path(__file__).parents[3]


def other_instance(world: World, base: Path) -> NetworkSettings:
    """The network settings of an instance with its own run and state dirs, on the world's host side."""
    settings = Settings(state_dir=base / "state", run_dir=base / "run", resolvers=(RESOLVER,),
                        net_host_netns=Path(world.host_path), net_pool=0)
    assert settings.instance_id != ""
    return settings.network()


def tables(world: World) -> set[str]:
    found = json.loads(in_netns(world.host_path, "nft", "-j", "list", "tables").stdout)["nftables"]
    return {f"{t['table']['family']} {t['table']['name']}" for t in found if "table" in t}


@pytest.fixture
def instances(world: World, tmp_path: Path) -> Iterator[tuple[NetworkSettings, NetworkSettings]]:
    two = (other_instance(world, tmp_path / "b"), other_instance(world, tmp_path / "c"))
    try:
        yield two
    finally:
        for settings in two:
            teardown_host(settings)
        assert world.settings.bridge in link_names(world.host_path)


def test_instances_have_their_own_bridge_tables_veths_and_subnet(
        world: World, instances: tuple[NetworkSettings, NetworkSettings]) -> None:
    """Two more instances, started at the same moment, get their own bridge, nft tables, veth names and
    a subnet of their own (not the world's, not each other's). While a job of the world's instance and
    one of the second instance run, the third instance's reaper and teardown and the second's reaper
    leave both alone: their veths stay on their bridges and both still reach the internet."""
    b, c = instances
    names = [(s.bridge, s.table, s.veth_prefix) for s in (world.settings, b, c)]
    for i in range(3):
        assert len({n[i] for n in names}) == 3, names
    hosts: list[HostNetwork] = []
    try:
        with ThreadPoolExecutor(2) as pool:
            hosts = list(pool.map(prepare_host, [b, c]))
        subnets = [world.network.plan.subnet, *(h.plan.subnet for h in hosts)]
        assert all(not x.overlaps(y) for i, x in enumerate(subnets) for y in subnets[i + 1:]), subnets
        assert {f"inet {s.table}" for s in (world.settings, b, c)} <= tables(world)
        with JobNetwork(world.settings, "inst-world", "egress", world.network) as mine, \
                JobNetwork(b, "inst-b", "egress", hosts[0]) as theirs:
            assert mine.veth and theirs.veth and mine.veth != theirs.veth
            assert mine.address is not None and theirs.address is not None
            assert mine.address.ip in subnets[0] and theirs.address.ip in subnets[1]
            hosts[1].close()
            removed = reap_networks(c) + reap_networks(b)
            teardown_host(c)
            assert removed == [], removed
            links = link_names(world.host_path)
            assert {mine.veth, theirs.veth, world.settings.bridge, b.bridge} <= links
            assert c.bridge not in links and f"inet {c.table}" not in tables(world)
            assert {f"inet {world.settings.table}", f"inet {b.table}"} <= tables(world)
            for job in (mine, theirs):
                got = probe(job.netns_path, [{"kind": "http", "host": WEB, "port": 80}])[0]
                assert got["outcome"] == "reply", got
    finally:
        for host in hosts:
            host.close()
    teardown_host(b)
    links = link_names(world.host_path)
    assert b.bridge not in links and world.settings.bridge in links
    assert f"inet {b.table}" not in tables(world) and f"inet {world.settings.table}" in tables(world)


def test_reap_all_of_another_instance_removes_only_its_own_host_side(world: World, tmp_path: Path) -> None:
    """`sandpit reap --all` (a whole process) of another instance removes that instance's bridge and
    tables and leaves the world's instance alone: its bridge, its tables and a live job's veth, which
    still reaches the internet."""
    other = other_instance(world, tmp_path / "b")
    prepare_host(other).close()
    env = {"PATH": os.environ["PATH"], "SANDPIT_STATE_DIR": str(tmp_path / "b" / "state"),
           "SANDPIT_RUN_DIR": str(tmp_path / "b" / "run"), "SANDPIT_NET_HOST_NETNS": world.host_path,
           "SANDPIT_RESOLVERS": RESOLVER, "SANDPIT_NET_POOL": "0"}
    try:
        assert other.bridge in link_names(world.host_path)
        with JobNetwork(world.settings, "inst-world-live", "egress", world.network) as mine:
            done = subprocess.run([sys.executable, "-m", "worker", "reap", "--all"], env=env, capture_output=True,
                                  text=True, timeout=120, cwd=REPO)
            assert done.returncode == 0, done.stderr
            assert "removed the network host side" in done.stdout
            assert "reaped" not in done.stdout, done.stdout
            links = link_names(world.host_path)
            assert other.bridge not in links and f"inet {other.table}" not in tables(world)
            assert {world.settings.bridge, mine.veth} <= links
            assert f"inet {world.settings.table}" in tables(world)
            got = probe(mine.netns_path, [{"kind": "http", "host": WEB, "port": 80}])[0]
            assert got["outcome"] == "reply", got
    finally:
        teardown_host(other)


def test_egress_jobs_of_two_instances(world: World, settings: Settings, runtime: str) -> None:
    """Real container jobs: a whole `sandpit exec --network egress` of a second instance (its own state
    and run dirs, scratch filesystem and pool) runs on a bridge of its own in a subnet of its own and
    reaches the internet, while a job network of the world's instance lives on beside it; the second
    instance's `sandpit reap --all` then removes its own host side and pool, and only those."""
    from tests.sandbox.test_instances import _make_instance, _remove_instance

    second = _make_instance("net-second", settings, scratch=True)
    env = {**second.env(runtime), "SANDPIT_NET_HOST_NETNS": world.host_path, "SANDPIT_RESOLVERS": RESOLVER,
           "SANDPIT_NET_POOL": "2"}
    net = Settings.from_env(env).network()
    targets = json.dumps([{"kind": "http", "host": WEB, "port": 80}])
    exec_argv = [sys.executable, "-m", "worker", "exec", "--network", "egress", "--image", "python", "--",
                 "python3", "-c", (HERE / "probe.py").read_text(), targets]
    try:
        with JobNetwork(world.settings, "inst-world-egress", "egress", world.network) as mine:
            for _ in range(2):  # the first makes the host side; its teardown starts the pool's refill
                done = subprocess.run(exec_argv, env=env, capture_output=True, text=True, timeout=120, cwd=REPO)
                assert done.returncode == 0, done.stderr[-2000:]
                assert json.loads(done.stdout)[0]["outcome"] == "reply", done.stdout
            links = link_names(world.host_path)
            assert {net.bridge, world.settings.bridge, mine.veth} <= links
            bridges = json.loads(in_netns(world.host_path, "ip", "-j", "-4", "addr", "show", "type", "bridge").stdout)
            subnets = {b["ifname"]: f"{b['addr_info'][0]['local']}/{b['addr_info'][0]['prefixlen']}"
                       for b in bridges if b.get("addr_info")}
            assert subnets[net.bridge] != subnets[world.settings.bridge], subnets
            reaped = subprocess.run([sys.executable, "-m", "worker", "reap", "--all"], env=env, capture_output=True,
                                    text=True, timeout=120, cwd=REPO)
            assert reaped.returncode == 0, reaped.stderr
            links = link_names(world.host_path)
            assert net.bridge not in links and {world.settings.bridge, mine.veth} <= links
            assert f"inet {net.table}" not in tables(world) and f"inet {world.settings.table}" in tables(world)
            got = probe(mine.netns_path, [{"kind": "http", "host": WEB, "port": 80}])[0]
            assert got["outcome"] == "reply", got
    finally:
        teardown_host(net)
        _remove_instance(second)
