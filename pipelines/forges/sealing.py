"""Sealing a repository's web-hook secret and forge token at rest (adapter: reads/creates a key file).

The signature checks need the secret itself (an HMAC key cannot be checked against a hash),
so it is encrypted, not hashed. :class:`Sealer` uses ``cryptography``'s Fernet (AES-128-CBC and
HMAC-SHA256, a versioned token with its own IV): a well-kept, audited construction instead of
hand-made framing of a raw cipher. ``MultiFernet`` makes key rotation a setting: the first key
seals, every key opens.

The key comes from ``SANDPIT_SECRET_KEY`` (one or more comma-separated Fernet keys, as
``Fernet.generate_key()`` prints them), else from ``<state_dir>/secret-key``, created 0600 on
first use. A database copied without that key (a backup, a leaked dump) gives no secret away.

>>> sealer = Sealer.from_keys([Fernet.generate_key().decode()])
>>> sealer.open(sealer.seal("s3cret"))
's3cret'
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

KEY_FILE = "secret-key"


class SealingError(Exception):
    """A key that is not a Fernet key, or a sealed value no configured key opens."""


class Sealer:
    def __init__(self, fernet: MultiFernet) -> None:
        self._fernet = fernet

    @classmethod
    def from_keys(cls, keys: Sequence[str]) -> Sealer:
        try:
            return cls(MultiFernet([Fernet(key.strip().encode()) for key in keys if key.strip()]))
        except (ValueError, TypeError) as exc:
            raise SealingError("SANDPIT_SECRET_KEY must be Fernet keys (32 url-safe base64 bytes each, "
                               "comma-separated; make one with `python -c 'from cryptography.fernet import "
                               "Fernet; print(Fernet.generate_key().decode())'`)") from exc

    @classmethod
    def from_settings(cls, configured: str | None, state_dir: Path) -> Sealer:
        """The configured keys, else the state dir's key file (made 0600 when missing)."""
        if configured:
            return cls.from_keys(configured.split(","))
        return cls.from_keys([load_or_create_key(state_dir / KEY_FILE)])

    def seal(self, value: str) -> str:
        return self._fernet.encrypt(value.encode()).decode("ascii")

    def open(self, sealed: str) -> str:
        try:
            return self._fernet.decrypt(sealed.encode("ascii")).decode()
        except (InvalidToken, UnicodeError) as exc:
            raise SealingError("a stored secret cannot be opened with the configured key "
                               "(SANDPIT_SECRET_KEY changed, or the key file was replaced)") from exc


def load_or_create_key(path: Path) -> str:
    """The key in ``path``; a new one written there first (0600, exclusive create) if there is none."""
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    key = Fernet.generate_key()
    # written whole under a unique name, then linked into place: a process racing us reads either
    # no file or the complete key, never a half-written one (link refuses to replace)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(key)
        try:
            os.link(temporary, path)
        except FileExistsError:  # another process made it first: use theirs
            return path.read_text().strip()
    finally:
        temporary.unlink(missing_ok=True)
    return key.decode()
