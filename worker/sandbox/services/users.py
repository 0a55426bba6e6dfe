"""A service image's ``User`` (``name``, ``uid``, ``name:group``, ``uid:gid``) as the (uid, gid)
its process runs as, read from the image's own /etc/passwd and /etc/group as ``docker run`` does.

The files are the image's, so untrusted: they are opened through the service's mounted rootfs with
``openat2(RESOLVE_IN_ROOT)`` (a symlink in the image resolves inside it, never to the host's
files), read up to 1 MiB, and parsed as text; nothing from them becomes a path.

>>> users, groups = EXAMPLE_USERS, EXAMPLE_GROUPS
>>> parse_user("postgres", users, groups), parse_user("1000", users, groups), parse_user("", users, groups)
((999, 999), (1000, 0), (0, 0))
>>> parse_user("postgres:staff", users, groups), parse_user("12:34", "", "")
((999, 50), (12, 34))
"""

from __future__ import annotations

import os

from worker.errors import InvalidRequest

EXAMPLE_USERS = "root:x:0:0:root:/root:/bin/sh\npostgres:x:999:999::/var/lib/postgresql:/bin/sh\n"
EXAMPLE_GROUPS = "root:x:0:\nstaff:x:50:\n"
_MAX_ID = 65535  # inside the job's user namespace (its mapping is 65536 ids)
_LIMIT = 1 << 20


def parse_user(user: str, passwd: str, group: str) -> tuple[int, int]:
    """(uid, gid) of ``user`` given the image's passwd and group text; InvalidRequest when a name is
    in neither or an id is outside the job's user namespace."""
    name, _, group_name = user.partition(":")
    if not name:
        if group_name:
            raise InvalidRequest(f"the image's User {user[:80]!r} names a group but no user")
        return 0, 0
    entry = _lookup(passwd, name, fields_needed=4)
    if entry is not None:
        uid, gid = int(entry[2]), int(entry[3])
    elif name.isdigit():
        uid, gid = int(name), 0
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
    return uid, gid


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


def image_user(rootfs: str, user: str) -> tuple[int, int]:
    """(uid, gid) of the image's ``user`` for the service whose rootfs is mounted at ``rootfs``."""
    if not user:
        return 0, 0
    if all(part.isdigit() for part in user.split(":", 1)) and ":" in user:
        return parse_user(user, "", "")
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
        import stat

        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return ""
        return os.read(fd, _LIMIT).decode("utf-8", "replace")
    finally:
        os.close(fd)
