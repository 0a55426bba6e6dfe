"""worker/terminal.py: the sanitizer keeps colour and drops every other control sequence, whole or
split across chunks; quoting escapes what could forge a line or reach the terminal."""

from __future__ import annotations

import pytest

from worker.terminal import TerminalSanitizer, quote_for_terminal, quote_lines, visible_line

E = "\x1b"

# (what the job wrote, what reaches the terminal)
SEQUENCES: list[tuple[bytes, str]] = [
    (b"plain text\n", "plain text\n"),
    (b"tab\there\n", "tab\there\n"),
    ("caf\u00e9 \u2713 \U0001f600\n".encode(), "caf\u00e9 \u2713 \U0001f600\n"),
    # colour (SGR) is kept, in every form
    (b"\x1b[31mred\x1b[0m\n", f"{E}[31mred{E}[0m\n"),
    (b"\x1b[1;38;5;208mx\x1b[m", f"{E}[1;38;5;208mx{E}[m"),
    (b"\x1b[38:2::255:0:0mtrue\x1b[0m", f"{E}[38:2::255:0:0mtrue{E}[0m"),
    (b"\xc2\x9b32mC1 CSI colour", f"{E}[32mC1 CSI colour"),
    # OSC: title, clipboard, hyperlink, with BEL, ST, or C1 ST
    (b"a\x1b]0;pwned title\x07b", "ab"),
    (b"a\x1b]2;title\x1b\\b", "ab"),
    (b"a\x1b]52;c;ZWNobyBwd25lZA==\x07b", "ab"),
    (b"\x1b]8;;http://evil/\x1b\\link\x1b]8;;\x1b\\", "link"),
    (b"a\xc2\x9d0;t\xc2\x9cb", "ab"),
    # an unterminated OSC ends at the line feed; the next line is shown
    (b"\x1b]0;never ends\nnext line\n", "\nnext line\n"),
    # CAN / SUB abort a sequence
    (b"\x1b]0;x\x18after", "after"),
    # CSI other than SGR: cursor movement, erase, scroll region, modes, device reports
    (b"a\x1b[2Jb", "ab"),
    (b"a\x1b[1;1Hb\x1b[Kc\x1b[3Ad", "abcd"),
    (b"\x1b[?1049h\x1b[?25lx\x1b[5n\x1b[6n\x1b[1;24r", "x"),
    (b"\x1b[>c\x1b[=5m", ""),  # private markers, even with a final 'm'
    (b"\x1b[31 m", ""),  # an intermediate byte makes it something other than SGR
    (b"\x1b[" + b"1;" * 100 + b"31mlong", "long"),  # too long to keep
    # other escapes: reset, cursor save/restore, index, charsets, DECALN
    (b"\x1bcx\x1b7y\x1b8\x1bMz\x1bD", "xyz"),
    (b"\x1b(0qqq\x1b(B\x1b#8", "qqq"),
    # DCS, SOS, PM, APC strings
    (b"a\x1bPq#0;2;0;0;0\x1b\\b", "ab"),
    (b"a\x1bXsos\x1b\\b\x1b^pm\x1b\\c\x1b_apc\x1b\\d", "abcd"),
    (b"a\xc2\x90dcs\xc2\x9cb", "ab"),
    # C0 and C1 controls other than \n \t \r, and DEL
    (b"a\x08\x08b\x07c\x0e\x0fd\x0b\x0c\x00e\x7ff", "abcdef"),
    (b"a\xc2\x85b\xc2\x84c", "abc"),
    # carriage returns pass to visible_line, which gives them their meaning
    (b"one\r\ntwo\rthree\n", "one\r\ntwo\rthree\n"),
    # an ESC before a non-sequence character: the ESC goes, the character stays
    (b"\x1b\xc3\xa9t\xc3\xa9", "\u00e9t\u00e9"),
    # bytes that are not UTF-8
    (b"bad \xff\xfe bytes", "bad \ufffd\ufffd bytes"),
]


def _feed(chunks: list[bytes]) -> str:
    s = TerminalSanitizer()
    return "".join(s.feed(c) for c in chunks) + s.finish()


@pytest.mark.parametrize(("data", "shown"), SEQUENCES)
def test_sanitizer_in_one_chunk(data: bytes, shown: str) -> None:
    assert _feed([data]) == shown


@pytest.mark.parametrize(("data", "shown"), SEQUENCES)
def test_sanitizer_split_at_every_byte(data: bytes, shown: str) -> None:
    """A sequence or a UTF-8 character split across reads is recognised as one."""
    assert _feed([data[i:i + 1] for i in range(len(data))]) == shown
    for cut in range(1, len(data)):
        assert _feed([data[:cut], data[cut:]]) == shown, cut


def test_output_holds_only_printable_text_and_colour() -> None:
    """Every byte value in every position: no control character but \\t \\n \\r, no escape but SGR."""
    import re

    s = TerminalSanitizer()
    out = "".join(s.feed(bytes([a, b, c])) for a in (0x1b, 0x9b, 0xc2, 0x07, 0x5b, 0x5d)
                  for b in range(256) for c in (0x6d, 0x07, 0x5c, 0x41))
    out += s.finish()
    sgr = re.compile(r"\x1b\[[0-9;:]*m")
    rest = sgr.sub("", out)
    assert E not in rest
    controls = {chr(c) for c in (*range(0x20), 0x7f, *range(0x80, 0xa0))} - set("\n\t\r")
    assert not controls & set(rest)


def test_partial_sequence_at_the_end_is_dropped() -> None:
    s = TerminalSanitizer()
    assert s.feed(b"ok\x1b]0;tit") == "ok"
    assert s.finish() == ""
    assert s.feed(b"\xe2\x82") == ""
    assert s.finish() == "\ufffd"


VISIBLE = [
    ("plain", "plain"),
    ("crlf\r", "crlf"),
    ("  10%\r  50%\r 100%", " 100%"),
    ("\rover the prefix", "over the prefix"),
    ("fake\r\r\r", "fake"),
    (f"{E}[31mred", f"{E}[31mred{E}[0m"),
    (f"{E}[8mhidden", f"{E}[8mhidden{E}[0m"),  # conceal cannot reach the next line
]


@pytest.mark.parametrize(("line", "shown"), VISIBLE)
def test_visible_line(line: str, shown: str) -> None:
    assert visible_line(line) == shown


QUOTED = [
    ("build", "build"),
    ("test [PY=3.12]", "test [PY=3.12]"),
    ("it's fine", "it's fine"),
    ("two\nlines", "'two\\nlines'"),
    ("x\nsandpit: job passed", "'x\\nsandpit: job passed'"),
    ("\x1b]0;title\x07", "'\\x1b]0;title\\x07'"),
    ("back\\slash\r", "'back\\\\slash\\r'"),
    ("quote ' and \x00", "'quote \\' and \\x00'"),
    ("csi \x9b2J", "'csi \\x9b2J'"),
    ("bidi \u202eevil", "'bidi \\u202eevil'"),
    ("undecodable \udcff", "'undecodable \\xff'"),
    ("", "''"),
]


@pytest.mark.parametrize(("text", "shown"), QUOTED)
def test_quote_for_terminal(text: str, shown: str) -> None:
    assert quote_for_terminal(text) == shown
    assert all(ch.isprintable() for ch in quote_for_terminal(text, quotes=False))


def test_quote_lines_keeps_sandpit_line_breaks_only() -> None:
    assert quote_lines("a.yml:1:2: error: bad \x1b[2J\n  hint: x\ry") == "a.yml:1:2: error: bad \\x1b[2J\n  hint: x\\ry"
