"""``worker.sandbox.host_prep``: the one module that prepares the host; its steps are idempotent."""

from __future__ import annotations

from pathlib import Path

from worker.sandbox.host_prep import HostPrepReport, favor_dynamic_cgroups, fix_hybrid_cgroups

MOUNTED = ("35 25 0:30 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 "
           "rw,nsdelegate,favordynmods,memory_recursiveprot\n"
           "36 25 0:31 / /proc rw - proc proc rw\n")


def test_a_hierarchy_with_favordynmods_is_left_alone() -> None:
    """Nothing to remount (so nothing is called) when every cgroup2 mount has the option already."""
    assert favor_dynamic_cgroups(MOUNTED) == []
    assert favor_dynamic_cgroups("36 25 0:31 / /proc rw - proc proc rw\n") == []  # no cgroup2 at all


def test_a_host_that_is_not_hybrid_moves_no_controller(tmp_path: Path) -> None:
    """Pure v2 (cgroup.controllers at the root) and pure v1 (no unified hierarchy) need no move."""
    (tmp_path / "cgroup.controllers").write_text("cpu memory pids hugetlb\n")
    assert fix_hybrid_cgroups(tmp_path) == []
    v1 = tmp_path / "v1"
    v1.mkdir()
    assert fix_hybrid_cgroups(v1) == []
    assert not (tmp_path / "hugetlb").exists()


def test_the_report_says_nothing_by_default() -> None:
    assert HostPrepReport() == HostPrepReport((), ())
