"""Benchmark of job network setup and synchronous teardown (needs root).

    .venv/bin/python bench/bench_network.py [--jobs 300] [--rounds 1]

A third mode, ``egress (pool)``, times taking a ready namespace from the pool (``pool.claim.claim``,
no netlink) and dropping it; the pool is refilled between batches of 16, untimed (the refill runs in
the background in real use).

Everything happens inside a "host" network namespace this script creates (bridge, nft rules, NAT),
never in the machine's own namespace; the namespace and all state are removed at the end. Prints a
markdown table of medians (and p95) over ``--jobs`` jobs per mode (with ``--rounds N``, N rounds of
that, pooled), then a second table comparing these medians with the raw-netlink baseline: the same
benchmark run against the previous ``rtnl.py`` (struct-packed netlink, no pyroute2), measured on the
project machine right before the port to pyroute2 (``RAW_NETLINK_BASELINE``; see docs/network.md).
Goals: setup ≤ 6 ms, synchronous teardown ≤ 1 ms.

The layer's own code is whatever ``worker.sandbox.network`` imports as, so the same script measures an
older tree with ``PYTHONPATH=<old tree> python bench/bench_network.py``.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from worker.sandbox.network import JobNetwork, NetworkMode, NetworkSettings, prepare_host, teardown_host
from worker.sandbox.network.netlink import create_netns

#: medians (ms) of the raw-netlink implementation (rtnl.py), 3 rounds x 300 jobs per mode, run
#: interleaved with this build's rounds on the same machine and load: mode -> (setup, teardown)
RAW_NETLINK_BASELINE: dict[str, tuple[float, float]] = {
    "none": (0.67, 0.008),
    "egress": (2.02, 0.013),
}
GOAL_SETUP_MS = 6.0
GOAL_TEARDOWN_MS = 1.0


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def measure(settings: NetworkSettings, mode: NetworkMode, jobs: int) -> tuple[list[float], list[float]]:
    setups, teardowns = [], []
    with prepare_host(settings) as host:
        for i in range(jobs):
            t0 = time.perf_counter()
            job = JobNetwork(settings, f"bench-{mode}-{i}", mode, host)
            t1 = time.perf_counter()
            job.close()
            t2 = time.perf_counter()
            setups.append((t1 - t0) * 1000)
            teardowns.append((t2 - t1) * 1000)
    return setups, teardowns


def measure_pool(settings: NetworkSettings, jobs: int) -> tuple[list[float], list[float]]:
    from dataclasses import replace

    from worker.sandbox.network.pool.claim import claim
    from worker.sandbox.network.pool.fill import drain_pool, fill_pool

    pooled = replace(settings, pool_size=16)
    request = pooled.pool_request()
    assert request is not None
    setups: list[float] = []
    teardowns: list[float] = []
    with prepare_host(pooled) as host:
        try:
            while len(setups) < jobs:
                fill_pool(pooled, host)
                for _ in range(min(16, jobs - len(setups))):
                    t0 = time.perf_counter()
                    job = claim(request, f"bench-pool-{len(setups)}")
                    t1 = time.perf_counter()
                    assert job is not None
                    job.close()
                    t2 = time.perf_counter()
                    setups.append((t1 - t0) * 1000)
                    teardowns.append((t2 - t1) * 1000)
        finally:
            drain_pool(pooled)
    return setups, teardowns


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    modes: tuple[NetworkMode, ...] = ("none", "egress")
    results: dict[str, tuple[list[float], list[float]]] = {mode: ([], []) for mode in modes}
    host_ns = create_netns(ipv6=True)
    try:
        with tempfile.TemporaryDirectory(prefix="sandpit-bench-") as state:
            settings = NetworkSettings(state_dir=Path(state), host_netns=Path(host_ns.path),
                                       resolvers=("198.51.100.53",))
            try:
                results["egress (pool)"] = ([], [])
                for _ in range(args.rounds):
                    for mode in modes:
                        measure(settings, mode, 20)  # warm up
                        setups, teardowns = measure(settings, mode, args.jobs)
                        results[mode][0].extend(setups)
                        results[mode][1].extend(teardowns)
                    setups, teardowns = measure_pool(settings, args.jobs)
                    results["egress (pool)"][0].extend(setups)
                    results["egress (pool)"][1].extend(teardowns)
            finally:
                teardown_host(settings)
    finally:
        host_ns.close()
    print("| mode | jobs | setup median (ms) | setup p95 (ms) | teardown median (ms) | teardown p95 (ms) |")
    print("|---|---|---|---|---|---|")
    for name, (setups, teardowns) in results.items():
        print(f"| {name} | {len(setups)} | {statistics.median(setups):.2f} | {percentile(setups, 0.95):.2f} "
              f"| {statistics.median(teardowns):.3f} | {percentile(teardowns, 0.95):.3f} |")
    print("\n| mode | setup: raw netlink → this build (ms) | teardown: raw netlink → this build (ms) "
          "| within goals |")
    print("|---|---|---|---|")
    for name, (setups, teardowns) in results.items():
        if name not in RAW_NETLINK_BASELINE:
            continue
        raw_setup, raw_teardown = RAW_NETLINK_BASELINE[name]
        setup, teardown = statistics.median(setups), statistics.median(teardowns)
        ok = setup <= GOAL_SETUP_MS and teardown <= GOAL_TEARDOWN_MS
        print(f"| {name} | {raw_setup:.2f} → {setup:.2f} | {raw_teardown:.3f} → {teardown:.3f} "
              f"| {'yes' if ok else 'NO'} |")
    print(f"\nGoals: setup ≤ {GOAL_SETUP_MS:g} ms, synchronous teardown ≤ {GOAL_TEARDOWN_MS:g} ms. "
          "Baseline (naive pyroute2 netns + veth + bridge): 41 ms setup, 29 ms teardown.")


if __name__ == "__main__":
    main()
