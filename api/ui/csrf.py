"""CSRF protection for the UI's forms: every state-changing request must prove it came from a page
of ours.

Three checks, all required (any failure is a 403 that changes nothing):

- the form's ``csrf`` field equals the session's token (synchroniser token; the login form, which
  has no session yet, uses a nonce from its own ``SameSite=Strict`` cookie: double submit);
- the browser did not mark the request cross-site (``Sec-Fetch-Site``), and an ``Origin`` header,
  when sent, names this very host;
- the body is a small urlencoded form, parsed with the standard library's ``parse_qs`` (a
  multipart parser is a dependency these one-field forms do not need).
"""

from __future__ import annotations

import hmac
from urllib.parse import parse_qs, urlsplit

from fastapi import Request

from api.errors import Forbidden
from api.intake import read_capped_body

FORM_BYTES = 16 * 1024


async def read_form(request: Request) -> dict[str, str]:
    """The urlencoded form of ``request`` (one value per name; at most a few fields)."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != "application/x-www-form-urlencoded":
        raise Forbidden("a form of this site must be sent as application/x-www-form-urlencoded")
    body = await read_capped_body(request, FORM_BYTES)
    try:
        fields = parse_qs(body.decode("utf-8"), keep_blank_values=True, max_num_fields=20)
    except (UnicodeDecodeError, ValueError):
        raise Forbidden("the form could not be read") from None
    return {name: values[0] for name, values in fields.items()}


def same_origin(request: Request) -> bool:
    """Whether the browser says this request came from a page of this site."""
    if request.headers.get("sec-fetch-site", "same-origin") not in ("same-origin", "none"):
        return False
    origin = request.headers.get("origin")
    if origin is None:
        return True
    if origin == "null":
        return False
    return urlsplit(origin).netloc.lower() == request.headers.get("host", "").lower()


def check(request: Request, form: dict[str, str], expected: str) -> None:
    """Refuse (403) a form whose token is not ``expected`` or that came from another site."""
    offered = form.get("csrf", "")
    if not expected or not hmac.compare_digest(offered.encode(), expected.encode()):
        raise Forbidden("the form's CSRF token is missing or stale; reload the page and try again")
    if not same_origin(request):
        raise Forbidden("a cross-site form was refused")
