"""``pipelines.files.locks``: the one ``flock`` helper (exclusive/shared, waiting or not, path or fd)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from pipelines.files.locks import FileLock, hold, is_held, lock_fd, try_hold


def test_an_exclusive_lock_excludes_every_other_holder(tmp_path: Path) -> None:
    """While one holds the file exclusively, neither an exclusive nor a shared try gets it."""
    path = tmp_path / "x.lock"
    with hold(path) as lock:
        assert lock.held and is_held(path)
        assert try_hold(path) is None
        assert try_hold(path, shared=True) is None
    assert not lock.held and not is_held(path)
    again = try_hold(path)
    assert again is not None
    again.release()


def test_shared_locks_share_and_keep_an_exclusive_one_out(tmp_path: Path) -> None:
    """Many shared holders at once; an exclusive try fails until the last of them lets go."""
    path = tmp_path / "s.lock"
    first = hold(path, shared=True)
    second = try_hold(path, shared=True)
    assert second is not None
    assert try_hold(path) is None and is_held(path)
    first.release()
    assert try_hold(path) is None
    second.release()
    exclusive = try_hold(path)
    assert exclusive is not None
    exclusive.close()  # close() is release(), for exit stacks and contextlib.closing
    assert not exclusive.held


def test_a_blocking_hold_waits_for_the_holder(tmp_path: Path) -> None:
    """``hold`` returns only after the other holder released the lock."""
    path = tmp_path / "w.lock"
    first = hold(path)
    got: list[float] = []

    def wait_for_it() -> None:
        with hold(path):
            got.append(time.monotonic())

    waiter = threading.Thread(target=wait_for_it)
    waiter.start()
    time.sleep(0.2)
    assert not got  # still waiting
    released = time.monotonic()
    first.release()
    waiter.join(5)
    assert got and got[0] >= released


def test_a_new_lock_file_is_0600_and_a_given_mode_is_kept(tmp_path: Path) -> None:
    """Created 0600 unless told otherwise; the lock file's content is the holder's to write."""
    with hold(tmp_path / "a.lock"):
        pass
    with hold(tmp_path / "b.lock", mode=0o644) as lock:
        assert lock.fd is not None
        os.pwrite(lock.fd, b"123\n", 0)
    assert (tmp_path / "a.lock").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "b.lock").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "b.lock").read_bytes() == b"123\n"


def test_a_symlink_at_the_lock_name_is_refused_not_followed(tmp_path: Path) -> None:
    """A planted symlink is never followed: ELOOP, and its target is neither created nor locked."""
    target = tmp_path / "elsewhere"
    (tmp_path / "link.lock").symlink_to(target)
    with pytest.raises(OSError, match="Too many levels of symbolic links"):
        hold(tmp_path / "link.lock")
    with pytest.raises(OSError, match="Too many levels of symbolic links"):
        try_hold(tmp_path / "link.lock")
    with pytest.raises(OSError, match="Too many levels of symbolic links"):
        is_held(tmp_path / "link.lock")  # not "free": the caller must not judge by a planted name
    assert not target.exists()


def test_create_false_and_is_held_never_make_a_file(tmp_path: Path) -> None:
    """Asking about a lock, or holding only an existing one, leaves no file behind."""
    path = tmp_path / "none.lock"
    assert not is_held(path)
    with pytest.raises(FileNotFoundError):
        hold(path, create=False)
    made = try_hold(path)
    assert made is not None and path.exists()
    made.release()


def test_a_name_beneath_a_directory_fd(tmp_path: Path) -> None:
    """``dir_fd`` opens the lock file relative to an open directory."""
    folder = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with hold("d.lock", dir_fd=folder):
            assert is_held(tmp_path / "d.lock")
    finally:
        os.close(folder)
    assert not is_held(tmp_path / "d.lock")


def test_lock_fd_on_a_callers_fd(tmp_path: Path) -> None:
    """``lock_fd`` locks an fd the caller keeps; non-blocking it says False when someone holds it."""
    path = tmp_path / "fd.lock"
    path.touch()
    mine = os.open(path, os.O_RDONLY)
    other = os.open(path, os.O_RDONLY)
    try:
        assert lock_fd(mine)
        assert not lock_fd(other, blocking=False)
        assert not lock_fd(other, shared=True, blocking=False)
    finally:
        os.close(mine)
    try:
        assert lock_fd(other, shared=True, blocking=False)
    finally:
        os.close(other)


def test_release_is_idempotent_and_repr_says_the_state(tmp_path: Path) -> None:
    """Releasing twice is harmless (teardown paths may both run)."""
    lock = hold(tmp_path / "r.lock")
    assert "held" in repr(lock)
    lock.release()
    lock.release()
    assert "released" in repr(lock) and isinstance(lock, FileLock)


def test_the_lock_dies_with_a_killed_holder(tmp_path: Path) -> None:
    """A holder SIGKILLed mid-hold leaves a free lock: the kernel releases it, nobody cleans up."""
    path = tmp_path / "k.lock"
    code = ("import sys, time; from pipelines.files.locks import hold; lock = hold(sys.argv[1]); "
            "print('held', flush=True); time.sleep(60)")
    holder = subprocess.Popen([sys.executable, "-c", code, str(path)], stdout=subprocess.PIPE, text=True,
                              cwd=Path(__file__).resolve().parents[3])
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        assert is_held(path) and try_hold(path) is None
        holder.send_signal(signal.SIGKILL)
        holder.wait(10)
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait(10)
        if holder.stdout is not None:
            holder.stdout.close()
    assert not is_held(path)


def test_a_taker_whose_file_was_unlinked_before_it_locked_takes_the_one_the_name_names(tmp_path: Path) -> None:
    """A waiter opened the lock file, then its holder removed it (an owner at its end, a reaper
    that took a dead owner's lock) and released: the waiter's lock would be on a file no one else
    can see, so it takes the lock on what the name names now, and a look at the name sees it held."""
    path = tmp_path / "job.lock"
    first = hold(path)
    got: list[FileLock] = []
    waiter = threading.Thread(target=lambda: got.append(hold(path)))
    waiter.start()
    time.sleep(0.2)  # the waiter has opened the file and waits for the lock
    path.unlink()
    first.release()
    waiter.join(5)
    assert got and got[0].held
    assert got[0].fd is not None and os.fstat(got[0].fd).st_ino == os.stat(path).st_ino
    assert is_held(path)
    got[0].release()
    assert not is_held(path)


def test_take_own_rides_out_a_momentary_look(tmp_path: Path) -> None:
    """``is_held`` takes the lock for a moment to look; an owner taking its fresh lock then is not
    told it is someone else's (``take_own`` retries a few milliseconds), while a real holder keeps
    it refused."""
    from pipelines.files.locks import take_own

    path = tmp_path / "owner.lock"
    look = hold(path)  # what is_held does, held here across the owner's first tries
    threading.Timer(0.01, look.release).start()
    mine = take_own(path)
    assert mine is not None and mine.held
    assert take_own(path, attempts=3) is None  # a live holder: refused
    mine.release()
