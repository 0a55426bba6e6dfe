"""Shared stores under concurrency and tampering: jobs of one process keeping the same path at once
never share a temporary, never lose an artifact, never serve one job's bytes under another's hash;
a stored file with the wrong content is never trusted and is replaced safely."""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.sandbox.conftest import Runner
from worker.sandbox import blobs
from worker.sandbox.artifacts import Caps, artifact_path, collect_artifacts
from worker.sandbox.engine import Engine

JOBS = 6
CAPS = Caps(file_bytes=64 << 20, count=100, total_bytes=256 << 20)


def stored_sha(store: Path, sha: str) -> str:
    return hashlib.sha256(artifact_path(store, sha).read_bytes()).hexdigest()


def in_threads(n: int, fn: Callable[[int], Any]) -> list[Any]:
    """``fn(0)`` … ``fn(n-1)`` on n threads released together; each one's result or exception."""
    out: list[Any] = [None] * n
    start = threading.Barrier(n)

    def one(i: int) -> None:
        start.wait()
        try:
            out[i] = fn(i)
        except BaseException as exc:
            out[i] = exc

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


def test_concurrent_jobs_keeping_the_same_path(run: Runner, engine: Engine) -> None:
    """Six jobs of one process (threads calling Engine.run, like a threaded worker) each keep
    ``out/blob`` with its own content: every job succeeds, each recorded sha256 is the job's own
    content, and the stored bytes hash to it."""
    results = in_threads(JOBS, lambda _i: run.sh(
        "mkdir out && head -c 12M /dev/urandom > out/blob && sha256sum out/blob", artifacts=("out/blob",)))
    shas = set()
    try:
        for i, got in enumerate(results):
            assert not isinstance(got, BaseException), f"job {i} raised {got!r}"
            res, out, err = got
            assert (res.status, res.reason) == ("succeeded", None), (i, res.message, err)
            assert not res.rejected_artifacts, res.rejected_artifacts
            [art] = res.artifacts
            shas.add(art.sha256)
            own = out.split()[0]
            assert art.path == "out/blob" and art.sha256 == own, f"job {i} recorded another job's content"
            assert stored_sha(engine.artifact_store, art.sha256) == art.sha256
        assert len(shas) == JOBS  # /dev/urandom: six different contents, none lost
    finally:  # random content nobody else stores: leave the shared store as it was
        for got in results:
            if not isinstance(got, BaseException):
                for art in got[0].artifacts:
                    artifact_path(engine.artifact_store, art.sha256).unlink(missing_ok=True)


def test_concurrent_collections_direct(tmp_path: Path) -> None:
    """The same race without containers, many rounds: collect_artifacts from eight threads at once,
    same relative path, different content of several MB; nothing raises and nothing is poisoned."""
    store = tmp_path / "store"
    threads_n, rounds = 8, 3
    for r in range(rounds):
        workspaces = []
        for i in range(threads_n):
            ws = tmp_path / f"ws{r}-{i}"
            (ws / "out").mkdir(parents=True)
            (ws / "out" / "blob").write_bytes(os.urandom(1 << 20) * 6 + bytes([r, i]))
            workspaces.append(ws)
        outcome = in_threads(threads_n, lambda i, ws=workspaces: collect_artifacts(  # type: ignore[misc]
            ws[i], ("out/blob",), store, CAPS))
        for i, got in enumerate(outcome):
            assert not isinstance(got, BaseException), f"collection {i} raised {got!r}"
            kept, rejected = got
            assert not rejected
            [art] = kept
            assert art.sha256 == hashlib.sha256((workspaces[i] / "out" / "blob").read_bytes()).hexdigest()
            assert stored_sha(store, art.sha256) == art.sha256
    leftovers = [p.name for p in store.iterdir() if p.name.startswith(".")]
    assert leftovers == []  # no temporary left behind


def test_same_content_from_many_threads_is_stored_once(tmp_path: Path) -> None:
    """Jobs keeping identical content at once: one stored file, intact, never rewritten."""
    store = tmp_path / "store"
    content = os.urandom(3 << 20)
    workspaces = []
    for i in range(JOBS):
        ws = tmp_path / f"ws{i}"
        ws.mkdir()
        (ws / "blob").write_bytes(content)
        workspaces.append(ws)
    outcome = in_threads(JOBS, lambda i: collect_artifacts(workspaces[i], ("blob",), store, CAPS))
    sha = hashlib.sha256(content).hexdigest()
    for got in outcome:
        assert not isinstance(got, BaseException), repr(got)
        assert [a.sha256 for a in got[0]] == [sha]
    assert artifact_path(store, sha).read_bytes() == content


@pytest.mark.parametrize("poison", [b"evil", b"E" * (1 << 16)], ids=["other-size", "same-size"])
def test_planted_poison_is_replaced_not_trusted(tmp_path: Path, poison: bytes) -> None:
    """A file already at ``<sha>`` with other bytes (planted, or torn by a crash) is not taken as
    the content: the writer replaces it atomically with the verified bytes."""
    store = tmp_path / "store"
    content = b"R" * (1 << 16)
    poison = poison if len(poison) != len(content) or poison != content else b"x"
    sha = hashlib.sha256(content).hexdigest()
    dest = artifact_path(store, sha)
    dest.parent.mkdir(parents=True)
    dest.write_bytes(poison)
    poisoned_inode = dest.stat().st_ino
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "blob").write_bytes(content)
    kept, rejected = collect_artifacts(ws, ("blob",), store, CAPS)
    assert [a.sha256 for a in kept] == [sha] and not rejected
    assert dest.read_bytes() == content
    assert dest.stat().st_ino != poisoned_inode  # a new file renamed over it, not a rewrite in place


def test_poison_after_verification_is_noticed(tmp_path: Path) -> None:
    """A stored file verified once and then changed (its ctime moves) is verified again, not
    trusted from the cache of verified files."""
    store = tmp_path / "store"
    ws = tmp_path / "ws"
    ws.mkdir()
    content = os.urandom(4096)
    (ws / "blob").write_bytes(content)
    [art], _ = collect_artifacts(ws, ("blob",), store, CAPS)
    dest = artifact_path(store, art.sha256)
    assert blobs.intact(dest, art.sha256)
    with open(dest, "r+b") as f:  # tamper in place, same size
        f.write(b"\0" * 16)
    assert not blobs.intact(dest, art.sha256)
    [again], _ = collect_artifacts(ws, ("blob",), store, CAPS)
    assert again.sha256 == art.sha256 and dest.read_bytes() == content
    assert blobs.intact(dest, art.sha256)


def test_stored_file_is_never_opened_for_writing(tmp_path: Path) -> None:
    """A second keep of known, intact content leaves the stored file alone (same inode, same
    bytes, same size): a stored file is never rewritten. Its mtime is renewed on purpose: that is
    how retention knows it was just kept (blobs.remove_if_unused)."""
    store = tmp_path / "store"
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "blob").write_bytes(b"same bytes")
    [art], _ = collect_artifacts(ws, ("blob",), store, CAPS)
    before = artifact_path(store, art.sha256).stat()
    collect_artifacts(ws, ("blob",), store, CAPS)
    after = artifact_path(store, art.sha256).stat()
    assert (before.st_ino, before.st_size) == (after.st_ino, after.st_size)
    assert artifact_path(store, art.sha256).read_bytes() == b"same bytes"
    assert after.st_mtime_ns >= before.st_mtime_ns
