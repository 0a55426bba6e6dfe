"""Unpacking one untrusted image layer into an empty directory, never writing outside it (adapter).

A layer is a tar archive (gzip, zstd or plain) written by whoever pushed the image, unpacked on the
host as root. Nothing here opens a path of more than one component: every directory is reached by
a walk of ``O_DIRECTORY | O_NOFOLLOW`` opens from the layer's root fd, one component at a time,
and every member is made with an ``*at`` call in the fd of its parent (``mkdirat``, ``openat``
with ``O_CREAT | O_EXCL | O_NOFOLLOW``, ``symlinkat``, ``linkat`` without ``AT_SYMLINK_FOLLOW``,
``mknodat``). So whatever the archive holds, the kernel never resolves a symlink it planted, and
``..`` never gets that far:

- ``../x``, ``a/../../x``: refused; the layer fails, naming the member.
- ``/etc/passwd``: ``etc/passwd`` inside the layer (leading ``/`` and ``./`` dropped, as Docker does).
- ``a -> /etc`` then ``a/passwd``: the symlink is kept as data; ``a/passwd`` is refused (the walk
  does not pass a symlink).
- a hard link to ``/etc/shadow`` or ``../x``: only to a file this layer already holds (found by
  the same walk); anything else is refused.
- a name met twice: the later member wins; the earlier entry is removed first, so a file is never
  written through an old symlink or hard link.
- character and block devices: not kept (a job gets a fresh ``/dev``); counted in the notes.
- FIFOs: kept (``mkfifoat``); nothing on the host ever opens them.
- setuid/setgid files: kept as data. The store is 0700 (no other host user reaches them), and a
  job's root is an unprivileged host uid in a user namespace, under ``no_new_privileges``.
- ``.wh.NAME``: overlayfs's whiteout, a 0/0 character device ``NAME`` (hides NAME of lower layers).
- ``.wh..wh..opq``: the ``trusted.overlay.opaque=y`` xattr on its directory (hides the lower
  layers' content there); other ``.wh..wh.*`` names (aufs bookkeeping) are skipped.
- xattrs (PAX ``SCHILY.xattr.*``): ``user.*`` (but ``user.overlay.*``) and ``security.capability``
  are kept; ``trusted.*`` and the rest are dropped (``trusted.overlay.*`` would steer overlayfs).
- owners: numeric, 0..65535 (what a job's user namespace maps); anything else is refused.
- huge or bomb layers: the uncompressed stream and the file data written (sparse members) are
  each capped, as are the member count and the path length.

Why sandpit's own extractor: umoci (Debian 0.4.7) unpacks a whole image into one flattened tree,
applying whiteouts as it goes, while sandpit keeps each layer in its own read-only directory,
shared by digest between images and stacked by overlayfs, which needs overlay's own whiteouts;
Python's ``tarfile`` extraction (even with the 3.12 ``data`` filter) checks a member's path and
then writes by path, so a symlink planted by an earlier member is followed between the check and
the write. ``tarfile`` is used here only to parse.

Both digests are checked while streaming: the compressed bytes against the manifest's digest and
the tar stream against the config's ``diff_id``. The caller unpacks into a fresh temporary
directory and renames it into the store only when this returns, so a layer that fails (a digest
mismatch after the last byte included) is never used.
"""

from __future__ import annotations

import errno
import hashlib
import io
import os
import stat
import tarfile

from pipelines.record import record
from worker import TYPE_CHECKING
from worker.errors import ImageError
from worker.sandbox.registry.config import LayerCaps

if TYPE_CHECKING:
    from typing import Any

ID_LIMIT = 65536  # the uids/gids a job's user namespace maps (worker.sandbox.spec.ID_RANGE)
_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_CHUNK = 1 << 20
#: tarfile's stream buffer: its default (10 KiB) made ~5x the reads through the decompressor; much
#: larger ones cost more in its slicing (measured: 64 KiB 3.4 s, 1 MiB 4.9 s for Debian's rootfs)
_TAR_BUFFER = 64 << 10
_FD_CACHE = 256
_QUEUE = 8  # pieces of _CHUNK between the decoding thread and the writer
WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"
_XATTR = "SCHILY.xattr."


