"""A job's root filesystem: the image's layers, idmapped to the job's uids, under an overlay.

    <run>/layers/<key>-<uid_base>   idmapped, read-only view of an image layer (host root → job
                                    root), made once per layer and uid slot and then reused
    <job>/rootfs                    overlay: lowerdir=those views, upper and work dirs on the
                                    job's btrfs disk
    <job>/workspace                 overlay: an empty lower dir under the disk's ``workspace`` dir,
                                    bind-mounted at /workspace (see :class:`JobRootfs`)

All mounts are made with syscalls (no ``mount`` exec). ``close()`` detaches them all and is
idempotent; the reaper finds any left behind through /proc/self/mountinfo.

overlay's options are one comma-separated string and ``lowerdir=`` a colon-separated list (with
``\\`` as its escape), so a path holding ``:``, ``,``, ``\\`` or a control character would change
what is mounted: :func:`overlay_path` refuses those, and a layer key must be 64 hex digits before it
names anything under ``<run>/layers``.
"""

from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path

from pipelines.files.locks import hold
from pipelines.identifiers import is_layer_key
from worker.errors import SandboxError
from worker.sandbox.mounts import MS_NODEV, MS_NOSUID, idmapped_clone, mount, mounts_under, umount
from worker.sandbox.userns import userns_fd


class JobRootfs:
    """The job's root overlay, and its workspace.

    The workspace (``<disk>/workspace``, on the job's btrfs subvolume, so under its disk quota)
    reaches the job through an overlay of its own (upper: that directory, lower: an empty one)
    rather than a plain bind of the btrfs directory: a bind shows the job, in its
    ``/proc/self/mountinfo``, the path inside the btrfs filesystem and ``subvol=``, both naming
    the job id; an overlay's line shows only ``/`` and fd paths (:func:`mount_overlay`). Every
    file the job sees there lives in the upper dir (the lower is empty), so the host's view is the
    same one; sandpit itself reads and writes it through ``self.workspace`` (the overlay), never
    underneath a mounted overlay.
    """

    def __init__(self, job_dir: Path, layers: list[tuple[str, Path]], disk_dir: Path, uid_base: int,
                 id_range: int, run_dir: Path, owner_uid: int | None = None) -> None:
        self.job_dir = job_dir
        self.path = job_dir / "rootfs"
        self._closed = False
        upper, work = disk_dir / "upper", disk_dir / "work"
        ws_upper, ws_work, ws_lower = disk_dir / "workspace", disk_dir / "ws-work", disk_dir / "ws-lower"
        self.workspace = job_dir / "workspace"
        self._mounts: list[Path] = []
        try:
            for d in (upper, work, ws_upper, ws_work, ws_lower, self.workspace, self.path):
                d.mkdir()
            # job root owns the upper dir; the workspace belongs to the job's user
            os.chown(upper, uid_base, uid_base)
            ws_owner = uid_base + (owner_uid or 0)
            os.chown(ws_upper, ws_owner, ws_owner)
            mount_overlay(self.workspace, [str(ws_lower)], ws_upper, ws_work, MS_NODEV | MS_NOSUID)
            self._mounts.append(self.workspace)
            if uid_base == 0:  # no user namespace (runsc): the layers are used as they are
                lowers = [str(layer) for _key, layer in layers]
            else:
                lowers = [str(layer_view(run_dir, key, layer, uid_base, id_range)) for key, layer in layers]
            mount_overlay(self.path, lowers, upper, work)
            self._mounts.append(self.path)
        except SandboxError:
            self.close()
            raise
        except OSError as exc:
            self.close()
            raise SandboxError(f"cannot mount the job's root filesystem: {exc}") from exc

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            # the mounts this object made; no mountinfo scan on the hot path
            for point in reversed(self._mounts):
                umount(str(point))
        except OSError:
            unmount_all(self.job_dir)  # not mounted, or something else is: find everything


_OPTION_UNSAFE = re.compile(r"[:,\\\x00-\x1f\x7f]")


