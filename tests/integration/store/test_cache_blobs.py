"""Files a live cache lists stay referenced when an artifact with the same bytes expires
(pipelines/store/cache_blobs.py); a replaced cache's files are noted expired for every host."""

from __future__ import annotations

from sqlalchemy.engine import Engine

from pipelines.store.cache_blobs import forget_unnamed_manifests
from pipelines.store.db import session_scope
from pipelines.store.retention import blob_referenced, cache_store, expired_blobs_after
from tests.integration.store.conftest import at

A, B, C = "a" * 64, "b" * 64, "c" * 64
M1, M2 = "1" * 64, "2" * 64


def test_a_file_a_live_cache_lists_is_referenced(engine: Engine) -> None:
    """With no artifact row naming it, a file of a named manifest is still referenced; a file no
    cache lists is not."""
    with session_scope(engine) as session:
        cache_store(session, "deps", "trusted", M1, 10, at(0), members=[A, B])
    with session_scope(engine) as session:
        assert blob_referenced(session, A) and blob_referenced(session, B) and blob_referenced(session, M1)
        assert not blob_referenced(session, C)


def test_replacing_a_cache_notes_the_files_only_it_listed(engine: Engine) -> None:
    """A new manifest under the same key: the old manifest and its files are noted expired (each
    host asks blob_referenced before removing a copy), and only what no named manifest lists stops
    being referenced; a file both list stays referenced."""
    with session_scope(engine) as session:
        cache_store(session, "deps", "trusted", M1, 10, at(0), members=[A, B])
    with session_scope(engine) as session:
        cache_store(session, "deps", "trusted", M2, 10, at(1), members=[B, C])
    with session_scope(engine) as session:
        noted = {sha for _id, sha in expired_blobs_after(session, 0, at(10))}
        assert {M1, A} <= noted
        assert not blob_referenced(session, A) and not blob_referenced(session, M1)
        assert blob_referenced(session, B) and blob_referenced(session, C)
    with session_scope(engine) as session:
        assert forget_unnamed_manifests(session) == 2  # M1's two member rows
        assert forget_unnamed_manifests(session) == 0
    with session_scope(engine) as session:
        assert blob_referenced(session, B) and blob_referenced(session, C)


def test_a_manifest_named_under_two_keys_keeps_its_files(engine: Engine) -> None:
    """The same manifest saved under two keys (same files, same bytes): replacing one key leaves
    its files referenced through the other, and nothing of it is noted expired."""
    with session_scope(engine) as session:
        cache_store(session, "k1", "trusted", M1, 10, at(0), members=[A])
        cache_store(session, "k2", "untrusted", M1, 10, at(0), members=[A])
    with session_scope(engine) as session:
        cache_store(session, "k1", "trusted", M2, 10, at(1), members=[C])
    with session_scope(engine) as session:
        assert blob_referenced(session, A)
        assert A not in {sha for _id, sha in expired_blobs_after(session, 0, at(10))}