class LayerError(ImageError):
    """A layer that cannot be unpacked safely, or whose bytes are not what its digest says."""


@record(frozen=True)
class UnpackedLayer:
    digest: str  # of the compressed blob, as the manifest names it
    diff_id: str  # of the tar stream
    size: int  # file data written
    members: int
    notes: tuple[str, ...] = ()


def compression_of(head: bytes) -> str:
    """The compression a blob starts with, by its magic bytes (a media type is only a claim: docker
    archives say ``tar.gzip`` of plain tars).

    >>> compression_of(b"\\x1f\\x8b\\x08\\x00"), compression_of(b"\\x28\\xb5\\x2f\\xfd"), compression_of(b"usr/")
    ('gzip', 'zstd', 'none')
    """
    if head[:2] == b"\x1f\x8b":
        return "gzip"
    if head[:4] == b"\x28\xb5\x2f\xfd":
        return "zstd"
    return "none"


def member_parts(name: str, max_bytes: int = 4096) -> tuple[str, ...]:
    """A member's path as components below the layer root; LayerError for ``..``, NUL or a name too long.

    >>> member_parts("./usr//bin/"), member_parts("/etc/passwd"), member_parts("./")
    (('usr', 'bin'), ('etc', 'passwd'), ())
    >>> member_parts("a/../../etc")
    Traceback (most recent call last):
    ...
    worker.sandbox.registry.unpack.LayerError: member 'a/../../etc' has a '..' component (refused)
    """
    if "\0" in name:
        raise LayerError(f"member {_shown(name)} has a NUL in its name (refused)")
    if len(name.encode("utf-8", "surrogateescape")) > max_bytes:
        raise LayerError(f"member {_shown(name)} has a name longer than {max_bytes} bytes (refused)")
    parts = tuple(p for p in name.split("/") if p not in ("", "."))
    if ".." in parts:
        raise LayerError(f"member {_shown(name)} has a '..' component (refused)")
    if any(len(p.encode("utf-8", "surrogateescape")) > 255 for p in parts):
        raise LayerError(f"member {_shown(name)} has a component longer than 255 bytes (refused)")
    return parts


def _shown(text: str) -> str:
    return repr(text if len(text) <= 120 else text[:117] + "...")


class _Through(Exception):
    """A walk met something that is not a directory (a symlink, a file) where a directory must be."""


