"""Who may see and do what in the web UI (settings, read once at start-up from a mapping).

Recognised variables:

- ``SANDPIT_UI_VISITORS``: ``none`` (default: every page asks for a login) or ``read`` (anyone may
  read the run list, run pages and job headers; changing anything still needs a login).
- ``SANDPIT_UI_UNTRUSTED_LOGS``: who may read the logs, artifacts and test reports of
  *untrusted* runs (a fork's pull request, an untrusted token's run): ``visitor``, ``user``
  (default) or ``admin``. Trusted runs' logs are shown to whoever may see the run.
- ``SANDPIT_UI_USERS``: local users, ``name:<hash>`` or ``name:<hash>:admin``, comma-separated; a
  hash is what ``python -m api.ui.passwords`` prints (scrypt). Anyone may also log in with an API
  token (a ``:trusted`` token is an admin).
- ``SANDPIT_UI_SESSION_KEY``: the key signing session cookies; default ``<state_dir>/ui-session-key``
  (made 0600 on first use). API processes behind one address must share it.
- ``SANDPIT_UI_SESSION_HOURS`` (default 12): how long a login lasts.
- ``SANDPIT_UI_SECURE_COOKIE``: ``auto`` (default: ``Secure`` when the request came over https),
  ``always`` (behind a TLS-terminating proxy) or ``never``.

>>> s = UiSettings.from_env({"SANDPIT_UI_VISITORS": "read", "SANDPIT_UI_USERS": "ann:scrypt$x:admin"})
>>> s.visitors, [(u.name, u.admin) for u in s.users], s.untrusted_logs
('read', [('ann', True)], 'user')
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

Role = Literal["visitor", "user", "admin"]
ROLE_RANK: dict[str, int] = {"visitor": 0, "user": 1, "admin": 2}


class UiSettingsError(ValueError):
    """A UI setting the API cannot use (raised at start-up)."""


@dataclass(frozen=True, slots=True)
class LocalUser:
    name: str
    password_hash: str = field(repr=False)
    admin: bool = False


@dataclass(frozen=True, slots=True)
class UiSettings:
    visitors: Literal["none", "read"] = "none"
    untrusted_logs: Role = "user"
    users: tuple[LocalUser, ...] = ()
    session_key: str | None = field(default=None, repr=False)
    session_hours: float = 12.0
    secure_cookie: Literal["auto", "always", "never"] = "auto"

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> UiSettings:
        visitors = env.get("SANDPIT_UI_VISITORS") or "none"
        if visitors not in ("none", "read"):
            raise UiSettingsError(f"SANDPIT_UI_VISITORS must be `none` or `read`, not {visitors!r}")
        logs = env.get("SANDPIT_UI_UNTRUSTED_LOGS") or "user"
        if logs not in ROLE_RANK:
            raise UiSettingsError(f"SANDPIT_UI_UNTRUSTED_LOGS must be visitor, user or admin, not {logs!r}")
        secure = env.get("SANDPIT_UI_SECURE_COOKIE") or "auto"
        if secure not in ("auto", "always", "never"):
            raise UiSettingsError(f"SANDPIT_UI_SECURE_COOKIE must be auto, always or never, not {secure!r}")
        hours_text = env.get("SANDPIT_UI_SESSION_HOURS") or "12"
        try:
            hours = float(hours_text)
            if not 0 < hours <= 24 * 365:
                raise ValueError
        except ValueError:
            raise UiSettingsError(f"SANDPIT_UI_SESSION_HOURS must be a number of hours, not {hours_text!r}") from None
        return cls(visitors=visitors, untrusted_logs=logs, users=parse_users(env.get("SANDPIT_UI_USERS", "")),  # type: ignore[arg-type]
                   session_key=env.get("SANDPIT_UI_SESSION_KEY") or None, session_hours=hours,
                   secure_cookie=secure)  # type: ignore[arg-type]


def parse_users(text: str) -> tuple[LocalUser, ...]:
    """Read ``SANDPIT_UI_USERS`` (see the module docstring).

    >>> parse_users("ann:scrypt$a, bob:scrypt$b:admin")
    (LocalUser(name='ann', admin=False), LocalUser(name='bob', admin=True))
    """
    users: list[LocalUser] = []
    for position, entry in enumerate((e.strip() for e in text.split(",")), start=1):
        if not entry:
            continue
        parts = entry.split(":")
        admin = len(parts) == 3 and parts[2] == "admin"
        if len(parts) not in (2, 3) or (len(parts) == 3 and not admin) or not parts[0] or not parts[1]:
            raise UiSettingsError(f"SANDPIT_UI_USERS entry {position} is not `name:hash` or `name:hash:admin`")
        if not parts[1].startswith("scrypt$"):
            raise UiSettingsError(f"SANDPIT_UI_USERS entry {position}: the password must be a hash made by "
                                  "`python -m api.ui.passwords`, never the password itself")
        users.append(LocalUser(parts[0], parts[1], admin))
    if len({u.name for u in users}) != len(users):
        raise UiSettingsError("SANDPIT_UI_USERS names the same user twice")
    return tuple(users)
