"""Crafting layer archives (tar, gzip, zstd) member by member, for the unpacking tests and the
test images pushed to the loopback registry."""

from __future__ import annotations

import gzip
import hashlib
import io
import tarfile
from collections.abc import Iterable

Member = tuple[tarfile.TarInfo, bytes]


def member(name: str, data: bytes = b"", *, kind: bytes = tarfile.REGTYPE, mode: int = 0o644, link: str = "",
           uid: int = 0, gid: int = 0, xattrs: dict[str, bytes] | None = None, size: int | None = None,
           devmajor: int = 0, devminor: int = 0) -> Member:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.uid, info.gid = uid, gid
    info.linkname = link
    info.mtime = 1_700_000_000
    info.devmajor, info.devminor = devmajor, devminor
    info.size = len(data) if size is None else size
    if xattrs:
        info.pax_headers = {f"SCHILY.xattr.{k}": v.decode("utf-8", "surrogateescape") for k, v in xattrs.items()}
    return info, data


def directory(name: str, mode: int = 0o755) -> Member:
    return member(name, kind=tarfile.DIRTYPE, mode=mode)


def symlink(name: str, target: str) -> Member:
    return member(name, kind=tarfile.SYMTYPE, link=target, mode=0o777)


def hardlink(name: str, target: str) -> Member:
    return member(name, kind=tarfile.LNKTYPE, link=target)


def tar_bytes(members: Iterable[Member]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for info, data in members:
            archive.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return out.getvalue()


def compress(raw: bytes, how: str = "gzip") -> bytes:
    if how == "gzip":
        return gzip.compress(raw, compresslevel=1, mtime=0)
    if how == "zstd":
        import zstandard

        return zstandard.ZstdCompressor(level=3).compress(raw)
    return raw


def digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()
