"""The unprivileged side of a pull or an import: the uid skopeo runs as and the directory it writes into (adapter).

skopeo talks to registries sandpit does not control (TLS, HTTP, JSON, compressed blobs) with the
operator's credentials in hand, and parses archives whoever made them, so it does not run as root.
Each pull (and each ``sandpit images import``, :mod:`.archive`, which gives the uid a copy of the
archive, :meth:`PullBox.copy_in`, and no credentials):

1. leases a uid slot from sandpit's own range (``SANDPIT_UID_BASE``, ``SANDPIT_UID_SLOTS``), with
   the host-wide lease jobs use (:func:`worker.sandbox.leases.lease_uid_slot`), and runs skopeo as
   that slot's first uid and gid: no job has those ids while the pull holds them, and no other
   local user has them ever;
2. makes ``<dir>/.pull-<random>`` (``dir`` is the state dir: 0711, so the uid can reach it), 0700
   and owned by that uid, holding skopeo's home (its signature policy, the operator's
   ``registries.conf``, a copy of the auth file made for this pull, 0600, deleted with the rest),
   its temporary files and the OCI layout it writes;
3. runs skopeo under ``setpriv``: that uid and gid, no supplementary groups, no capabilities (the
   bounding and inheritable sets emptied), ``no_new_privs``, and SIGKILL when the thread that
   started it dies (a SIGKILLed sandpit leaves no skopeo behind on uids a job may get next);
4. sandpit (root) reads what skopeo wrote only by fd: the directory it made before skopeo started,
   then ``openat2`` beneath it with no symlink, a regular file of the announced size; the bytes are
   checked against their digests while they are unpacked, so a skopeo that misbehaved only fails
   its own pull.

``close()`` removes the directory (``rmtree`` by fds, no symlink followed) and releases the lease.

Why ``setpriv`` (util-linux, in every Debian) rather than ``subprocess``' ``user=``/``group=``: it
also empties the bounding set and sets ``no_new_privs`` and the parent-death signal after the
credentials changed (the kernel clears a parent-death signal set before), which Python cannot do
between ``fork`` and ``exec`` without a ``preexec_fn`` (unsafe with the pull's threads).

>>> setpriv_argv(100000000)[:4]
['setpriv', '--reuid=100000000', '--regid=100000000', '--clear-groups']
>>> unreachable_ancestor(Path("/"), 100000000) is None
True
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
from pathlib import Path

from pipelines.files.locks import FileLock
from worker.sandbox.registry.skopeo import POLICY, PullError

_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC | os.O_NOFOLLOW
_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def setpriv_argv(uid: int) -> list[str]:
    """The prefix that runs a command as ``uid``:``uid`` with nothing of root's left."""
    return ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--inh-caps=-all",
            "--bounding-set=-all", "--no-new-privs", "--pdeathsig=KILL", "--"]


def unreachable_ancestor(path: Path, uid: int) -> Path | None:
    """The first directory from ``/`` down to ``path`` that ``uid`` (in no group) cannot search, or
    None: skopeo resolves every path it is given from the root (``filepath.EvalSymlinks``)."""
    current = Path("/")
    for part in (path.parts[1:] if path.is_absolute() else ()):
        st = os.stat(current)
        if not (st.st_mode & stat.S_IXOTH or (st.st_uid == uid and st.st_mode & stat.S_IXUSR)):
            return current
        current = current / part
    st = os.stat(current)
    if not (st.st_mode & stat.S_IXOTH or (st.st_uid == uid and st.st_mode & stat.S_IXUSR)):
        return current
    return None


