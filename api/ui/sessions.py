"""The web UI's login: a signed session cookie, and who the viewer of a page is (adapter: the key file).

The cookie is stateless: ``itsdangerous`` signs (HMAC-SHA1 over a key derived from the session key,
with a timestamp checked against SANDPIT_UI_SESSION_HOURS) a small JSON payload: who logged in,
how, a fingerprint of the credential, and the session's CSRF token. It is a well-kept library
(Flask's and Starlette's sessions use it) instead of hand-made signing. The fingerprint is an
HMAC of the token or password hash, so a token removed from SANDPIT_API_TOKENS or a changed
password ends every session made with it at the next request; the credential itself is never in
the cookie.

The cookie is ``HttpOnly`` (no script reads it), ``SameSite=Lax`` (a link from elsewhere still
arrives logged in; a cross-site form post does not carry it) and ``Secure`` when the request came
over https (or always/never: SANDPIT_UI_SECURE_COOKIE).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import Request, Response
from itsdangerous import BadSignature, URLSafeTimedSerializer

from api.settings import ApiSettings, ApiToken
from api.ui.passwords import verify_password
from api.ui.settings import ROLE_RANK, LocalUser, Role, UiSettings
from pipelines.forges.sealing import load_or_create_key

COOKIE = "sandpit_session"
LOGIN_COOKIE = "sandpit_login"  # the login form's CSRF nonce (no session exists yet)
KEY_FILE = "ui-session-key"
_DUMMY_HASH = "scrypt$16384$8$1$AAAAAAAAAAAAAAAAAAAAAA$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"


@dataclass(frozen=True, slots=True)
class Viewer:
    """Who is looking at a page: a logged-in token or local user, or a visitor (``name`` None)."""

    name: str | None
    role: Role
    kind: str  # token | user | visitor
    csrf: str = ""
    #: what a run this viewer starts (a retry) is submitted as: its trust and its submitter
    caller: ApiToken | None = None

    def may(self, role: Role) -> bool:
        return ROLE_RANK[self.role] >= ROLE_RANK[role]

    @property
    def signed_in(self) -> bool:
        return self.name is not None


class SessionKeeper:
    """Issues and reads session cookies for one process (made once, by :mod:`api.ui.install`)."""

    def __init__(self, ui: UiSettings, api: ApiSettings) -> None:
        self.ui = ui
        self.api = api
        key = ui.session_key or load_or_create_key(Path(api.state_dir) / KEY_FILE)
        self._key = key.encode()
        self._signer = URLSafeTimedSerializer(key, salt="sandpit-ui-session")
        self.max_age_s = int(ui.session_hours * 3600)

    def _fingerprint(self, kind: str, credential: str) -> str:
        return hmac.new(self._key, f"{kind}:{credential}".encode(), hashlib.sha256).hexdigest()[:32]

    # -- logging in ------------------------------------------------------------------------------
    def token_login(self, offered: str) -> Viewer | None:
        """The viewer an API token logs in as (compared in constant time, every token tried)."""
        found: ApiToken | None = None
        for token in self.api.tokens:
            if hmac.compare_digest(offered.encode(), token.secret.encode()):
                found = token
        if found is None:
            return None
        return self._token_viewer(found, secrets.token_urlsafe(24))

    def user_login(self, name: str, password: str) -> Viewer | None:
        """The viewer a local user logs in as; a wrong name costs the same hash as a wrong password."""
        user = next((u for u in self.ui.users if hmac.compare_digest(u.name.encode(), name.encode())), None)
        ok = verify_password(password, user.password_hash if user else _DUMMY_HASH)
        if user is None or not ok:
            return None
        return self._user_viewer(user, secrets.token_urlsafe(24))

    def _token_viewer(self, token: ApiToken, csrf: str) -> Viewer:
        return Viewer(token.name, "admin" if token.trusted else "user", "token", csrf, token)

    def _user_viewer(self, user: LocalUser, csrf: str) -> Viewer:
        caller = ApiToken(f"ui-{user.name}", "", trusted=user.admin)
        return Viewer(user.name, "admin" if user.admin else "user", "user", csrf, caller)

    def cookie_for(self, viewer: Viewer) -> str:
        assert viewer.name is not None
        if viewer.kind == "token":
            token = next(t for t in self.api.tokens if t.name == viewer.name)
            fingerprint = self._fingerprint("token", token.secret)
        else:
            user = next(u for u in self.ui.users if u.name == viewer.name)
            fingerprint = self._fingerprint("user", user.password_hash)
        return str(self._signer.dumps({"n": viewer.name, "k": viewer.kind, "f": fingerprint, "c": viewer.csrf}))

    # -- reading a request -------------------------------------------------------------------------
    def viewer(self, request: Request) -> Viewer | None:
        """The logged-in viewer, else a visitor when visitors may read, else None."""
        found = self._from_cookie(request.cookies.get(COOKIE))
        if found is not None:
            return found
        if self.ui.visitors == "read":
            return Viewer(None, "visitor", "visitor")
        return None

    def _from_cookie(self, value: str | None) -> Viewer | None:
        if not value or len(value) > 4096:
            return None
        try:
            data: Any = self._signer.loads(value, max_age=self.max_age_s)
            name, kind, fingerprint, csrf = data["n"], data["k"], data["f"], data["c"]
        except (BadSignature, KeyError, TypeError):
            return None
        if kind == "token":
            for token in self.api.tokens:
                if token.name == name and hmac.compare_digest(fingerprint, self._fingerprint("token", token.secret)):
                    return self._token_viewer(token, csrf)
        elif kind == "user":
            for user in self.ui.users:
                if user.name == name and hmac.compare_digest(fingerprint,
                                                             self._fingerprint("user", user.password_hash)):
                    return self._user_viewer(user, csrf)
        return None

    # -- cookies -----------------------------------------------------------------------------------
    def secure(self, request: Request) -> bool:
        if self.ui.secure_cookie == "auto":
            return request.url.scheme == "https"
        return self.ui.secure_cookie == "always"

    def set_session(self, response: Response, request: Request, viewer: Viewer) -> None:
        response.set_cookie(COOKIE, self.cookie_for(viewer), max_age=self.max_age_s, httponly=True,
                            samesite="lax", secure=self.secure(request), path="/")

    def clear_session(self, response: Response, request: Request) -> None:
        response.delete_cookie(COOKIE, path="/", httponly=True, samesite="lax", secure=self.secure(request))

    def login_nonce(self, request: Request, response: Response) -> str:
        """The login form's CSRF nonce: the one its cookie holds, else a new one set now."""
        nonce = request.cookies.get(LOGIN_COOKIE) or ""
        if not (16 <= len(nonce) <= 64 and nonce.replace("-", "").replace("_", "").isalnum()):
            nonce = secrets.token_urlsafe(24)
            response.set_cookie(LOGIN_COOKIE, nonce, max_age=3600, httponly=True, samesite="strict",
                                secure=self.secure(request), path="/ui/login")
        return nonce
