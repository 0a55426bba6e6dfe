"""Security headers on every response (a pure ASGI middleware: it touches headers only, so
streamed answers, the live log included, stream as before).

The Content-Security-Policy allows scripts, styles, fetches and form posts from sandpit's own
origin only, and nothing inline: a job's log or an artifact name that slipped past escaping could
still not run a script or restyle a page. Every asset is served from ``/static`` (no CDN). Artifact
downloads add their own ``Content-Disposition: attachment``; ``nosniff`` keeps a browser from
guessing HTML in them.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
       "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
    (b"x-frame-options", b"DENY"),
    (b"cross-origin-opener-policy", b"same-origin"),
)


class SecurityHeaders:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                present = {name.lower() for name, _ in message.get("headers", [])}
                message["headers"] = [*message.get("headers", []),
                                      *((n, v) for n, v in HEADERS if n not in present)]
            await send(message)

        await self.app(scope, receive, send_with_headers)
