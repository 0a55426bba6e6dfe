"""The read-only view of the runtime's binary that ``crun run`` starts from (worker/sandbox/runtime.py)."""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import require_root
from worker.sandbox.mounts import mounts_under, umount
from worker.sandbox.runtime import choose_runtime, read_only_view


@pytest.fixture()
def folder() -> Iterator[Path]:
    require_root()
    path = Path(tempfile.mkdtemp(prefix="sandpit-view-"))
    try:
        yield path
    finally:
        for point in mounts_under(str(path)):
            umount(point)
        shutil.rmtree(path, ignore_errors=True)


def test_the_view_is_the_binary_and_cannot_be_written(folder):
    """The view is the binary's own inode, on a read-only mount: opening it for writing fails
    (what a job reaching the runtime through /proc/<pid>/exe would try)."""
    binary = folder / "tool"
    shutil.copy("/bin/true", binary)
    view = read_only_view(str(binary), folder / "bin" / "tool")
    assert view == str(folder / "bin" / "tool")
    assert (os.stat(view).st_ino, os.stat(view).st_dev) == (os.stat(binary).st_ino, os.stat(binary).st_dev)
    with pytest.raises(OSError) as refused:
        os.open(view, os.O_WRONLY)
    assert refused.value.errno == errno.EROFS
    assert read_only_view(str(binary), folder / "bin" / "tool") == view  # reused, not stacked
    assert mounts_under(str(folder / "bin")) == [view]


def test_a_replaced_binary_gets_a_new_view(folder):
    """A package upgrade renames a new file over the binary: the old view no longer matches it,
    so it is unmounted and the new binary bound in its place (one mount, the new inode)."""
    binary = folder / "tool"
    shutil.copy("/bin/true", binary)
    view = read_only_view(str(binary), folder / "bin" / "tool")
    assert view is not None
    shutil.copy("/bin/false", folder / "tool.new")
    os.rename(folder / "tool.new", binary)
    again = read_only_view(str(binary), folder / "bin" / "tool")
    assert again == view and os.stat(again).st_ino == os.stat(binary).st_ino
    assert mounts_under(str(folder / "bin")) == [view]
    assert os.stat(view).st_size == os.stat("/bin/false").st_size


def test_no_view_where_none_can_be_made(folder):
    """A view that cannot be made (here: a symlink planted at its name, never followed) leaves
    the runtime to clone itself, as it would without sandpit."""
    binary = folder / "tool"
    shutil.copy("/bin/true", binary)
    (folder / "bin").mkdir()
    os.symlink(binary, folder / "bin" / "tool")
    assert read_only_view(str(binary), folder / "bin" / "tool") is None
    assert mounts_under(str(folder)) == []


def test_crun_is_chosen_with_its_view(settings):
    """The engine's crun starts from the view under the run dir; runc (which clones in ``runc
    init``, from an environment of its own) from its binary."""
    crun = choose_runtime("crun", settings.run_dir)
    assert crun.launch == str(settings.run_dir / "bin" / "crun")
    assert crun.run_argv(Path("/b"), "sandpit-x", Path("/l"))[0] == crun.launch
    if shutil.which("runc"):
        assert choose_runtime("runc", settings.run_dir).launch is None
