"""A job's root filesystem: the image's layers, idmapped to the job's uids, under an overlay.

    <job>/lower0   idmapped, read-only view of the image layer (host root → job root)
    <job>/rootfs   overlay: lowerdir=lower0, upper and work dirs on the job's btrfs disk

All mounts are made with syscalls (no ``mount`` exec). ``close()`` detaches them all and is
idempotent; the reaper finds any left behind through /proc/self/mountinfo.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from worker.errors import SandboxError
from worker.sandbox.mounts import MS_NODEV, idmapped_clone, mount, mounts_under, umount
from worker.sandbox.userns import userns_fd


class JobRootfs:
    def __init__(self, job_dir: Path, layers: list[Path], disk_dir: Path, uid_base: int, id_range: int,
                 owner_uid: int | None = None) -> None:
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
            lowers = []
            if uid_base == 0:  # no user namespace (runsc): the layers are used as they are
                lowers = [str(layer) for layer in layers]
            else:
                fd = userns_fd(uid_base, id_range)
                for i, layer in enumerate(layers):
                    target = job_dir / f"lower{i}"
                    target.mkdir()
                    idmapped_clone(str(layer), str(target), fd)
                    lowers.append(str(target))
            # overlay lists the top layer first
            options = f"lowerdir={':'.join(reversed(lowers))},upperdir={upper},workdir={work}"
            mount("overlay", str(self.path), "overlay", MS_NODEV, options)
        except OSError as exc:
            self.close()
            raise SandboxError(f"cannot mount the job's root filesystem: {exc}") from exc

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        unmount_all(self.job_dir)


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