def overlay_path(path: str) -> str:
    """``path`` as it may appear in an overlay option, or SandboxError: absolute, and without the
    characters overlay's option syntax gives a meaning (``:`` ``,`` ``\\``) or control characters.

    >>> overlay_path("/run/sandpit/layers/ab-100000")
    '/run/sandpit/layers/ab-100000'
    >>> overlay_path("/x/a:/")
    Traceback (most recent call last):
    ...
    worker.errors.SandboxError: cannot use '/x/a:/' in an overlay mount: a path with ':', ... mount options
    """
    if not path.startswith("/") or _OPTION_UNSAFE.search(path):
        raise SandboxError(f"cannot use {path!r} in an overlay mount: a path with ':', ',', '\\' or a "
                           "control character would change the mount options")
    return path


def overlay_options(lowers: list[str], upper: str, work: str) -> str:
    """The overlay option string; ``lowers`` bottom layer first (overlay lists the top one first).
    volatile: no sync of the upper dir on unmount (a btrfs commit); it is thrown away anyway.

    >>> overlay_options(["/l/a", "/l/b"], "/d/upper", "/d/work")
    'lowerdir=/l/b:/l/a,upperdir=/d/upper,workdir=/d/work,volatile'
    """
    lower = ":".join(overlay_path(p) for p in reversed(lowers))
    return f"lowerdir={lower},upperdir={overlay_path(upper)},workdir={overlay_path(work)},volatile"


def mount_overlay(target: Path, lowers: list[str], upper: Path, work: Path, flags: int = MS_NODEV) -> None:
    """Mount the job's overlay at ``target``, naming each layer to the kernel as ``/proc/self/fd/N``
    of an O_PATH fd rather than by its host path.

    Overlay shows the option strings it was given in mountinfo, which the job reads as
    ``/proc/self/mountinfo``: host paths there told it the state dir, the run dir and its job id.
    Measured on kernel 6.18: layers given by fd through ``fsconfig(FSCONFIG_SET_FD, "lowerdir+")``
    are shown as their full host paths (d_path); relative paths are shown as given but need a
    ``chdir``, which is process-wide while ``Engine.run`` runs on several threads; an fd path is
    resolved once at mount time, so the kernel keeps the layers it found and the mountinfo line
    says only ``lowerdir=/proc/self/fd/7:...``. O_NOFOLLOW: a symlink is never a layer.
    """
    fds: list[int] = []

    def by_fd(path: str | Path) -> str:
        fds.append(os.open(path, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC))
        return f"/proc/self/fd/{fds[-1]}"

    try:
        options = overlay_options([by_fd(p) for p in lowers], by_fd(upper), by_fd(work))
        mount("overlay", str(target), "overlay", flags, options)
    finally:
        for fd in fds:
            os.close(fd)


def layer_view(run_dir: Path, key: str, layer: Path, uid_base: int, id_range: int) -> Path:
    """The idmapped read-only view of ``layer`` for one uid slot, made on first use."""
    if not is_layer_key(key) or isinstance(uid_base, bool) or not isinstance(uid_base, int) or uid_base < 0:
        raise SandboxError(f"refusing layer key {key[:80]!r} / uid base {uid_base!r}: a key is 64 hex digits")
    view = run_dir / "layers" / f"{key}-{uid_base}"
    if _is_view(view, uid_base):
        return view
    view.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    with hold(view.parent / ".lock"):
        if not _is_view(view, uid_base):
            view.mkdir(exist_ok=True)
            idmapped_clone(str(layer), str(view), userns_fd(run_dir, uid_base, id_range))
    return view


def _is_view(view: Path, uid_base: int) -> bool:
    # the placeholder directory belongs to host root; the idmapped layer root shows as uid_base
    # (os.path.ismount cannot tell: the view is on the same device as its parent)
    try:
        return os.stat(view).st_uid == uid_base
    except FileNotFoundError:
        return False


def drop_layer_views(run_dir: Path, key: str | None = None) -> list[str]:
    """Unmount cached layer views (of one image key, or all); they are remade on demand."""
    root = run_dir / "layers"
    dropped = []
    for point in mounts_under(str(root)):
        if key is None or Path(point).name.startswith(key + "-"):
            with contextlib.suppress(OSError):
                umount(point)
                Path(point).rmdir()
                dropped.append(point)
    return dropped


def unmount_all(job_dir: Path) -> list[str]:
    """Detach every mount at or under ``job_dir`` (deepest first)."""
    done = []
    for point in mounts_under(str(job_dir)):
        with contextlib.suppress(OSError):
            umount(point)
            done.append(point)
    left = mounts_under(str(job_dir))
    if left:
        raise SandboxError(f"mounts still present after teardown: {left}")
    return done
