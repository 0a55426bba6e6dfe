"""How a container of an image starts, for a job and for a service alike: what it runs (the image's
Entrypoint and Cmd, or what replaces them) and as whom (the image's ``User``, looked up in the
image's own /etc/passwd and /etc/group as ``docker run`` does). Pure, but for :func:`image_user`,
which reads those two files from the container's mounted rootfs.

The job runs as GitLab Runner's Docker executor runs it: its script through the image's
Entrypoint (``image:entrypoint`` replaces it, ``[""]`` removes it), as the image's User, with the
image's Env under the job's variables, in the build directory ``/workspace`` whatever the image's
WorkingDir says (Runner sets the container's working directory to the build directory).

The User's files are the image's, so untrusted: they are opened through the mounted rootfs with
``openat2(RESOLVE_IN_ROOT)`` (a symlink in the image resolves inside it, never to the host's
files; without openat2, any symlink on the way is refused), read up to 1 MiB and parsed as text;
nothing from them becomes a path. The ids are inside the job's user namespace (0-65535, a range
no other job and no host user has), so a User of 0 or a setuid file of the image is harmless.

>>> users, groups = EXAMPLE_USERS, EXAMPLE_GROUPS
>>> parse_user("postgres", users, groups), parse_user("1000", users, groups)
(ImageUser(uid=999, gid=999, home='/var/lib/postgresql', groups=(50,)), ImageUser(uid=1000, gid=0, home='/', groups=()))
>>> parse_user("postgres:staff", users, groups).gid, parse_user("12:34", "", "")
(50, ImageUser(uid=12, gid=34, home='/', groups=()))
>>> job_argv(("sh", "-c", "make"), None, ("/entry.sh",)), job_argv(("sh", "-c", "make"), ("",), ("/entry.sh",))
(('/entry.sh', 'sh', '-c', 'make'), ('sh', '-c', 'make'))
"""

from __future__ import annotations

import os
import stat

from pipelines.record import record
from worker import TYPE_CHECKING
from worker.errors import InvalidRequest

if TYPE_CHECKING:
    from worker.sandbox.registry.manifests import ImageConfig
    from worker.sandbox.request import SandboxRequest

EXAMPLE_USERS = "root:x:0:0:root:/root:/bin/sh\npostgres:x:999:999::/var/lib/postgresql:/bin/sh\n"
EXAMPLE_GROUPS = "root:x:0:\nstaff:x:50:postgres\n"
_MAX_ID = 65535  # inside the job's user namespace (its mapping is 65536 ids)
_LIMIT = 1 << 20
_MAX_GROUPS = 32


@record(frozen=True)
class ImageUser:
    """The ids a container's process gets from its image's User, its home directory (``$HOME``
    unless the image's Env or the job sets one; Docker's ``/`` when the passwd file names none)
    and its supplementary groups (those of /etc/group that list the user by name)."""

    uid: int
    gid: int
    home: str = "/"
    groups: tuple[int, ...] = ()


ROOT = ImageUser(0, 0, "/root")


def chosen_entrypoint(override: tuple[str, ...] | None, image: tuple[str, ...]) -> tuple[str, ...] | None:
    """The Entrypoint, as GitLab Runner passes ``entrypoint:`` to Docker: None or an empty list
    keeps the image's (returned as None: not replaced), ``[""]`` is none, anything else replaces it.

    >>> chosen_entrypoint(None, ("init",)), chosen_entrypoint((), ("init",)), chosen_entrypoint(("",), ("init",))
    (None, None, ())
    """
    del image
    if not override:
        return None
    return () if override == ("",) else override


def job_argv(argv: tuple[str, ...], override: tuple[str, ...] | None, entrypoint: tuple[str, ...]) -> tuple[str, ...]:
    """What a job's container runs: its command (the shell and its script) given to the image's
    Entrypoint as arguments, as Runner hands the shell to it; ``override`` is ``image:entrypoint``."""
    chosen = chosen_entrypoint(override, entrypoint)
    return (entrypoint if chosen is None else chosen) + argv


def service_argv(override: tuple[str, ...] | None, command: tuple[str, ...] | None, entrypoint: tuple[str, ...],
                 cmd: tuple[str, ...]) -> tuple[str, ...]:
    """What a service's container runs, as ``docker run`` decides it: an ``entrypoint`` replaces the
    image's Entrypoint and drops its Cmd; ``command`` replaces the Cmd.

    >>> service_argv(None, None, ("docker-entrypoint.sh",), ("postgres",))
    ('docker-entrypoint.sh', 'postgres')
    >>> service_argv(("sh",), ("-c", "sleep 1"), ("init",), ("serve",)), service_argv(("",), None, ("i",), ("s",))
    (('sh', '-c', 'sleep 1'), ())
    """
    chosen = chosen_entrypoint(override, entrypoint)
    if chosen is not None:
        return chosen + (command or ())
    return entrypoint + (command if command is not None else cmd)


