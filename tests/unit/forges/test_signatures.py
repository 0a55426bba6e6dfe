"""Web-hook signature checks: each forge's header, over the exact bytes, refusing every forgery."""

from __future__ import annotations

import base64
import hashlib
import hmac

import pytest

from pipelines.forges.signatures import TIMESTAMP_WINDOW_S, check_signature, standard_webhooks_key

SECRET = b"a-web-hook-secret-0123"
BODY = b'{"ref": "refs/heads/main", "after": "' + b"a" * 40 + b'"}\n'
NOW = 1_764_600_000


def hexmac(secret: bytes, body: bytes) -> str:
    return hmac.new(secret, body, hashlib.sha256).hexdigest()


def standard(key: bytes, msg_id: str, stamp: int, body: bytes) -> str:
    mac = hmac.new(key, f"{msg_id}.{stamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


GOOD = hexmac(SECRET, BODY)
WRONG = hexmac(b"another-secret-4567", BODY)
TAMPERED = hexmac(SECRET, BODY + b" ")

CASES = [
    # (forge, headers, verdict or None)
    ("github", {"x-hub-signature-256": f"sha256={GOOD}"}, None),
    ("github", {"x-hub-signature-256": f"sha256={WRONG}"}, "bad_signature"),
    ("github", {"x-hub-signature-256": f"sha256={TAMPERED}"}, "bad_signature"),
    ("github", {"x-hub-signature-256": f"sha256={GOOD[:40]}"}, "bad_signature"),  # truncated
    ("github", {"x-hub-signature-256": GOOD}, "bad_signature"),  # no sha256= prefix
    ("github", {"x-hub-signature-256": "sha256=\u00e9" + GOOD[1:]}, "bad_signature"),  # non-ASCII
    ("github", {"x-hub-signature": "sha1=" + hmac.new(SECRET, BODY, hashlib.sha1).hexdigest()},
     "missing_signature"),  # the legacy SHA-1 header alone is not accepted
    ("github", {}, "missing_signature"),
    ("gitea", {"x-gitea-signature": GOOD}, None),
    ("gitea", {"x-gitea-signature": GOOD.upper()}, None),
    ("gitea", {"x-gitea-signature": WRONG}, "bad_signature"),
    ("gitea", {"x-gitea-signature": GOOD[:-1]}, "bad_signature"),
    ("gitea", {"x-forgejo-signature": GOOD}, None),
    # a present Forgejo header is the one checked, whatever the Gitea one says
    ("gitea", {"x-forgejo-signature": WRONG, "x-gitea-signature": GOOD}, "bad_signature"),
    ("gitea", {"x-forgejo-signature": GOOD, "x-gitea-signature": WRONG}, None),
    ("gitea", {"x-hub-signature-256": f"sha256={GOOD}"}, "missing_signature"),
    ("gitea", {}, "missing_signature"),
    ("gitlab", {"x-gitlab-token": SECRET.decode()}, None),
    ("gitlab", {"x-gitlab-token": "a-web-hook-secret-012"}, "bad_signature"),  # a prefix of it
    ("gitlab", {"x-gitlab-token": ""}, "bad_signature"),
    ("gitlab", {}, "missing_signature"),
    ("gitlab", {"webhook-id": "msg_1", "webhook-timestamp": str(NOW),
                "webhook-signature": standard(SECRET, "msg_1", NOW, BODY)}, None),
    # several signatures, one of them right
    ("gitlab", {"webhook-id": "msg_1", "webhook-timestamp": str(NOW),
                "webhook-signature": "v1,AAAA " + standard(SECRET, "msg_1", NOW, BODY)}, None),
    # both token and signature: both must hold
    ("gitlab", {"x-gitlab-token": SECRET.decode(), "webhook-id": "m", "webhook-timestamp": str(NOW),
                "webhook-signature": standard(SECRET, "m", NOW, BODY)}, None),
    ("gitlab", {"x-gitlab-token": "wrong-token-000000", "webhook-id": "m", "webhook-timestamp": str(NOW),
                "webhook-signature": standard(SECRET, "m", NOW, BODY)}, "bad_signature"),
    ("gitlab", {"x-gitlab-token": SECRET.decode(), "webhook-id": "m", "webhook-timestamp": str(NOW),
                "webhook-signature": standard(b"wrong", "m", NOW, BODY)}, "bad_signature"),
    # the id and timestamp are signed: changing either breaks the signature
    ("gitlab", {"webhook-id": "msg_2", "webhook-timestamp": str(NOW),
                "webhook-signature": standard(SECRET, "msg_1", NOW, BODY)}, "bad_signature"),
    ("gitlab", {"webhook-id": "msg_1", "webhook-timestamp": str(NOW + 1),
                "webhook-signature": standard(SECRET, "msg_1", NOW, BODY)}, "bad_signature"),
    ("gitlab", {"webhook-id": "msg_1", "webhook-timestamp": str(NOW),
                "webhook-signature": "v2," + standard(SECRET, "msg_1", NOW, BODY)[3:]}, "bad_signature"),
    ("gitlab", {"webhook-timestamp": str(NOW), "webhook-signature": standard(SECRET, "", NOW, BODY)},
     "bad_signature"),
    # signed correctly, but outside the window: a captured delivery replayed later (or early)
    ("gitlab", {"webhook-id": "m", "webhook-timestamp": str(NOW - TIMESTAMP_WINDOW_S - 1),
                "webhook-signature": standard(SECRET, "m", NOW - TIMESTAMP_WINDOW_S - 1, BODY)}, "stale_timestamp"),
    ("gitlab", {"webhook-id": "m", "webhook-timestamp": str(NOW + TIMESTAMP_WINDOW_S + 1),
                "webhook-signature": standard(SECRET, "m", NOW + TIMESTAMP_WINDOW_S + 1, BODY)}, "stale_timestamp"),
    ("gitlab", {"webhook-id": "m", "webhook-timestamp": str(NOW - TIMESTAMP_WINDOW_S),
                "webhook-signature": standard(SECRET, "m", NOW - TIMESTAMP_WINDOW_S, BODY)}, None),
]


@pytest.mark.parametrize(("forge", "headers", "verdict"), CASES)
def test_signature_verdicts(forge: str, headers: dict[str, str], verdict: str | None) -> None:
    """Each header form is accepted only when it signs these exact bytes with this secret."""
    refused = check_signature(forge, SECRET, headers, BODY, now=NOW)
    assert (refused.reason if refused else None) == verdict


def test_standard_webhooks_whsec_secret_is_base64_key() -> None:
    """A ``whsec_`` secret signs with its decoded bytes, as Standard Webhooks libraries do."""
    key = b"\x01\x02raw-key-bytes"
    secret = b"whsec_" + base64.b64encode(key)
    headers = {"webhook-id": "m", "webhook-timestamp": str(NOW), "webhook-signature": standard(key, "m", NOW, BODY)}
    assert standard_webhooks_key(secret) == key
    assert check_signature("gitlab", secret, headers, BODY, now=NOW) is None
    wrong = {**headers, "webhook-signature": standard(secret, "m", NOW, BODY)}
    assert check_signature("gitlab", secret, wrong, BODY, now=NOW) is not None


def test_body_byte_change_is_refused_on_every_forge() -> None:
    """One flipped byte in the body fails every forge's check (the signature is over raw bytes)."""
    flipped = BODY.replace(b"main", b"mainx")
    for forge, headers in (("github", {"x-hub-signature-256": f"sha256={GOOD}"}),
                           ("gitea", {"x-gitea-signature": GOOD}),
                           ("gitlab", {"webhook-id": "m", "webhook-timestamp": str(NOW),
                                       "webhook-signature": standard(SECRET, "m", NOW, BODY)})):
        refused = check_signature(forge, SECRET, headers, flipped, now=NOW)
        assert refused is not None and refused.reason == "bad_signature", forge
