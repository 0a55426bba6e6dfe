"""Temporaries made ahead for the API's bundle intake (api/job_files.py ``MadeAhead``): they have
no name until a verified file is linked from one, and each serves one file."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

import pytest

from api.job_files import MadeAhead
from pipelines.files.intake import FILE_MODE, DigestMismatch, Intake


def test_temporaries_made_ahead_have_no_name_until_a_file_is_linked_from_one(tmp_path: Path) -> None:
    """A refill makes SIZE unnamed temporaries (the directory lists nothing); an intake that
    takes one stores the verified bytes under their sha256 with the store's mode; the next take
    gives another temporary, and a drained pool gives None (the intake then makes its own)."""
    ahead = MadeAhead(tmp_path / "artifacts")
    ahead.refill()
    assert len(ahead.ready) == MadeAhead.SIZE
    assert os.listdir(tmp_path / "artifacts") == []
    data = b"made ahead\n"
    sha = hashlib.sha256(data).hexdigest()
    taken = ahead.take()
    assert taken is not None and taken[1] is None
    intake = Intake(tmp_path / "artifacts", sha, len(data), taken)
    intake.write(data)
    assert intake.commit_blob() is True
    stored = tmp_path / "artifacts" / sha[:2] / sha
    assert stored.read_bytes() == data and stat.S_IMODE(stored.stat().st_mode) == FILE_MODE
    assert os.listdir(tmp_path / "artifacts") == [sha[:2]]
    others = [ahead.take() for _ in range(MadeAhead.SIZE - 1)]
    fds = [t[0] for t in others if t is not None]
    assert len(set(fds)) == MadeAhead.SIZE - 1 and taken[0] not in fds  # each serves one file
    assert ahead.take() is None
    for fd in fds:
        os.close(fd)


def test_a_temporary_whose_bytes_are_not_their_name_stores_nothing(tmp_path: Path) -> None:
    """The pool changes nothing of the check: a body that does not hash to its name is dropped."""
    ahead = MadeAhead(tmp_path)
    ahead.refill()
    intake = Intake(tmp_path, hashlib.sha256(b"other").hexdigest(), 10, ahead.take())
    intake.write(b"lie")
    with pytest.raises(DigestMismatch):
        intake.commit_blob()
    assert os.listdir(tmp_path) == []
    while (left := ahead.take()) is not None:
        os.close(left[0])


def test_an_api_that_stops_closes_the_temporaries_it_made_ahead(tmp_path: Path) -> None:
    """``close`` (the API's lifespan end) closes every temporary not taken and a later refill makes
    none: an API stopped in a process that goes on keeps no descriptor."""
    ahead = MadeAhead(tmp_path)
    ahead.refill()
    fds = [fd for fd, _name in ahead.ready]
    assert len(fds) == MadeAhead.SIZE
    ahead.close()
    for fd in fds:
        with pytest.raises(OSError):
            os.fstat(fd)
    ahead.refill()
    assert ahead.ready == [] and ahead.take() is None
