"""A token server on loopback for Docker Hub's bearer flow (the registry answers 401 with
``WWW-Authenticate: Bearer realm=...``; the client asks the realm for a token, with basic
credentials when it has them, and retries with ``Authorization: Bearer``).

A real HTTP server that records what it was sent. Tokens are JWTs signed RS256 with a
self-signed certificate the registry trusts (``rootcertbundle``), carried in the token's ``x5c``
header as distribution's token auth accepts. Who may do what is ``grants``: user → actions;
an anonymous request gets a token with no access (as Docker Hub gives for a private repository).
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

ISSUER, SERVICE = "sandpit-test-issuer", "sandpit-test-registry"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class TokenServer:
    def __init__(self, workdir: Path, users: dict[str, str], grants: dict[str, list[str]]) -> None:
        self.users, self.grants = users, grants
        self.requests: list[dict[str, object]] = []
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sandpit test token signer")])
        now = dt.datetime.now(dt.UTC)
        self.cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                     .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
                     .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=1))
                     .sign(self.key, hashes.SHA256()))
        self.cert_path = workdir / "token-signer.pem"
        workdir.mkdir(parents=True, exist_ok=True)
        self.cert_path.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.realm = f"http://127.0.0.1:{self.server.server_address[1]}/token"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def registry_auth(self) -> str:
        """The ``auth:`` section of the registry's config."""
        return (f"auth:\n  token:\n    realm: {self.realm}\n    service: {SERVICE}\n    issuer: {ISSUER}\n"
                f"    rootcertbundle: {self.cert_path}\n")

    def token(self, user: str | None, scope: str) -> str:
        access = []
        kind, _, rest = scope.partition(":")
        repo, _, wanted = rest.rpartition(":")
        if kind == "repository" and user is not None:
            allowed = [a for a in wanted.split(",") if a in self.grants.get(user, [])]
            if allowed:
                access.append({"type": "repository", "name": repo, "actions": allowed})
        now = int(time.time())
        header = {"typ": "JWT", "alg": "RS256",
                  "x5c": [base64.b64encode(self.cert.public_bytes(serialization.Encoding.DER)).decode()]}
        claims = {"iss": ISSUER, "sub": user or "", "aud": SERVICE, "exp": now + 300, "nbf": now - 10, "iat": now,
                  "jti": uuid.uuid4().hex, "access": access}
        signing = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
        signature = self.key.sign(signing.encode(), padding.PKCS1v15(), hashes.SHA256())
        return f"{signing}.{_b64(signature)}"

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                query = parse_qs(urlparse(self.path).query)
                user = None
                auth = self.headers.get("Authorization", "")
                if auth.startswith("Basic "):
                    name, _, password = base64.b64decode(auth[6:]).decode().partition(":")
                    if server.users.get(name) != password:
                        server.requests.append({"user": name, "refused": True})
                        self.send_response(401)
                        self.end_headers()
                        return
                    user = name
                scopes = query.get("scope", [])
                server.requests.append({"user": user, "scopes": scopes, "service": query.get("service")})
                token = server.token(user, scopes[0] if scopes else "")
                body = json.dumps({"token": token, "access_token": token, "expires_in": 300}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_args: object) -> None:
                pass

        return Handler

    def __enter__(self) -> TokenServer:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout=5)
