"""Secret masking in job logs: every form of a secret becomes ``[MASKED]`` in the file and for the
live reader, even when the job writes it in pieces (``worker.sandbox.logs``)."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from worker.sandbox.logs import MASK, JobLog, mask, read_log, secret_forms

SECRET = "s3cr3t-token-value"
B64 = base64.b64encode(SECRET.encode()).decode()


@pytest.mark.parametrize(("secrets", "forms"), [
    ((), []),
    (("abc",), []),  # shorter than 4 bytes: masking it would shred the log
    (("abcd",), ["YWJjZA==", "YWJjZA", "abcd"]),
    (("hunter22",), ["aHVudGVyMjI=", "aHVudGVyMjI", "hunter22"]),  # no padding to strip: two forms
    (("abcd", "abcd"), ["YWJjZA==", "YWJjZA", "abcd"]),  # each form once
])
def test_the_forms_of_a_secret(secrets: tuple[str, ...], forms: list[str]) -> None:
    """The value, its base64 and its base64 without padding, longest first."""
    found = [f.decode() for f in secret_forms(secrets)]
    assert sorted(found) == sorted(forms)
    assert [len(f) for f in found] == sorted((len(f) for f in found), reverse=True)


@pytest.mark.parametrize(("data", "expected"), [
    (b"token=" + SECRET.encode() + b"\n", b"token=[MASKED]\n"),
    (SECRET.encode() * 2, MASK * 2),
    (b"echo " + B64.encode(), b"echo [MASKED]"),
    (b"echo " + B64.rstrip("=").encode() + b"!", b"echo [MASKED]!"),
    (b"nothing secret here", b"nothing secret here"),
])
def test_mask_replaces_every_form(data: bytes, expected: bytes) -> None:
    assert mask(data, secret_forms((SECRET,))) == expected


def _log(tmp_path: Path, secrets: tuple[str, ...]) -> tuple[JobLog, list[tuple[str, bytes]]]:
    live: list[tuple[str, bytes]] = []
    log = JobLog(tmp_path / "job.jsonl", 1 << 20, lambda stream, data: live.append((stream, data)), secrets=secrets)
    return log, live


def _stored(tmp_path: Path) -> str:
    return "".join(text for _t, _s, text in read_log(tmp_path / "job.jsonl"))


def test_a_secret_written_in_pieces_is_masked_in_the_file_and_live(tmp_path: Path) -> None:
    """Output is held until its line ends, so a secret cut across writes is still found."""
    log, live = _log(tmp_path, (SECRET,))
    for piece in (b"token=s3c", b"r3t-tok", b"en-value done\n", b"and " + B64.encode() + b"\n"):
        log.write("out", piece)
    log.close()
    stored = _stored(tmp_path)
    shown = b"".join(data for stream, data in live if stream == "out").decode()
    for text in (stored, shown):
        assert SECRET not in text and B64 not in text and B64.rstrip("=") not in text
        assert text == "token=[MASKED] done\nand [MASKED]\n"


def test_an_unfinished_last_line_is_masked_when_the_log_closes(tmp_path: Path) -> None:
    """A secret on a last line without a newline is masked by the final flush, not leaked."""
    log, live = _log(tmp_path, (SECRET,))
    log.write("err", b"oops " + SECRET.encode())
    assert live == []  # held: the line may go on
    log.close()
    assert _stored(tmp_path) == "oops [MASKED]"
    assert b"".join(data for _s, data in live) == b"oops [MASKED]"


def test_streams_are_held_apart(tmp_path: Path) -> None:
    """Half a secret on stdout and the other half on stderr is two harmless halves, not one secret."""
    log, _live = _log(tmp_path, (SECRET,))
    log.write("out", b"s3cr3t-")
    log.write("err", b"token-value\n")
    log.write("out", b"\n")
    log.close()
    assert sorted(_stored(tmp_path).splitlines()) == ["s3cr3t-", "token-value"]


def test_without_secrets_output_is_kept_as_written(tmp_path: Path) -> None:
    """A run without secrets changes nothing (a partial last line included)."""
    log, live = _log(tmp_path, ())
    log.write("out", SECRET.encode() + b"\npartial")
    log.close()
    assert _stored(tmp_path) == SECRET + "\npartial"
    assert b"".join(data for _s, data in live) == SECRET.encode() + b"\npartial"
