"""The API process's settings, built once at the entry point from a mapping (never at import).

Recognised variables:

- ``SANDPIT_STATE_DIR`` (default ``/var/lib/sandpit``): artifacts live under ``<state_dir>/artifacts``.
- ``SANDPIT_DATABASE_URL`` (default ``sqlite:///<state_dir>/sandpit.db``).
- ``SANDPIT_REDIS_URL`` (default ``redis://127.0.0.1:6379/0``): the broker and the live log streams.
- ``SANDPIT_API_TOKENS``: comma-separated bearer tokens, each ``token``, ``name:token``, or either
  with a ``:trusted`` suffix (``ci:s3cret:trusted``). Runs created with a trusted token are stored
  with ``trust="trusted"``, every other API run is ``untrusted``. A token may contain neither ``,``
  nor ``:``. With no token configured every ``/api/v1`` request is refused.
- ``SANDPIT_API_MAX_BODY`` (bytes, default 1 MiB): the largest request body accepted (web-hook
  deliveries included).
- ``SANDPIT_SECRET_KEY``: the Fernet key(s) sealing repositories' web-hook secrets and forge
  tokens at rest (comma-separated: the first seals, all open); default: ``<state_dir>/secret-key``,
  made 0600 on first use (see :mod:`pipelines.forges.sealing`).
- ``SANDPIT_PUBLIC_URL``: the API's address as people reach it (``https://ci.example.org``): the
  link of each commit status a forge shows (``<url>/ui/runs/<id>``); unset: statuses carry no link.
- ``SANDPIT_API_MAX_ARCHIVE`` (bytes, default 16 MiB): the largest uploaded tree ``POST /runs``
  takes (``source.archive``, before base64).
- ``SANDPIT_JOB_TOKEN_KEY_FILE``: the file of keys (one per line, the first signs) the workers
  sign their jobs' tokens with, the same file on every host: the API then takes signed tokens
  too (see :mod:`pipelines.store.job_tokens`); unset: row tokens only.
- ``SANDPIT_POLICY_<LEVEL>_<CAP>``: the caps and defaults of each trust level (see
  :mod:`pipelines.policy` and README "Policy"); a bad or unknown one stops the API at start-up.

>>> s = ApiSettings.from_env({"SANDPIT_STATE_DIR": "/tmp/sp", "SANDPIT_API_TOKENS": "ci:abc:trusted,xyz"})
>>> s.database_url, [(t.name, t.trusted) for t in s.tokens]
('sqlite:////tmp/sp/sandpit.db', [('ci', True), ('token-2', False)])
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from api.ui.settings import UiSettings, UiSettingsError
from pipelines.policy import Policy, PolicyError
from pipelines.retention import RetentionConfigError, RetentionSettings
from pipelines.store.db import default_url
from pipelines.store.job_tokens import read_token_keys

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
DEFAULT_MAX_BODY = 1024 * 1024
DEFAULT_MAX_ARCHIVE = 16 * 1024 * 1024
MAX_WAIT_S = 3600.0


class SettingsError(ValueError):
    """A configuration value the API cannot use (raised at start-up, never per request)."""


@dataclass(frozen=True, slots=True)
class ApiToken:
    """One configured bearer token; ``name`` is what logs and run records may show."""

    name: str
    secret: str = field(repr=False)
    trusted: bool = False


@dataclass(frozen=True, slots=True)
class ApiSettings:
    database_url: str
    redis_url: str = DEFAULT_REDIS_URL
    state_dir: Path = Path("/var/lib/sandpit")
    tokens: tuple[ApiToken, ...] = ()
    max_body_bytes: int = DEFAULT_MAX_BODY
    max_wait_s: float = MAX_WAIT_S
    policy: Policy = field(default_factory=lambda: Policy.from_env({}))
    secret_key: str | None = field(default=None, repr=False)
    ui: UiSettings = field(default_factory=UiSettings)  # SANDPIT_UI_* (see api.ui.settings)
    public_url: str | None = None
    max_archive_bytes: int = DEFAULT_MAX_ARCHIVE
    retention: RetentionSettings = field(default_factory=RetentionSettings)  # SANDPIT_*_RETENTION, pipelines/retention
    job_token_keys: tuple[bytes, ...] = field(default=(), repr=False)  # SANDPIT_JOB_TOKEN_KEY_FILE's
    trace_file: Path | None = None  # SANDPIT_TRACE_FILE: the API's step marks (pipelines/trace.py); None: off

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> ApiSettings:
        state_dir = Path(env.get("SANDPIT_STATE_DIR") or "/var/lib/sandpit")
        max_body = env.get("SANDPIT_API_MAX_BODY") or str(DEFAULT_MAX_BODY)
        if not max_body.isdigit() or int(max_body) <= 0:
            raise SettingsError(f"SANDPIT_API_MAX_BODY must be a positive number of bytes, not {max_body!r}")
        max_archive = env.get("SANDPIT_API_MAX_ARCHIVE") or str(DEFAULT_MAX_ARCHIVE)
        if not max_archive.isdigit() or int(max_archive) <= 0:
            raise SettingsError(f"SANDPIT_API_MAX_ARCHIVE must be a positive number of bytes, not {max_archive!r}")
        public_url = (env.get("SANDPIT_PUBLIC_URL") or "").rstrip("/") or None
        if public_url is not None and not public_url.startswith(("http://", "https://")):
            raise SettingsError(f"SANDPIT_PUBLIC_URL must be an http:// or https:// URL, not {public_url[:100]!r}")
        try:
            policy = Policy.from_env(env)
        except PolicyError as exc:
            raise SettingsError(str(exc)) from None
        try:
            ui = UiSettings.from_env(env)
            retention = RetentionSettings.from_env(env)
        except (UiSettingsError, RetentionConfigError) as exc:
            raise SettingsError(str(exc)) from None
        key_file = env.get("SANDPIT_JOB_TOKEN_KEY_FILE")
        try:
            job_token_keys = read_token_keys(Path(key_file)) if key_file else ()
        except ValueError as exc:
            raise SettingsError(str(exc)) from None
        return cls(
            database_url=env.get("SANDPIT_DATABASE_URL") or default_url(state_dir),
            redis_url=env.get("SANDPIT_REDIS_URL") or DEFAULT_REDIS_URL,
            state_dir=state_dir,
            tokens=parse_tokens(env.get("SANDPIT_API_TOKENS", "")),
            max_body_bytes=int(max_body),
            policy=policy,
            secret_key=env.get("SANDPIT_SECRET_KEY") or None,
            ui=ui,
            public_url=public_url,
            max_archive_bytes=int(max_archive),
            retention=retention,
            job_token_keys=job_token_keys,
            trace_file=Path(env["SANDPIT_TRACE_FILE"]) if env.get("SANDPIT_TRACE_FILE") else None,
        )

    @property
    def artifacts_dir(self) -> Path:
        return self.state_dir / "artifacts"


def parse_tokens(text: str) -> tuple[ApiToken, ...]:
    """Read ``SANDPIT_API_TOKENS`` (see the module docstring).

    >>> parse_tokens("alice:t1, t2:trusted")
    (ApiToken(name='alice', trusted=False), ApiToken(name='token-2', trusted=True))
    """
    tokens: list[ApiToken] = []
    for position, entry in enumerate((e.strip() for e in text.split(",")), start=1):
        if not entry:
            continue
        parts = entry.split(":")
        trusted = len(parts) > 1 and parts[-1] == "trusted"
        if trusted:
            parts = parts[:-1]
        if len(parts) == 1:
            name, secret = f"token-{position}", parts[0]
        elif len(parts) == 2:
            name, secret = parts
        else:
            raise SettingsError(f"SANDPIT_API_TOKENS entry {position} is not `token`, `name:token` (+ `:trusted`)")
        if not name or not secret:
            raise SettingsError(f"SANDPIT_API_TOKENS entry {position} has an empty name or token")
        tokens.append(ApiToken(name, secret, trusted))
    if len({t.secret for t in tokens}) != len(tokens):
        raise SettingsError("SANDPIT_API_TOKENS lists the same token twice")
    return tuple(tokens)
