"""Web-hook signature checks, one per forge, over the exact bytes received (pure).

Each check takes the repository's secret, the request headers (a mapping with lower-case
names) and the raw body, and returns ``None`` when the delivery is authentic or a
:class:`SignatureRefused` saying why not. Every comparison is constant time
(:func:`hmac.compare_digest`), and nothing here parses the body.

- GitHub: ``X-Hub-Signature-256: sha256=<hex HMAC-SHA256(secret, body)>``.
- Gitea / Forgejo: ``X-Forgejo-Signature`` (when present, it is the one checked) else
  ``X-Gitea-Signature``: ``<hex HMAC-SHA256(secret, body)>`` with no prefix.
- GitLab: ``X-Gitlab-Token`` is the secret itself; GitLab's signing token (Standard Webhooks)
  adds ``webhook-id``, ``webhook-timestamp`` and ``webhook-signature: v1,<base64 HMAC-SHA256(key,
  "<id>.<timestamp>.<body>")>`` (several space-separated signatures may be sent; one match is
  enough), the key being the base64 after ``whsec_`` or the secret's own bytes. When the
  signature headers are present they must verify and the timestamp must lie within
  :data:`TIMESTAMP_WINDOW_S` of ``now`` (a captured delivery cannot be replayed later). One of
  the two must be sent; with both, both must hold. The repository's one secret is both (set the
  same value as GitLab's secret token and signing token, or only one of them).

>>> import hashlib, hmac
>>> body = b'{"zen": "Keep it logically awesome."}'
>>> good = "sha256=" + hmac.new(b"s3cret", body, hashlib.sha256).hexdigest()
>>> check_github(b"s3cret", {"x-hub-signature-256": good}, body) is None
True
>>> check_github(b"wrong", {"x-hub-signature-256": good}, body).reason
'bad_signature'
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass

TIMESTAMP_WINDOW_S = 300  # Standard Webhooks' recommended tolerance (5 minutes either way)
_HEX_SHA256_LEN = 64


@dataclass(frozen=True, slots=True)
class SignatureRefused:
    """Why a delivery is not authentic: ``missing_signature`` (no header to check),
    ``bad_signature`` (present but wrong), ``stale_timestamp`` (signed, outside the window)."""

    reason: str
    message: str


def _hmac_hex(secret: bytes, body: bytes) -> str:
    return hmac.new(secret, body, hashlib.sha256).hexdigest()


def _same(offered: str, expected: str) -> bool:
    # compare_digest refuses non-ASCII str; compare the UTF-8 bytes (a forged header may hold anything)
    return hmac.compare_digest(offered.encode("utf-8", "surrogateescape"), expected.encode())


def check_github(secret: bytes, headers: Mapping[str, str], body: bytes) -> SignatureRefused | None:
    """GitHub's ``X-Hub-Signature-256`` (the legacy SHA-1 header is never accepted)."""
    offered = headers.get("x-hub-signature-256")
    if offered is None:
        return SignatureRefused("missing_signature", "no X-Hub-Signature-256 header; set the web-hook's secret "
                                "on GitHub (Settings → Webhooks → Secret)")
    if not _same(offered.strip(), "sha256=" + _hmac_hex(secret, body)):
        return SignatureRefused("bad_signature", "X-Hub-Signature-256 does not match the body signed with "
                                "this repository's secret")
    return None


def check_gitea(secret: bytes, headers: Mapping[str, str], body: bytes) -> SignatureRefused | None:
    """Forgejo's ``X-Forgejo-Signature`` if sent, else Gitea's ``X-Gitea-Signature``."""
    name = "x-forgejo-signature" if "x-forgejo-signature" in headers else "x-gitea-signature"
    offered = headers.get(name)
    if offered is None:
        return SignatureRefused("missing_signature", "no X-Gitea-Signature (or X-Forgejo-Signature) header; set "
                                "the web-hook's secret on the forge")
    if not _same(offered.strip().lower(), _hmac_hex(secret, body)):
        return SignatureRefused("bad_signature", f"{_title(name)} does not match the body signed with this "
                                "repository's secret")
    return None


def standard_webhooks_key(secret: bytes) -> bytes:
    """The HMAC key of a Standard Webhooks secret: ``whsec_<base64>`` decoded, else the bytes.

    >>> standard_webhooks_key(b"whsec_c2VjcmV0"), standard_webhooks_key(b"plain")
    (b'secret', b'plain')
    """
    if secret.startswith(b"whsec_"):
        try:
            return base64.b64decode(secret[len(b"whsec_"):], validate=True)
        except binascii.Error:
            return secret
    return secret


def check_gitlab(secret: bytes, headers: Mapping[str, str], body: bytes, *, now: float) -> SignatureRefused | None:
    """GitLab: ``X-Gitlab-Token`` equal to ``secret`` when sent, the Standard Webhooks signature
    (keyed by ``secret``, see :func:`standard_webhooks_key`) when sent, at least one of them.
    ``now``: Unix time, for the signature's timestamp window."""
    token = headers.get("x-gitlab-token")
    signed = "webhook-signature" in headers
    if token is None and not signed:
        return SignatureRefused("missing_signature", "neither X-Gitlab-Token nor webhook-signature was sent; set "
                                "the web-hook's secret token (or signing token) on GitLab")
    if token is not None and not _same(token, secret.decode("utf-8", "surrogateescape")):
        return SignatureRefused("bad_signature", "X-Gitlab-Token is not this repository's secret token")
    if signed:
        return _check_standard_webhook(standard_webhooks_key(secret), headers, body, now)
    return None


def _check_standard_webhook(key: bytes, headers: Mapping[str, str], body: bytes, now: float) -> SignatureRefused | None:
    msg_id = headers.get("webhook-id", "")
    stamp = headers.get("webhook-timestamp", "")
    if not msg_id or not stamp.isdigit():
        return SignatureRefused("bad_signature", "webhook-signature needs webhook-id and a numeric webhook-timestamp")
    expected = base64.b64encode(
        hmac.new(key, f"{msg_id}.{stamp}.".encode() + body, hashlib.sha256).digest()).decode()
    matched = False
    for entry in headers.get("webhook-signature", "").split():
        version, _comma, value = entry.partition(",")
        if version == "v1" and _same(value, expected):
            matched = True  # no early exit: the time taken does not say which entry matched
    if not matched:
        return SignatureRefused("bad_signature", "no v1 entry of webhook-signature matches "
                                "<webhook-id>.<webhook-timestamp>.<body> signed with this repository's key")
    if abs(now - int(stamp)) > TIMESTAMP_WINDOW_S:
        return SignatureRefused("stale_timestamp", f"webhook-timestamp {stamp} is more than {TIMESTAMP_WINDOW_S}s "
                                "from this server's clock (a replayed delivery, or a clock out of sync)")
    return None


def check_signature(
    forge: str, secret: bytes, headers: Mapping[str, str], body: bytes, *, now: float
) -> SignatureRefused | None:
    """The check of ``forge`` (``github``, ``gitlab``, ``gitea``); see the module docstring."""
    if forge == "github":
        return check_github(secret, headers, body)
    if forge == "gitea":
        return check_gitea(secret, headers, body)
    if forge == "gitlab":
        return check_gitlab(secret, headers, body, now=now)
    raise ValueError(f"unknown forge {forge!r}")


def _title(header: str) -> str:
    return "-".join(part.capitalize() for part in header.split("-"))
