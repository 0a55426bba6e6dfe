"""The artifact walk against a workspace shaped to exhaust the host: hundreds of thousands of
entries in one directory, tens of thousands of directories. The collecting process's memory and
open files stay bounded; the job is told which cap was hit.

Memory is measured as the growth of the peak RSS (``ru_maxrss``) of a fresh process around one
``collect_artifacts`` call, so nothing else of the test run is counted.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import REPO, require_root, require_tools
from tests.sandbox.conftest import Runner
from worker.sandbox.artifacts import MAX_ENTRIES, MAX_REJECTED, Caps, collect_artifacts
from worker.sandbox.engine import Engine
from worker.sandbox.request import Limits

ENTRIES = 400_000
RSS_BOUND_MB = 30

MEASURE = r"""
import json, resource, sys
from pathlib import Path
from worker.sandbox.artifacts import Caps, collect_artifacts

ws, warm, store, pattern = sys.argv[1:5]
caps = Caps(file_bytes=1 << 20, count=1000, total_bytes=1 << 30)
collect_artifacts(Path(warm), ("x",), Path(store), caps)  # every code path loaded before measuring
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
kept, rejected = collect_artifacts(Path(ws), (pattern,), Path(store), caps)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"grew_kb": after - before, "kept": len(kept), "rejected": [r.as_dict() for r in rejected]}))
"""


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A private, size- and inode-capped tmpfs: 400,000 files on this machine's journaled disk take
    minutes to make, on tmpfs seconds; unmounting drops them all at once."""
    require_root()
    require_tools("mount", "umount")
    where = tmp_path_factory.mktemp("walk-tmpfs")
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256m,nr_inodes=600k,mode=0700", "sandpit-test", str(where)],
                   check=True)
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


@pytest.fixture(scope="module")
def crowded(scratch: Path) -> Path:
    """A workspace whose ``big/`` holds 400,000 empty files."""
    root = scratch / "crowded"
    big = root / "ws" / "big"
    big.mkdir(parents=True)
    fd = os.open(big, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for i in range(ENTRIES):
            os.close(os.open(f"f{i:06d}", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644, dir_fd=fd))
    finally:
        os.close(fd)
    (root / "warm").mkdir()
    (root / "warm" / "x").write_bytes(b"x")
    return root


def measure(root: Path, pattern: str) -> dict[str, object]:
    proc = subprocess.run(
        [sys.executable, "-c", MEASURE, str(root / "ws"), str(root / "warm"), str(root / "store"), pattern],
        cwd=REPO, capture_output=True, text=True, check=False, timeout=300,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result: dict[str, object] = json.loads(proc.stdout)
    return result


@pytest.mark.parametrize("pattern", ["big", "**/*.xml"], ids=["all-named", "none-named"])
def test_huge_directory_walk_is_bounded_in_memory(crowded: Path, pattern: str) -> None:
    """400,000 entries in one directory, named by the pattern or not: the collecting process
    grows by less than 30 MB, the walk stops at its cap of entries examined and says so, and the
    list of refusals stays short (the rest counted in one line)."""
    got = measure(crowded, pattern)
    grew, rejected = got["grew_kb"], got["rejected"]
    assert isinstance(grew, int) and isinstance(rejected, list)
    assert grew < RSS_BOUND_MB * 1024, f"the walk grew the collecting process's RSS by {grew} KiB"
    assert len(rejected) <= MAX_REJECTED + 2
    stopped = [r for r in rejected if "walk stopped" in r["why"]]
    assert len(stopped) == 1 and f"{MAX_ENTRIES} entries examined" in stopped[0]["why"]
    if pattern == "big":
        assert got["kept"] == 1000  # the count cap
        assert any("more refused entries not listed" in r["why"] for r in rejected)
    else:
        assert got["kept"] == 0


def test_many_directories_do_not_exhaust_file_descriptors(scratch: Path) -> None:
    """More sibling directories than the process may open files (its soft limit lowered to 512
    above what it has open for the test), each with one file: all are collected, with one open
    directory per level of depth rather than one per directory found."""
    ws = scratch / "many"
    top = ws / "d"
    top.mkdir(parents=True)
    n = 3_000
    for i in range(n):
        sub = top / f"s{i}"
        sub.mkdir()
        (sub / "f").write_bytes(b"%d" % i)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    # 512 more than this process has open now (whatever ran before it), far fewer than n
    limit = min(hard, len(os.listdir("/proc/self/fd")) + 512)
    assert limit < n
    resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))
    try:
        caps = Caps(file_bytes=1 << 20, count=n, total_bytes=1 << 30)
        kept, rejected = collect_artifacts(ws, ("d",), scratch / "many-store", caps)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        shutil.rmtree(ws, ignore_errors=True)
    assert rejected == []
    assert len(kept) == n and len({a.sha256 for a in kept}) == n


def test_cap_on_entries_examined_counts_unnamed_entries(tmp_path: Path) -> None:
    """Entries the patterns do not name count toward the cap on entries examined: a job cannot
    hide a slow walk behind names nobody asked for."""
    ws = tmp_path / "ws"
    ws.mkdir()
    for i in range(50):
        (ws / f"junk{i}").write_bytes(b"")
    (ws / "zzz.keep").write_bytes(b"k")
    caps = Caps(file_bytes=1 << 20, count=10, total_bytes=1 << 20, entries=20)
    kept, rejected = collect_artifacts(ws, ("*.keep",), tmp_path / "store", caps)
    assert len(rejected) == 1 and "cap of 20 entries examined" in rejected[0].why
    assert len(kept) <= 1


def test_a_job_is_told_the_walk_cap_was_hit(engine: Engine, no_leftovers: None) -> None:
    """A real job that fills a directory past the cap on entries examined gets a rejected entry
    saying so, and keeps what it kept before the cap. (One runtime, the default: the walk runs on
    the host after the job, whichever runtime ran it, and making 200,000 files takes a while.)"""
    run = Runner(engine, None)
    limits = Limits(timeout_s=240, disk_bytes=2048 << 20, artifact_count=5)
    res, _out, err = run("python3", "-c", f"""
import os
os.makedirs('big')
fd = os.open('big', os.O_RDONLY)
for i in range({MAX_ENTRIES + 500}):
    os.close(os.open('f%d' % i, os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd))
""", image="python", artifacts=("big",), limits=limits)
    assert res.status == "succeeded", (res.reason, res.message, err[-2000:])
    assert len(res.artifacts) == 5
    whys = [r.why for r in res.rejected_artifacts]
    assert any(f"cap of {MAX_ENTRIES} entries examined" in w for w in whys), whys[-3:]
    assert len(whys) <= MAX_REJECTED + 2
