"""The job's ``/etc/hosts`` when it has services: its services' names on 127.0.0.1.

Every service shares the job's network namespace, so each of its names means the job's own
loopback, as ``localhost`` does. The file lives on a tmpfs of its own at ``<job dir>/hosts`` and is
bound read-only at /etc/hosts in the job and in every service: a bind of a file of the host's file
system would show the job its host path in /proc/self/mountinfo (see ``Engine._egress_ready``).
Names reach the file only after ``pipelines.language.services.is_alias`` (no whitespace, ``#`` or
control character), so no name can add or hide a line.

>>> print(hosts_text(("db", "postgres")), end="")
127.0.0.1 localhost
::1 localhost ip6-localhost ip6-loopback
127.0.0.1 sandpit db postgres
"""

from __future__ import annotations

import os

from worker.errors import SandboxError

_MS_NOSUID, _MS_NODEV, _MS_NOEXEC = 0x2, 0x4, 0x8


def hosts_text(names: tuple[str, ...], hostname: str = "sandpit") -> str:
    from pipelines.language.services import is_alias

    unique = list(dict.fromkeys((hostname, *names)))
    bad = [n for n in unique if not is_alias(n)]
    if bad:
        raise ValueError(f"{bad[0][:80]!r} cannot be a host name")
    return ("127.0.0.1 localhost\n::1 localhost ip6-localhost ip6-loopback\n"
            f"127.0.0.1 {' '.join(unique)}\n")


class HostsFile:
    """``<job dir>/hosts/hosts`` on a 16 KiB tmpfs; ``close()`` unmounts it (idempotent)."""

    def __init__(self, job_dir: str, names: tuple[str, ...]) -> None:
        from worker.sandbox.mounts import mount

        self.folder = os.path.join(job_dir, "hosts")
        self.path = os.path.join(self.folder, "hosts")
        self._mounted = False
        text = hosts_text(names).encode()
        os.mkdir(self.folder, 0o755)
        try:
            mount("tmpfs", self.folder, "tmpfs", _MS_NOSUID | _MS_NODEV | _MS_NOEXEC, "size=16k,nr_inodes=8,mode=0755")
            self._mounted = True
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
            try:
                os.fchmod(fd, 0o644)  # whatever the umask: every container's users read it
                os.write(fd, text)
            finally:
                os.close(fd)
        except OSError as exc:
            self.close()
            raise SandboxError(f"cannot give the job its /etc/hosts: {exc}") from exc

    def close(self) -> None:
        from worker.sandbox.mounts import umount

        if self._mounted:
            self._mounted = False
            umount(self.folder)
        try:
            os.rmdir(self.folder)
        except FileNotFoundError:
            pass
