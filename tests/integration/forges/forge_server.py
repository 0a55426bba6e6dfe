"""A real HTTP server on loopback that speaks the three forges' commit status endpoints and records
what it receives (the one stand-in these tests use: a forge on the internet is not reachable here).

Routes, under a per-forge prefix given to the repository as its ``api_url``:

- ``POST /github/repos/{owner}/{repo}/statuses/{sha}`` (``Authorization: Bearer <token>``)
- ``POST /gitea/repos/{owner}/{repo}/statuses/{sha}`` (``Authorization: token <token>``)
- ``POST /gitlab/projects/{url-encoded path}/statuses/{sha}`` (``PRIVATE-TOKEN: <token>``)

Each answers 201 with the status (as the forges do), or, while ``fail_next`` holds codes, the
next of those (503 to play a forge that is down). A wrong token is 401, another path 404.
"""

from __future__ import annotations

import contextlib
import json
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote

_ROUTES = {
    "github": re.compile(r"^/github/repos/([^/]+)/([^/]+)/statuses/([0-9a-f]{40})$"),
    "gitea": re.compile(r"^/gitea/repos/([^/]+)/([^/]+)/statuses/([0-9a-f]{40})$"),
    "gitlab": re.compile(r"^/gitlab/projects/([^/]+)/statuses/([0-9a-f]{40})$"),
}


@dataclass(frozen=True)
class Received:
    forge: str
    project: str
    sha: str
    auth: str
    body: dict[str, Any]
    answered: int
    at: float


@dataclass
class ForgeServer:
    url: str
    token: str
    received: list[Received] = field(default_factory=list)
    fail_next: list[int] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def api_url(self, forge: str) -> str:
        return f"{self.url}/{forge}"

    def states(self, sha: str, answered: int | None = 201) -> list[str]:
        with self.lock:
            return [r.body.get("state", "") for r in self.received
                    if r.sha == sha and (answered is None or r.answered == answered)]

    def wait_for(self, sha: str, state: str, timeout: float = 60) -> list[Received]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                got = [r for r in self.received if r.sha == sha and r.answered == 201]
            if got and got[-1].body.get("state") == state:
                return got
            time.sleep(0.05)
        raise AssertionError(f"no {state!r} status for {sha[:12]} in {timeout}s; received {self.received}")


def _handler(server: ForgeServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *_args: Any) -> None:
            pass

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length)
            found = [(name, m) for name, route in _ROUTES.items() if (m := route.match(self.path))]
            if not found:
                self._answer(404, {"message": "Not Found"})
                return
            forge, match = found[0]
            if forge == "gitlab":
                project, sha, auth = unquote(match.group(1)), match.group(2), self.headers.get("PRIVATE-TOKEN", "")
                good = auth == server.token
            else:
                project, sha = f"{match.group(1)}/{match.group(2)}", match.group(3)
                auth = self.headers.get("Authorization", "")
                good = auth == (f"Bearer {server.token}" if forge == "github" else f"token {server.token}")
            with server.lock:
                code = server.fail_next.pop(0) if server.fail_next else (201 if good else 401)
                try:
                    body = json.loads(raw)
                except ValueError:
                    body = {}
                server.received.append(Received(forge, project, sha, auth, body, code, time.time()))
            self._answer(code, {"state": body.get("state"), "context": body.get("context") or body.get("name")})

        def _answer(self, code: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    return Handler


@contextlib.contextmanager
def forge_server(token: str) -> Iterator[ForgeServer]:
    """The server on a free 127.0.0.1 port, shut down when the block ends."""
    forge = ForgeServer("", token)
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(forge))
    forge.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield forge
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=10)