class PullBox:
    """One pull's uid and directory (see the module docstring); a context manager."""

    def __init__(self, parent: Path, *, uid_base: int, uid_slots: int, run_dir: Path | None,
                 registries_conf: bytes | None, auth_file: Path | None) -> None:
        from worker.sandbox.leases import lease_uid_slot
        from worker.sandbox.spec import ID_RANGE

        self._lease: FileLock | None = None
        self._fd: int | None = None
        self.path: Path | None = None
        slot, self._lease = lease_uid_slot(uid_base, uid_slots, ID_RANGE,
                                           legacy_dir=run_dir / "locks" if run_dir is not None else None)
        self.uid = uid_base + slot * ID_RANGE
        try:
            parent.mkdir(parents=True, exist_ok=True, mode=0o711)
            blocked = unreachable_ancestor(parent, self.uid)
            if blocked is not None:
                raise PullError(f"skopeo runs as uid {self.uid} and cannot reach {parent}: {blocked} is not "
                                "searchable by other users (the state dir and its parents must be, as "
                                "/var/lib is)")
            name = f".pull-{os.urandom(8).hex()}"
            parent_fd = os.open(parent, _DIR)
            try:
                os.mkdir(name, 0o700, dir_fd=parent_fd)
                self.path = parent / name
                self._fd = os.open(name, _DIR, dir_fd=parent_fd)
            finally:
                os.close(parent_fd)
            self._populate(registries_conf, auth_file)
        except BaseException:
            self.close()
            raise

    def _populate(self, registries_conf: bytes | None, auth_file: Path | None) -> None:
        """Skopeo's home, made by root inside the still root-owned directory, then given to the uid."""
        assert self._fd is not None
        for folder in ("home", "home/.config", "home/.config/containers", "tmp", "blobs", "blobs/sha256"):
            os.mkdir(folder, 0o700, dir_fd=self._fd)
        self._write("home/policy.json", POLICY)
        if registries_conf is not None:
            self._write("home/.config/containers/registries.conf", registries_conf)
        if auth_file is not None:
            try:
                data = auth_file.read_bytes()
            except OSError as exc:
                raise PullError(f"cannot read the registry credentials {auth_file}: {exc.strerror}") from None
            self._write("home/auth.json", data)
        for folder in ("home", "home/.config", "home/.config/containers", "tmp", "blobs", "blobs/sha256"):
            os.chown(folder, self.uid, self.uid, dir_fd=self._fd, follow_symlinks=False)
        os.fchown(self._fd, self.uid, self.uid)

    def _write(self, name: str, data: bytes) -> None:
        assert self._fd is not None
        fd = os.open(name, _FILE, 0o600, dir_fd=self._fd)
        try:
            os.write(fd, data)
            os.fchown(fd, self.uid, self.uid)
        finally:
            os.close(fd)

    @property
    def home(self) -> Path:
        assert self.path is not None
        return self.path / "home"

    @property
    def auth_path(self) -> Path | None:
        """The pull's copy of the credentials, when the operator gave any."""
        assert self._fd is not None
        try:
            os.stat("home/auth.json", dir_fd=self._fd, follow_symlinks=False)
        except FileNotFoundError:
            return None
        return self.home / "auth.json"

    def open_dir(self, name: str) -> int:
        """A directory of the box, opened beneath its fd with no symlink on the way."""
        from worker.sandbox.beneath import open_beneath

        assert self._fd is not None
        return open_beneath(self._fd, name, os.O_RDONLY | os.O_DIRECTORY)

    def open_file(self, name: str) -> int:
        """An fd of the regular file ``name`` (relative to the box) that skopeo wrote, opened beneath
        the box's fd with no symlink on the way; anything else is refused (PullError) and never read:
        the box is the uid's, so what lies in it proves nothing."""
        from worker.sandbox.beneath import NotBeneath, open_beneath

        assert self._fd is not None
        try:
            fd = open_beneath(self._fd, name, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
        except NotBeneath:
            raise PullError(f"skopeo left a symlink at {name} in its directory (refused, not followed)") from None
        except FileNotFoundError:
            raise PullError(f"skopeo finished without writing {name}") from None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise PullError(f"skopeo left something other than a regular file at {name} (refused)")
        return fd

    def copy_in(self, name: str, source_fd: int) -> Path:
        """A copy of the open file ``source_fd`` as ``name`` in the box, 0400 and the uid's: how skopeo
        gets a file of the operator's without being able to open it, or anything beside it, itself.

        Why a copy and not the file itself (measured with skopeo 1.9 here): ``/proc/self/fd/N`` is
        opened again by skopeo, and that open is checked against the file's owner and mode (a 0600
        archive of root's is refused to the uid); ``oci-archive:`` resolves it to the file's path
        and opens that path (which the importing user may change meanwhile); ``docker-archive:``
        opens its path again for every member, so a pipe cannot stand in; a hard link or a bind
        mount keeps the owner and mode too. ``copy_file_range`` makes the copy in the kernel (a
        reflink where the filesystem has them), ``sendfile`` where it cannot cross filesystems."""
        assert self._fd is not None and self.path is not None
        fd = os.open(name, _FILE, 0o400, dir_fd=self._fd)
        try:
            size, offset = os.fstat(source_fd).st_size, 0
            while offset < size:
                try:
                    n = os.copy_file_range(source_fd, fd, size - offset, offset, offset)
                except OSError as exc:
                    if exc.errno not in (errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
                        raise
                    os.lseek(fd, offset, os.SEEK_SET)
                    n = os.sendfile(fd, source_fd, offset, size - offset)
                if n == 0:
                    break  # the file shrank meanwhile: skopeo reads what there was
                offset += n
            os.fchown(fd, self.uid, self.uid)
        finally:
            os.close(fd)
        return self.path / name

    def argv(self) -> list[str]:
        return setpriv_argv(self.uid)

    def __enter__(self) -> PullBox:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Remove the directory and release the uid (idempotent)."""
        try:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
            if self.path is not None:
                path, self.path = self.path, None
                # rmtree by fds (shutil's symlink-attack-resistant walk): the tree is the uid's
                with contextlib.suppress(FileNotFoundError):
                    shutil.rmtree(path)
        finally:
            if self._lease is not None:
                lease, self._lease = self._lease, None
                lease.release()