class _HashingReader(io.RawIOBase):
    """The blob, read sequentially from its fd, hashed and counted on the way."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.sha = hashlib.sha256()
        self.count = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        data = os.read(self.fd, len(buffer))
        self.sha.update(data)
        self.count += len(data)
        buffer[: len(data)] = data
        return len(data)


class _Gunzip:
    """gzip (one member or several, as pigz writes) inflated in large pieces by ISA-L
    (python-isal's ``isal_zlib``, zlib's interface over Intel's igzip): 2.4x zlib's speed on a
    Debian rootfs layer here (0.21 against 0.50 s for 160 MB), which is most of a big layer's
    decoding; zlib-ng measured 0.26 s. The gzip module's reader took ~4x zlib (small reads through
    Python, a CRC in Python's loop). Gzip mode checks each member's CRC and length itself; the
    digests checked around it cover the bytes anyway."""

    def __init__(self, raw: _HashingReader) -> None:
        from isal import isal_zlib

        self._zlib = isal_zlib
        self.raw = raw
        self.inflate = isal_zlib.decompressobj(31)

    def read(self, size: int) -> bytes:
        while True:
            d = self.inflate
            if d.unconsumed_tail:
                out = d.decompress(d.unconsumed_tail, size)
            elif d.eof:
                rest = d.unused_data or self.raw.read(_CHUNK)
                if not rest:
                    return b""
                self.inflate = self._zlib.decompressobj(31)  # the next member
                out = self.inflate.decompress(rest, size)
            else:
                chunk = self.raw.read(_CHUNK)
                if not chunk:
                    raise LayerError("the layer's gzip stream is cut short")
                out = d.decompress(chunk, size)
            if out:
                return out


class _TarStream:
    """The uncompressed archive: hashed (the diff_id), counted and capped."""

    def __init__(self, inner: Any, cap: int) -> None:
        self.inner = inner
        self.sha = hashlib.sha256()
        self.count = 0
        self.cap = cap

    def read(self, size: int = -1) -> bytes:
        data: bytes = self.inner.read(_CHUNK if size is None or size < 0 else size)
        self.sha.update(data)
        self.count += len(data)
        if self.count > self.cap:
            raise LayerError(f"the layer is larger than {self.cap} bytes uncompressed (refused: size cap)")
        return data


class _Decoder:
    """The uncompressed stream, made on a thread of its own while the caller writes members.

    Reading the blob, its sha256, inflating it and the tar stream's sha256 (about a third of a
    layer's time) run here; ISA-L, zstandard and hashlib release the GIL while they work, so on two
    cores they overlap with the member writes instead of adding to them. The pieces travel
    through a short queue (``_QUEUE`` MiB at most in flight); an error on this side (a cap, bad
    gzip) is raised to the reader at the point of the stream it happened, as if read directly.
    The whole stream is read to its end (the tar's padding counts in the diff_id, and whatever
    follows the last frame in the digest), then ``close`` joins the thread.
    """

    def __init__(self, stream: _TarStream, raw: _HashingReader) -> None:
        import queue
        import threading

        self.stream = stream
        self.raw = raw
        self._queue: queue.Queue[bytes | BaseException] = queue.Queue(_QUEUE)
        self._full = queue.Full
        self._stop = threading.Event()
        self._piece = memoryview(b"")
        self._ended = False
        self._thread = threading.Thread(target=self._run, name="sandpit-inflate", daemon=True)
        self._thread.start()

    def _put(self, item: bytes | BaseException) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except self._full:
                continue
        return False

    def _run(self) -> None:
        try:
            while data := self.stream.read(_CHUNK):
                if not self._put(data):
                    return
            while self.raw.read(_CHUNK):
                pass
            self._put(b"")
        except BaseException as exc:  # handed to the reader, raised there
            self._put(exc)

    def read(self, size: int = -1) -> bytes:
        if not self._piece:
            if self._ended:
                return b""
            item = self._queue.get()
            if isinstance(item, BaseException):
                self._ended = True
                raise item
            if not item:
                self._ended = True
                return b""
            self._piece = memoryview(item)
        size = len(self._piece) if size is None or size < 0 else size
        out, self._piece = self._piece[:size], self._piece[size:]
        return out.tobytes()

    def drain(self) -> None:
        while self.read(_CHUNK):
            pass

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


class _LayerTree:
    """The layer directory being written: directory fds reached by O_NOFOLLOW walks from its root."""

    def __init__(self, root_fd: int) -> None:
        self.root = root_fd
        self._fds: dict[tuple[str, ...], int] = {}

    def dir(self, parts: tuple[str, ...], create: bool) -> int:
        if not parts:
            return self.root
        fd = self._fds.get(parts)
        if fd is not None:
            return fd
        parent = self.dir(parts[:-1], create)
        name = parts[-1]
        try:
            fd = os.open(name, _DIR, dir_fd=parent)
        except FileNotFoundError:
            if not create:
                raise
            os.mkdir(name, 0o755, dir_fd=parent)
            fd = os.open(name, _DIR, dir_fd=parent)
            os.fchmod(fd, 0o755)  # whatever the umask
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                raise _Through("/".join(parts)) from None
            raise
        self._fds[parts] = fd
        return fd

    def trim(self) -> None:
        """Called between members only (fds handed out for one member stay open while it is made)."""
        if len(self._fds) > _FD_CACHE:
            self.forget(())

    def forget(self, under: tuple[str, ...]) -> None:
        """Close the cached fds of ``under`` and below (it was removed)."""
        for key in [k for k in self._fds if k[: len(under)] == under]:
            os.close(self._fds.pop(key))

    def close(self) -> None:
        self.forget(())


def unpack_layer(blob_fd: int, dest_fd: int, *, digest: str, diff_id: str | None = None,
                 caps: LayerCaps | None = None) -> UnpackedLayer:
    """Unpack the blob at ``blob_fd`` (read from its current offset, 0) into the empty directory
    ``dest_fd``; LayerError when a member is refused, a cap is hit, or a digest does not match."""
    from typing import cast

    from isal import isal_zlib

    gzip_error = cast("type[Exception]", isal_zlib.error)  # its stubs leave the class untyped
    caps = caps or LayerCaps()
    head = os.pread(blob_fd, 4, 0)
    raw = _HashingReader(blob_fd)
    kind = compression_of(head)
    decoded: object
    if kind == "gzip":
        decoded = _Gunzip(raw)
    elif kind == "zstd":
        import zstandard  # chosen over the zstd CLI: in-process streaming, no pipe or child to manage

        decoded = zstandard.ZstdDecompressor().stream_reader(io.BufferedReader(raw, _CHUNK), read_across_frames=True)
    else:
        decoded = io.BufferedReader(raw, _CHUNK)
    stream = _TarStream(decoded, caps.max_bytes)
    tree = _LayerTree(dest_fd)
    writer = _Writer(tree, caps)
    pipe = _Decoder(stream, raw)
    try:
        try:
            with tarfile.open(fileobj=pipe, mode="r|", errorlevel=2,  # type: ignore[call-overload]
                              bufsize=_TAR_BUFFER) as archive:
                for member in archive:
                    writer.add(archive, member)
            pipe.drain()  # the end-of-archive padding, and what follows the last frame: in the digests
        except LayerError:
            raise
        except _Through as exc:
            raise LayerError(f"member {_shown(writer.current)} goes through {_shown(str(exc))}, which is not a "
                             "directory of this layer (a symlink or a file): refused") from None
        except (tarfile.TarError, EOFError, gzip_error) as exc:
            what = "" if kind == "none" else kind + " "
            raise LayerError(f"the layer is not a valid {what}tar archive: {exc}") from None
        except OSError as exc:
            raise LayerError(f"member {_shown(writer.current)}: {exc.strerror or exc}") from None
        except Exception as exc:
            if type(exc).__module__.startswith("zstandard"):
                raise LayerError(f"the layer is not valid zstd: {exc}") from None
            raise
        got = "sha256:" + raw.sha.hexdigest()
        if got != digest:
            raise LayerError(f"layer {digest} does not match its digest (its bytes hash to {got}): refused")
        got_diff = "sha256:" + stream.sha.hexdigest()
        if diff_id is not None and got_diff != diff_id:
            raise LayerError(f"layer {digest} unpacks to {got_diff}, not the diff_id {diff_id} its image config "
                             "names: refused")
        writer.finish()
    finally:
        pipe.close()
        tree.close()
    return UnpackedLayer(digest=digest, diff_id=got_diff, size=writer.written, members=writer.members,
                         notes=writer.notes())


class _Writer:
    """Makes one member at a time in the tree (see the module's table)."""

    def __init__(self, tree: _LayerTree, caps: LayerCaps) -> None:
        self.tree = tree
        self.caps = caps
        self.members = 0
        self.written = 0
        self.current = ""
        self.devices = 0
        self.dropped_xattrs: set[str] = set()
        self.aufs = 0
        self._dir_times: list[tuple[tuple[str, ...], float]] = []

    def notes(self) -> tuple[str, ...]:
        out = []
        if self.devices:
            out.append(f"{self.devices} device node(s) not kept (a job gets a fresh /dev)")
        if self.dropped_xattrs:
            out.append("xattrs not kept: " + ", ".join(sorted(self.dropped_xattrs)[:5]))
        if self.aufs:
            out.append(f"{self.aufs} aufs metadata member(s) (.wh..wh.*) skipped")
        return tuple(out)

    def add(self, archive: tarfile.TarFile, m: tarfile.TarInfo) -> None:
        self.current = m.name
        self.members += 1
        if self.members > self.caps.max_members:
            raise LayerError(f"the layer has more than {self.caps.max_members} members (refused: count cap)")
        self.tree.trim()
        parts = member_parts(m.name, self.caps.max_path_bytes)
        if not parts:
            return  # the layer root itself: it stays root's 0755
        base = parts[-1]
        if base.startswith(WHITEOUT):
            self._whiteout(parts)
            return
        if m.type not in (tarfile.LNKTYPE, tarfile.SYMTYPE, tarfile.DIRTYPE, tarfile.FIFOTYPE, tarfile.CHRTYPE,
                          tarfile.BLKTYPE) and not m.isreg():
            raise LayerError(f"member {_shown(m.name)} has tar type {m.type!r}, which sandpit does not unpack")
        if m.ischr() or m.isblk():
            self.devices += 1
            return
        for what, value in (("uid", m.uid), ("gid", m.gid)):
            if not 0 <= value < ID_LIMIT:
                raise LayerError(f"member {_shown(m.name)} has {what} {value}; a job's user namespace maps 0..65535")
        parent = self.tree.dir(parts[:-1], create=True)
        if m.isdir():
            self._directory(parts, parent, m)
        elif m.isreg():
            self._file(archive, parts, parent, m)
        elif m.issym():
            self._clear(parent, parts)
            os.symlink(m.linkname, base, dir_fd=parent)
            os.chown(base, m.uid, m.gid, dir_fd=parent, follow_symlinks=False)
            self._times(base, parent, m.mtime, follow=False)
        elif m.islnk():
            self._hard_link(parts, parent, m)
        else:  # FIFO
            self._clear(parent, parts)
            os.mkfifo(base, 0o600, dir_fd=parent)
            os.chown(base, m.uid, m.gid, dir_fd=parent, follow_symlinks=False)
            os.chmod(base, m.mode & 0o777, dir_fd=parent)  # a FIFO is not a link: chmod by name is exact

    def _whiteout(self, parts: tuple[str, ...]) -> None:
        base = parts[-1]
        parent = self.tree.dir(parts[:-1], create=True)
        if base == OPAQUE:
            os.setxattr(parent, "trusted.overlay.opaque", b"y")
            return
        if base.startswith(WHITEOUT + WHITEOUT):
            self.aufs += 1  # aufs bookkeeping (.wh..wh.plnk, .wh..wh.aufs): no meaning here
            return
        name = base[len(WHITEOUT):]
        if not name:
            raise LayerError(f"member {_shown(self.current)} is a whiteout of nothing (refused)")
        self._clear(parent, (*parts[:-1], name))
        os.mknod(name, stat.S_IFCHR | 0o600, os.makedev(0, 0), dir_fd=parent)

    def _clear(self, parent: int, parts: tuple[str, ...], keep_dir: bool = False) -> bool:
        """Remove what the layer already has at ``parts`` (a duplicate member); True when a
        directory there was kept (``keep_dir``)."""
        name = parts[-1]
        try:
            st = os.stat(name, dir_fd=parent, follow_symlinks=False)
        except FileNotFoundError:
            return False
        if stat.S_ISDIR(st.st_mode):
            if keep_dir:
                return True
            import shutil

            self.tree.forget(parts)
            shutil.rmtree(name, dir_fd=parent)  # walks by fds, never follows a symlink
        else:
            os.unlink(name, dir_fd=parent)
        return False

    def _directory(self, parts: tuple[str, ...], parent: int, m: tarfile.TarInfo) -> None:
        if not self._clear(parent, parts, keep_dir=True):
            os.mkdir(parts[-1], 0o700, dir_fd=parent)
        fd = self.tree.dir(parts, create=False)
        os.fchown(fd, m.uid, m.gid)
        os.fchmod(fd, m.mode & 0o7777)
        self._xattrs(fd, m)
        self._dir_times.append((parts, m.mtime))

    def _file(self, archive: tarfile.TarFile, parts: tuple[str, ...], parent: int, m: tarfile.TarInfo) -> None:
        try:  # the common case first: nothing there yet (one syscall fewer per file than looking first)
            fd = os.open(parts[-1], _NEW_FILE, 0o600, dir_fd=parent)
        except FileExistsError:
            self._clear(parent, parts)
            fd = os.open(parts[-1], _NEW_FILE, 0o600, dir_fd=parent)
        try:
            if m.size or m.issparse():
                source = archive.extractfile(m)
                assert source is not None
                with os.fdopen(fd, "wb", closefd=False, buffering=0) as out:
                    while chunk := source.read(_CHUNK):
                        self.written += len(chunk)
                        if self.written > self.caps.max_bytes:
                            raise LayerError(f"the layer's files hold more than {self.caps.max_bytes} bytes "
                                             "(refused: size cap)")
                        out.write(chunk)
            os.fchown(fd, m.uid, m.gid)
            os.fchmod(fd, m.mode & 0o7777)  # after chown, which clears setuid/setgid
            self._xattrs(fd, m)
            self._times(fd, None, m.mtime)
        finally:
            os.close(fd)

    def _hard_link(self, parts: tuple[str, ...], parent: int, m: tarfile.TarInfo) -> None:
        target = member_parts(m.linkname, self.caps.max_path_bytes)
        if not target:
            raise LayerError(f"member {_shown(m.name)} is a hard link to the layer root (refused)")
        if target == parts:
            return
        missing = LayerError(f"member {_shown(m.name)} is a hard link to {_shown(m.linkname)}, which this layer "
                             "does not hold (refused: a hard link only reaches files of its own layer)")
        try:
            source_dir = self.tree.dir(target[:-1], create=False)
            st = os.stat(target[-1], dir_fd=source_dir, follow_symlinks=False)
        except (FileNotFoundError, NotADirectoryError):
            raise missing from None
        if stat.S_ISDIR(st.st_mode) or stat.S_ISCHR(st.st_mode):
            raise LayerError(f"member {_shown(m.name)} is a hard link to a directory or a whiteout (refused)")
        self._clear(parent, parts)
        try:
            os.link(target[-1], parts[-1], src_dir_fd=source_dir, dst_dir_fd=parent, follow_symlinks=False)
        except FileNotFoundError:
            raise missing from None  # the clear above removed what it pointed at

    def _xattrs(self, fd: int, m: tarfile.TarInfo) -> None:
        for key, value in m.pax_headers.items():
            if not key.startswith(_XATTR):
                continue
            name = key[len(_XATTR):]
            if (name.startswith("user.") and not name.startswith("user.overlay.")) or name == "security.capability":
                os.setxattr(fd, name, value.encode("utf-8", "surrogateescape"))
            else:
                self.dropped_xattrs.add(name[:64])

    @staticmethod
    def _times(target: int | str, dir_fd: int | None, mtime: float, follow: bool = True) -> None:
        try:
            if isinstance(target, int):
                os.utime(target, (mtime, mtime))
            else:
                os.utime(target, (mtime, mtime), dir_fd=dir_fd, follow_symlinks=follow)
        except (OverflowError, ValueError, OSError):
            pass  # a time the filesystem cannot hold is not worth failing the layer for

    def finish(self) -> None:
        """Directory times last (making their entries changed them), deepest first."""
        for parts, mtime in sorted(self._dir_times, key=lambda item: len(item[0]), reverse=True):
            try:
                fd = self.tree.dir(parts, create=False)
            except (OSError, _Through):
                continue  # replaced by a later member
            self._times(fd, None, mtime)
