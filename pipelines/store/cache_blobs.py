"""Which stored files each cache manifest names (``cache_blob``, revision 0011; adapter).

A cache is a manifest in the content-addressed store listing the files it holds (worker/cache.py),
and those files are stored blobs like any artifact's. Expiry removes a blob once no row names it
(:func:`pipelines.store.retention.blob_referenced`); without these rows a blob a live cache still
lists would go as soon as an artifact with the same bytes expired, and the cache would restore
with a hole (worker/cache.py then makes it a miss). So saving a cache records its members here,
the reference check asks "is it a member of a manifest some cache entry names", and replacing a
cache notes the old manifest's members as expired for every host's copies.

Rows are written once per manifest (its content decides its members) and forgotten when no cache
entry names the manifest any more (:func:`forget_unnamed_manifests`, from the retention run).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session

from pipelines.store.models import CacheBlob, CacheEntry

_BLOBS: Any = CacheBlob.__table__  # type: ignore[attr-defined]
_ENTRIES: Any = CacheEntry.__table__  # type: ignore[attr-defined]

_ANY_MEMBER = sa.select(_BLOBS.c.blob_sha256).where(_BLOBS.c.manifest_sha256 == sa.bindparam("p_manifest")).limit(1)
_INSERT_MEMBER = sa.insert(_BLOBS).values(manifest_sha256=sa.bindparam("p_manifest"),
                                          blob_sha256=sa.bindparam("p_blob"))
_MEMBERS = sa.select(_BLOBS.c.blob_sha256).where(_BLOBS.c.manifest_sha256 == sa.bindparam("p_manifest"))
_NAMED = sa.select(_ENTRIES.c.key).where(_ENTRIES.c.sha256 == sa.bindparam("p_manifest")).limit(1)
# a member of a manifest that some cache entry (any key, any trust) still names
LIVE_MEMBER = (sa.select(_BLOBS.c.manifest_sha256)
               .join(_ENTRIES, _ENTRIES.c.sha256 == _BLOBS.c.manifest_sha256)
               .where(_BLOBS.c.blob_sha256 == sa.bindparam("p_sha256")).limit(1))
_FORGET_UNNAMED = sa.delete(_BLOBS).where(~sa.exists().where(_ENTRIES.c.sha256 == _BLOBS.c.manifest_sha256))


def record_members(session: Session, manifest_sha256: str, members: Iterable[str]) -> None:
    """Record the files ``manifest_sha256`` lists (once: a manifest's content fixes them)."""
    unique = sorted({m for m in members if m})
    connection = session.connection()
    if not unique or connection.execute(_ANY_MEMBER, {"p_manifest": manifest_sha256}).first() is not None:
        return
    try:
        with connection.begin_nested():
            connection.execute(_INSERT_MEMBER, [{"p_manifest": manifest_sha256, "p_blob": m} for m in unique])
    except IntegrityError:  # another job saved the same manifest at that moment: its rows are these
        pass


def manifest_members(session: Session, manifest_sha256: str) -> list[str]:
    """The files recorded for ``manifest_sha256``, sorted."""
    rows = session.connection().execute(_MEMBERS, {"p_manifest": manifest_sha256})
    return sorted(row.blob_sha256 for row in rows)


def members_of_unnamed(session: Session, manifest_sha256: str) -> list[str]:
    """The files of ``manifest_sha256`` if no cache entry names it any more (after a replace)."""
    connection = session.connection()
    if connection.execute(_NAMED, {"p_manifest": manifest_sha256}).first() is not None:
        return []
    return [row.blob_sha256 for row in connection.execute(_MEMBERS, {"p_manifest": manifest_sha256})]


def forget_unnamed_manifests(session: Session) -> int:
    """Drop the member rows of manifests no cache entry names; returns how many rows went."""
    return int(session.connection().execute(_FORGET_UNNAMED).rowcount or 0)
