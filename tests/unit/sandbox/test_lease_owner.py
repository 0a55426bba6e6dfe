"""What a lease file says of its holder (worker/sandbox/leases.py ``write_owner``): always exactly
the last holder's lines, whatever the file held before (pure file I/O, no services)."""

from __future__ import annotations

import os

import pytest

from pipelines.files.locks import try_hold
from worker.sandbox.leases import holder_cgroup, write_owner


@pytest.mark.parametrize("before", ["", "1\n", "123456789\n/sandpit/a-much-longer-job-id-than-the-next\n",
                                    "7\n/sandpit/ab\n"])
def test_the_file_holds_the_last_holder_only(tmp_path, before):
    """Over a longer, a shorter or an empty text, the file ends up as the new pid and holder."""
    path = tmp_path / "100000000-65536.lock"
    path.write_text(before)
    lease = try_hold(path)
    assert lease is not None
    try:
        write_owner(lease, "/sandpit/0190d6f1-job")
        text = path.read_text()
        assert text == f"{os.getpid()}\n/sandpit/0190d6f1-job\n"
        assert holder_cgroup(text) == "/sandpit/0190d6f1-job"
        write_owner(lease)
        assert path.read_text() == f"{os.getpid()}\n"
    finally:
        lease.release()