def parse_user(user: str, passwd: str, group: str) -> ImageUser:
    """The :class:`ImageUser` of ``user`` (``name``, ``uid``, ``name:group``, ``uid:gid``) given the
    image's passwd and group text; InvalidRequest when a name is in neither or an id is outside
    the job's user namespace. Defaults as runc's: uid and gid 0, home ``/``."""
    name, _, group_name = user.partition(":")
    if not name:
        if group_name:
            raise InvalidRequest(f"the image's User {user[:80]!r} names a group but no user")
        return ROOT
    entry = _lookup(passwd, name, fields_needed=4)
    if entry is not None:
        uid, gid = int(entry[2]), int(entry[3])
        home = entry[5] if len(entry) > 5 and entry[5].startswith("/") else "/"
        groups = _member_of(group, entry[0])
    elif name.isdigit():
        uid, gid, home, groups = int(name), 0, "/", ()
    else:
        raise InvalidRequest(f"the image's User {name[:80]!r} is not in its /etc/passwd")
    if group_name:
        found = _lookup(group, group_name, fields_needed=3)
        if found is not None:
            gid = int(found[2])
        elif group_name.isdigit():
            gid = int(group_name)
        else:
            raise InvalidRequest(f"the image's group {group_name[:80]!r} is not in its /etc/group")
    if not (0 <= uid <= _MAX_ID and 0 <= gid <= _MAX_ID):
        raise InvalidRequest(f"the image's User {user[:80]!r} is outside the ids a job has (0-{_MAX_ID})")
    return ImageUser(uid, gid, home, tuple(g for g in groups if g != gid))


def _lookup(text: str, key: str, fields_needed: int) -> list[str] | None:
    """The line of a passwd (4 numeric-led fields: name, password, uid, gid) or group file (3: name,
    password, gid) whose name, or for a number whose id, is ``key``; a damaged line never matches."""
    for line in text.splitlines():
        fields = line.split(":")
        if len(fields) < fields_needed or not all(f.isdigit() for f in fields[2:fields_needed]):
            continue
        if fields[0] == key or (key.isdigit() and fields[2] == key):
            return fields
    return None


def _member_of(group: str, name: str) -> tuple[int, ...]:
    """The gids of the groups whose member list names ``name`` (ids a job has, at most 32)."""
    found: list[int] = []
    for line in group.splitlines():
        fields = line.split(":")
        if len(fields) < 4 or not fields[2].isdigit() or int(fields[2]) > _MAX_ID:
            continue
        if name in fields[3].split(",") and int(fields[2]) not in found:
            found.append(int(fields[2]))
    return tuple(found[:_MAX_GROUPS])


@record(frozen=True)
class JobProcess:
    """What a job's container runs and as whom (None: the profile's own user, as without an image User)."""

    argv: tuple[str, ...]
    user: ImageUser | None = None


def job_process(req: SandboxRequest, config: ImageConfig | None, rootfs: str) -> JobProcess:
    """The job's command through its image's Entrypoint, and its image's User: none (or root) under
    the ``default`` profile is root as ever; under ``strict`` root gives way to the profile's
    unprivileged uid, any other User stays (with no capabilities either way)."""
    if config is None:  # a recipe image: no Entrypoint, no User
        return JobProcess(req.argv)
    argv = job_argv(req.argv, req.entrypoint, config.entrypoint)
    if not config.user:
        return JobProcess(argv)
    user = image_user(rootfs, config.user)
    if user.uid == 0 and req.profile == "strict":
        return JobProcess(argv)
    return JobProcess(argv, user)


def image_user(rootfs: str, user: str) -> ImageUser:
    """The :class:`ImageUser` of the image's ``user`` for the container whose rootfs is mounted at
    ``rootfs`` (nothing is read for an empty User)."""
    if not user:
        return ROOT
    root = os.open(rootfs, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        return parse_user(user, _read(root, "etc/passwd"), _read(root, "etc/group"))
    finally:
        os.close(root)


def _read(root: int, path: str) -> str:
    from worker.sandbox.beneath import NotBeneath, open_beneath, open_in_root

    try:
        fd = open_in_root(root, path, os.O_RDONLY | os.O_NOCTTY | os.O_NONBLOCK)
        if fd is None:  # no openat2: refuse any symlink on the way instead
            fd = open_beneath(root, path, os.O_RDONLY | os.O_NOCTTY | os.O_NONBLOCK)
    except (FileNotFoundError, NotADirectoryError, NotBeneath):
        return ""
    except OSError as exc:
        raise InvalidRequest(f"the image's /{path} cannot be read: {exc.strerror}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return ""
        return os.read(fd, _LIMIT).decode("utf-8", "replace")
    finally:
        os.close(fd)
