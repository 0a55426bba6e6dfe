"""The pool's client side (claiming without netlink) and its settings, with files only: no root."""

from __future__ import annotations

import fcntl
import ipaddress
import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from worker.sandbox.network.pool.claim import claim, pool_request
from worker.sandbox.network.pool.fill import settings_from_request
from worker.sandbox.network.pool.layout import META, REFILL_LOG, PoolRequest, parse_entry, pool_lease_text
from worker.sandbox.network.pool.refill import REFILL_BACKOFF_S, _failed_recently, start_refill
from worker.sandbox.network.settings import NetworkSettings
from worker.settings import Settings

REPO = Path(__file__).parents[3]
#: what `sandpit exec --network egress` must not import on its way to a pooled namespace
HEAVY = {"pyroute2", "dataclasses", "pathlib", "typing", "ipaddress", "subprocess", "argparse",
         "concurrent.futures"}


def test_claiming_imports_nothing_heavy() -> None:
    """Importing the client and claiming (here: from no pool) loads none of the heavy modules."""
    code = ("import sys; before = set(sys.modules); "
            "from worker.sandbox.network.pool.claim import claim; "
            "from worker.sandbox.network.pool.layout import PoolRequest; "
            "from worker.sandbox.network.pool.refill import refill_if_low; "
            "claim(PoolRequest('/nonexistent/pool', '/nonexistent/leases', [], 4), 'job'); "
            "print(sorted(set(sys.modules) - before))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    loaded = set(json.loads(done.stdout.replace("'", '"')))
    assert not loaded & HEAVY, loaded & HEAVY
    assert not any(name.startswith("pyroute2") for name in loaded)


@pytest.mark.parametrize(("name", "expected"), [
    ("12.ab34cd56", (12, "ab34cd56")),
    ("0.00", (0, "00")),
    ("meta.json", None),
    ("refill.lock", None),
    (".meta.json.123", None),
    ("12.", None),
    ("12.AB", None),
    ("x.ab", None),
    ("12", None),
])
def test_parse_entry(name: str, expected: tuple[int, str] | None) -> None:
    """Only ``<slot>.<hex token>`` names are pool entries."""
    assert parse_entry(name) == expected


def test_request_from_settings_matches_the_network_settings() -> None:
    """The CLI's request (built without importing the network layer) asks for exactly the pool the
    equivalent NetworkSettings describe, so its claims match what a refill made."""
    settings = Settings(state_dir=Path("/var/lib/x"), run_dir=Path("/run/x"), resolvers=("198.51.100.53",),
                        subnet="10.214.0.0/16", net_allow=("203.0.113.0/24",), net_host_netns=Path("/run/netns/h"))
    request = pool_request(settings)
    assert request is not None
    network = replace(settings.network(), run_dir=Path("/run/x"), pool_size=request.size)
    assert request.config == network.pool_config()
    assert request.pool_dir == str(network.pool_dir)
    assert request.pool_dir.startswith("/run/x/net/pool/")
    assert request.lease_root == str(network.net_dir / "leases")


def test_pool_off() -> None:
    """A pool size of 0 (Settings.net_pool or NetworkSettings.pool_size) means no pool request."""

    class Off:
        state_dir = Path("/s")
        run_dir = Path("/r")
        net_pool = 0

    assert pool_request(Off()) is None
    assert NetworkSettings(state_dir=Path("/s")).pool_request() is None


def test_request_round_trips_to_the_refill() -> None:
    """The detached refill rebuilds the very NetworkSettings the request came from."""
    network = NetworkSettings(state_dir=Path("/s"), subnet=ipaddress.IPv4Network("10.214.0.0/16"),
                              resolvers=("198.51.100.53",), allow=("203.0.113.0/24",), host_netns=Path("/h"),
                              run_dir=Path("/r"), pool_size=6, pool_low_water=2)
    request = network.pool_request()
    assert request is not None
    args = json.loads(request.as_args())
    assert PoolRequest(**args).config == request.config
    assert settings_from_request(args) == replace(network, pool_path=network.pool_dir)


def test_each_configuration_has_a_pool_of_its_own() -> None:
    """Two host namespaces (or resolvers, subnets...) get two pool directories: processes with
    different settings never drain each other's pool."""
    one = NetworkSettings(state_dir=Path("/s"), run_dir=Path("/r"), host_netns=Path("/run/netns/a"), pool_size=4)
    other = replace(one, host_netns=Path("/run/netns/b"))
    assert one.pool_dir != other.pool_dir
    assert one.pool_dir.parent == other.pool_dir.parent == Path("/r/net/pool")
    assert replace(one, pool_size=8).pool_dir == one.pool_dir


def make_pool(tmp_path: Path, entries: dict[str, bytes]) -> PoolRequest:
    """A pool directory whose entries are plain files (no namespaces), with their leases."""
    pool_dir = tmp_path / "run" / "net" / "pool"
    pool_dir.mkdir(parents=True, mode=0o700)
    leases = tmp_path / "state" / "net" / "leases"
    (leases / "10.213.0.0_16").mkdir(parents=True)
    request = PoolRequest(str(pool_dir), str(leases), ["config"], 4)
    (pool_dir / META).write_text(json.dumps({"config": ["config"], "lease_dir": "10.213.0.0_16",
                                             "resolv_conf": "nameserver 198.51.100.53\n"}))
    for name, lease in entries.items():
        (pool_dir / name).touch()
        (leases / "10.213.0.0_16" / name.split(".")[0]).write_bytes(lease)
    return request


def lease_of(request: PoolRequest, slot: int) -> bytes:
    return (Path(request.lease_root) / "10.213.0.0_16" / str(slot)).read_bytes()


def test_an_entry_that_is_not_a_network_namespace_is_never_claimed(tmp_path: Path) -> None:
    """A file in the pool that is not a mounted network namespace is refused, and its lease is left as
    it was (the reaper removes it)."""
    pool_dir = str(tmp_path / "run" / "net" / "pool")
    request = make_pool(tmp_path, {"5.aa": pool_lease_text("aa", pool_dir)})
    assert claim(request, "job") is None
    assert lease_of(request, 5) == pool_lease_text("aa", pool_dir)


def test_used_or_foreign_leases_are_skipped(tmp_path: Path) -> None:
    """An entry whose lease names a job (used), another token, or another pool is skipped."""
    pool_dir = str(tmp_path / "run" / "net" / "pool")
    request = make_pool(tmp_path, {"1.aa": b"123 some-job\n", "2.bb": pool_lease_text("cc", pool_dir),
                                   "3.dd": pool_lease_text("dd", "/elsewhere/pool")})
    assert claim(request, "job") is None
    assert lease_of(request, 1) == b"123 some-job\n"


def test_a_locked_lease_is_skipped_without_waiting(tmp_path: Path) -> None:
    """An entry being claimed (or made, or reaped) by someone else is skipped at once, not waited for."""
    pool_dir = str(tmp_path / "run" / "net" / "pool")
    request = make_pool(tmp_path, {"7.ee": pool_lease_text("ee", pool_dir)})
    code = ("import fcntl, os, sys; fd = os.open(sys.argv[1], os.O_RDWR); fcntl.flock(fd, fcntl.LOCK_EX); "
            "print('locked', flush=True); sys.stdin.read()")
    holder = subprocess.Popen([sys.executable, "-c", code, str(Path(request.lease_root) / "10.213.0.0_16" / "7")],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        assert claim(request, "job") is None
        fd = os.open(Path(request.lease_root) / "10.213.0.0_16" / "7", os.O_RDONLY)
        try:
            with pytest.raises(BlockingIOError):
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(fd)
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(timeout=10)
        holder.stdout.close()  # type: ignore[union-attr]


@pytest.mark.parametrize("flaw", ["group-readable", "symlink", "other-config"])
def test_an_untrustworthy_pool_is_not_used(tmp_path: Path, flaw: str) -> None:
    """A pool directory others may enter, a symlinked pool directory, or a pool made for another
    configuration gives no claim."""
    pool_dir = str(tmp_path / "run" / "net" / "pool")
    request = make_pool(tmp_path, {"9.ff": pool_lease_text("ff", pool_dir)})
    if flaw == "group-readable":
        os.chmod(request.pool_dir, 0o750)  # noqa: S103 - the flaw under test
    elif flaw == "symlink":
        os.rename(request.pool_dir, request.pool_dir + ".real")
        os.symlink(request.pool_dir + ".real", request.pool_dir)
    else:
        request = PoolRequest(request.pool_dir, request.lease_root, ["another config"], 4)
    assert claim(request, "job") is None


def test_no_refill_is_started_right_after_a_failed_one(tmp_path: Path) -> None:
    """A refill that failed a moment ago (its log says so) holds off new ones for a while; an old
    failure does not."""
    request = make_pool(tmp_path, {})
    log = Path(request.pool_dir) / REFILL_LOG
    log.write_text("sandpit pool refill failed: nft is not installed\n")
    assert start_refill(request) is None
    fd = os.open(request.pool_dir, os.O_RDONLY)
    try:
        assert _failed_recently(fd)
        past = log.stat().st_mtime - REFILL_BACKOFF_S - 1
        os.utime(log, (past, past))
        assert not _failed_recently(fd)
    finally:
        os.close(fd)
