"""Writers of one SQLite file take turns (pipelines/store/writer_turn.py): one at a time within a
process and across processes, re-entrant per thread, bounded by the timeout, and never in the
way of a commit."""

from __future__ import annotations

import gc
import subprocess
import sys
import threading
import time
from pathlib import Path

import sqlalchemy as sa

from pipelines.store.db import make_engine, read_scope, session_scope
from pipelines.store.writer_turn import WriterTurn, turn_for

_HOLD_IN_ANOTHER_PROCESS = """
import sys, time
from pipelines.store.writer_turn import WriterTurn
turn = WriterTurn(sys.argv[1], 5.0)
with turn.held():
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
"""


def test_threads_of_one_process_write_one_at_a_time(tmp_path: Path) -> None:
    """Eight threads in the turn at once: never two inside together."""
    turn = WriterTurn(str(tmp_path / "db.write.lock"), 5.0)
    inside, most = 0, 0
    count = threading.Lock()

    def write() -> None:
        nonlocal inside, most
        for _ in range(20):
            with turn.held():
                with count:
                    inside += 1
                    most = max(most, inside)
                time.sleep(0.0005)
                with count:
                    inside -= 1

    threads = [threading.Thread(target=write) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert most == 1


def test_a_process_waits_for_another_processes_turn(tmp_path: Path) -> None:
    """While another process holds the turn this one cannot have it (it goes on without it once
    its timeout ran out), and has it once that process is gone (the kernel drops its flock)."""
    lock = tmp_path / "db.write.lock"
    holder = subprocess.Popen([sys.executable, "-c", _HOLD_IN_ANOTHER_PROCESS, str(lock), "60"],
                              stdout=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parents[3])
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        turn = WriterTurn(str(lock), 0.2)
        with turn.held() as had:
            assert had is False
        holder.kill()
        holder.wait()
        with turn.held() as had:
            assert had is True
    finally:
        holder.kill()
        holder.wait()
        if holder.stdout is not None:
            holder.stdout.close()


def test_the_turn_is_reentrant_and_bounded(tmp_path: Path) -> None:
    """A thread nesting the turn gets it again; a thread that cannot have it goes on after the
    timeout (SQLite's busy handler then decides) instead of waiting for ever."""
    turn = WriterTurn(str(tmp_path / "db.write.lock"), 0.2)
    with turn.held() as outer, turn.held() as inner:
        assert outer and inner
        went_on = threading.Event()

        def other() -> None:
            with turn.held() as had:
                if not had:
                    went_on.set()

        thread = threading.Thread(target=other)
        thread.start()
        thread.join(timeout=5)
        assert went_on.is_set()


def test_engines_of_one_file_share_one_turn_and_writes_commit(tmp_path: Path) -> None:
    """Two engines on one file in one process share the turn (no waiting on their own flock);
    concurrent write transactions of both all commit."""
    path = tmp_path / "db.sqlite"
    assert turn_for(str(path), 1.0) is turn_for(str(tmp_path / "." / "db.sqlite"), 1.0)
    first, second = make_engine(f"sqlite:///{path}"), make_engine(f"sqlite:///{path}")
    try:
        with first.begin() as connection:
            connection.exec_driver_sql("CREATE TABLE t (x INTEGER)")

        def write(engine: sa.Engine, base: int) -> None:
            for i in range(25):
                with session_scope(engine) as session:
                    session.connection().exec_driver_sql("INSERT INTO t VALUES (?)", (base + i,))

        threads = [threading.Thread(target=write, args=(engine, 100 * n))
                   for n, engine in enumerate((first, second, first, second))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        with first.connect() as connection:
            assert connection.exec_driver_sql("SELECT count(*) FROM t").scalar() == 100
    finally:
        first.dispose()
        second.dispose()


def _queued(turn: WriterTurn, count: int) -> None:
    deadline = time.monotonic() + 5
    while len(turn._lock._waiters) < count:  # the queue is what is tested
        assert time.monotonic() < deadline, "the waiter never queued"
        time.sleep(0.001)


def test_waiting_threads_get_the_turn_in_the_order_they_came(tmp_path: Path) -> None:
    """A holder that lets go and asks again at once goes behind the threads already waiting
    (with a plain lock it usually won, and a writing loop could keep the others out)."""
    turn = WriterTurn(str(tmp_path / "db.write.lock"), 5.0)
    order: list[str] = []

    def write(name: str) -> None:
        with turn.held():
            order.append(name)

    with turn.held():
        threads = []
        for i, name in enumerate(("b", "c")):
            threads.append(threading.Thread(target=write, args=(name,)))
            threads[-1].start()
            _queued(turn, i + 1)
    write("a")  # the holder again, straight away: after b and c
    for t in threads:
        t.join(timeout=5)
    assert order == ["b", "c", "a"]


def test_a_waiter_that_gives_up_leaves_the_queue(tmp_path: Path) -> None:
    """A waiter whose timeout runs out goes on without the turn and is not handed it later; the
    next waiter is."""
    turn = WriterTurn(str(tmp_path / "db.write.lock"), 0.2)
    got: dict[str, bool] = {}
    patient = WriterTurn(str(tmp_path / "db.write.lock"), 5.0)
    patient._lock = turn._lock  # two timeouts on one queue

    def wait(name: str, which: WriterTurn) -> None:
        with which.held() as had:
            got[name] = had

    with turn.held():
        quick = threading.Thread(target=wait, args=("quick", turn))
        quick.start()
        _queued(turn, 1)
        slow = threading.Thread(target=wait, args=("slow", patient))
        slow.start()
        _queued(turn, 2)
        quick.join(timeout=5)
        assert got == {"quick": False} and len(turn._lock._waiters) == 1
    slow.join(timeout=5)
    assert got == {"quick": False, "slow": True} and not turn._lock._waiters


def _open_lock_files(path: Path) -> int:
    fds = Path("/proc/self/fd")
    count = 0
    for fd in fds.iterdir():
        try:
            count += (fds / fd.name).readlink() == Path(f"{path}.write.lock")
        except OSError:
            continue
    return count


def test_a_databases_lock_file_is_closed_with_its_last_engine(tmp_path: Path) -> None:
    """The turn's lock file stays open while an engine on the database lives, and is closed when
    the last one is gone: a process that opens database after database keeps no descriptor for
    each (the test suite ran out of descriptors that way)."""
    path = tmp_path / "db.sqlite"

    def write(engine: sa.Engine, sql: str) -> None:
        with session_scope(engine) as session:
            session.connection().exec_driver_sql(sql)
        with read_scope(engine) as session:  # a reader of the engine does not keep it alive
            session.connection().exec_driver_sql("SELECT count(*) FROM t")

    first, second = make_engine(f"sqlite:///{path}"), make_engine(f"sqlite:///{path}")
    write(first, "CREATE TABLE t (x INTEGER)")
    write(second, "INSERT INTO t VALUES (0)")
    assert _open_lock_files(path) == 1  # one per process and database, shared by its engines
    first.dispose()
    del first
    gc.collect()
    assert _open_lock_files(path) == 1  # the second engine still writes with it
    write(second, "INSERT INTO t VALUES (1)")
    second.dispose()
    del second
    gc.collect()
    assert _open_lock_files(path) == 0
