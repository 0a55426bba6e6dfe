"""A job's root filesystem: the image's layers, idmapped to the job's uids, under an overlay.

    <run>/layers/<key>-<uid_base>   idmapped, read-only view of an image layer (host root → job
                                    root), made once per layer and uid slot and then reused
    <job>/rootfs                    overlay: lowerdir=those views, upper and work dirs on the
                                    job's btrfs disk

All mounts are made with syscalls (no ``mount`` exec). ``close()`` detaches them all and is
idempotent; the reaper finds any left behind through /proc/self/mountinfo.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

from worker.errors import SandboxError
from worker.sandbox.mounts import MS_NODEV, idmapped_clone, mount, mounts_under, umount
from worker.sandbox.userns import userns_fd


class JobRootfs:
    def __init__(self, job_dir: Path, layers: list[tuple[str, Path]], disk_dir: Path, uid_base: int,
                 id_range: int, run_dir: Path, owner_uid: int | None = None) -> None:
        self.job_dir = job_dir
        self.path = job_dir / "rootfs"
        self._closed = False
        upper, work = disk_dir / "upper", disk_dir / "work"
        self.workspace = disk_dir / "workspace"
        try:
            for d in (upper, work, self.workspace, self.path):
                d.mkdir()
            # job root owns the upper dir; the workspace belongs to the job's user
            os.chown(upper, uid_base, uid_base)
            ws_owner = uid_base + (owner_uid or 0)
            os.chown(self.workspace, ws_owner, ws_owner)
            if uid_base == 0:  # no user namespace (runsc): the layers are used as they are
                lowers = [str(layer) for _key, layer in layers]
            else:
                lowers = [str(layer_view(run_dir, key, layer, uid_base, id_range)) for key, layer in layers]
            # overlay lists the top layer first
            # volatile: no sync of the upper dir on unmount (a btrfs commit); it is thrown away anyway
            options = f"lowerdir={':'.join(reversed(lowers))},upperdir={upper},workdir={work},volatile"
            mount("overlay", str(self.path), "overlay", MS_NODEV, options)
        except OSError as exc:
            self.close()
            raise SandboxError(f"cannot mount the job's root filesystem: {exc}") from exc

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            # the one mount this object made; no mountinfo scan on the hot path
            umount(str(self.path))
        except OSError:
            unmount_all(self.job_dir)  # not mounted, or something else is: find everything


def layer_view(run_dir: Path, key: str, layer: Path, uid_base: int, id_range: int) -> Path:
    """The idmapped read-only view of ``layer`` for one uid slot, made on first use."""
    view = run_dir / "layers" / f"{key}-{uid_base}"
    if _is_view(view, uid_base):
        return view
    view.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    with open(view.parent / ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
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
