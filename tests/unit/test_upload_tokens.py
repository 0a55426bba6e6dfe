"""Signed job tokens (pure parts of pipelines/store/job_tokens.py): what a signature proves,
what the key file must hold, which strings are refused before any read."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipelines.store.job_tokens import (
    TOKEN_PREFIX,
    looks_like_token,
    read_token_keys,
    sign_job_token,
    signed_claims,
)

OLD, NEW = b"o" * 32, b"n" * 40
JOB = "0192a7c4-1d2e-7f00-8000-000000000001"
GOOD = sign_job_token(OLD, JOB, 3)


@pytest.mark.parametrize(("keys", "token", "claims"), [
    ((OLD,), GOOD, (JOB, 3)),
    ((NEW, OLD), GOOD, (JOB, 3)),  # rotation: a new key first still accepts the old one's tokens
    ((NEW,), GOOD, None),  # a key it was not signed with
    ((), GOOD, None),  # an API without keys takes no signed token
    ((OLD,), GOOD.replace(".3.", ".4.", 1), None),  # another attempt, same signature
    ((OLD,), GOOD.replace(JOB, JOB[:-1] + "2", 1), None),  # another job, same signature
    ((OLD,), GOOD[:-2], None),  # a signature cut short
    ((OLD,), GOOD + "A", None),
    ((OLD,), f"spjs_{JOB}.x.{GOOD.rsplit('.', 1)[1]}", None),  # an attempt that is not a number
    ((OLD,), f"spjs_{JOB}.3", None),  # no signature
    ((OLD,), "spj_" + GOOD[5:], None),  # the row tokens' prefix
    ((OLD,), "spjs_" + "A" * 300, None),  # too long to be one
])
def test_a_signature_proves_the_job_and_attempt_it_names(keys: tuple[bytes, ...], token: str,
                                                         claims: tuple[str, int] | None) -> None:
    """Only a token one of the keys signed, unaltered, names a job and an attempt."""
    assert signed_claims(keys, token) == claims


@pytest.mark.parametrize(("token", "looks"), [
    (GOOD, True),
    (TOKEN_PREFIX + "A" * 43, True),
    (TOKEN_PREFIX + "A" * 42, False),
    ("spjs_a b", False),
    ("spjs_" + "A" * 300, False),
    ("glpat-abc", False),
    ("", False),
])
def test_strings_that_cannot_be_tokens_are_told_apart_without_a_read(token: str, looks: bool) -> None:
    """A row token's form (prefix and 43 URL-safe characters) or a signed token's passes on to
    the check; anything else is refused at once."""
    assert looks_like_token(token) is looks


def test_the_key_file_holds_one_key_per_line_the_first_signing(tmp_path: Path) -> None:
    """Blank lines and surrounding spaces are ignored; the keys keep their order."""
    path = tmp_path / "keys"
    path.write_bytes(b"\n  " + NEW + b"  \n\n" + OLD + b"\n")
    assert read_token_keys(path) == (NEW, OLD)


@pytest.mark.parametrize("content", [b"", b"\n\n", b"short\n", OLD + b"\nshort\n"])
def test_a_key_file_without_usable_keys_is_refused_with_the_reason(tmp_path: Path, content: bytes) -> None:
    """An empty file, or a key under 32 characters, stops the process at start-up, saying why."""
    path = tmp_path / "keys"
    path.write_bytes(content)
    with pytest.raises(ValueError, match="at least 32 characters"):
        read_token_keys(path)


def test_a_missing_key_file_is_refused_naming_it(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cannot be read"):
        read_token_keys(tmp_path / "nope")
