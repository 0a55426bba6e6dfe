"""Local users' passwords: scrypt hashes (stdlib ``hashlib.scrypt``), and ``python -m api.ui.passwords``.

scrypt is memory-hard and in the standard library, so no dependency is needed for it. The
parameters (n=2**14, r=8, p=1: 16 MiB and about 50 ms per check here) are stored in the hash, so
they can be raised later without breaking older hashes.

>>> stored = hash_password("correct horse", salt=b"0123456789abcdef")
>>> verify_password("correct horse", stored), verify_password("wrong", stored)
(True, False)
"""

from __future__ import annotations

import base64
import getpass
import hashlib
import hmac
import os
import sys

N, R, P = 2**14, 8, 1
_MAXMEM = 64 * 1024 * 1024


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def hash_password(password: str, *, salt: bytes | None = None) -> str:
    """``scrypt$n$r$p$salt$hash`` (no ``:`` or ``,``, so it fits in SANDPIT_UI_USERS)."""
    salt = salt if salt is not None else os.urandom(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=N, r=R, p=P, maxmem=_MAXMEM, dklen=32)
    return f"scrypt${N}${R}${P}${_b64(salt)}${_b64(digest)}"


def verify_password(password: str, stored: str) -> bool:
    """Whether ``password`` is the one ``stored`` was made from (constant-time compare); a hash
    this module cannot read is never a match."""
    try:
        kind, n, r, p, salt, digest = stored.split("$")
        if kind != "scrypt":
            return False
        expected = _unb64(digest)
        got = hashlib.scrypt(password.encode(), salt=_unb64(salt), n=int(n), r=int(r), p=int(p), maxmem=_MAXMEM,
                             dklen=len(expected))
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, expected)


def main() -> int:
    """Print the hash of a password typed twice (for SANDPIT_UI_USERS)."""
    first = getpass.getpass("password: ")
    if first != getpass.getpass("again: "):
        print("the two passwords differ", file=sys.stderr)
        return 1
    if len(first) < 8:
        print("use at least 8 characters", file=sys.stderr)
        return 1
    print(hash_password(first))
    return 0


if __name__ == "__main__":
    sys.exit(main())
