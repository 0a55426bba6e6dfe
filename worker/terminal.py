"""Job-controlled text on an operator's terminal: the one place that makes it safe to show.

Two tools, both pure:

- ``quote_for_terminal(text)``: a name, path or message that sandpit prints inside its own lines
  (``sandpit: artifact NAME not kept``, a job's prefix in ``sandpit run``, a summary). Control
  characters (C0, DEL, C1, and the other non-printable code points such as bidi overrides) are
  escaped, so a name can neither start a new line (a forged ``sandpit:`` line) nor send an escape
  sequence.
- ``TerminalSanitizer``: a job's own output stream for ``sandpit run``, whose lines are interleaved
  under job-name prefixes. It keeps colour (SGR, ``ESC [ ... m``) and drops every other control
  sequence: OSC (window title, clipboard, hyperlinks), CSI cursor movement and erase, DCS/SOS/PM/APC
  strings, the other ``ESC x`` sequences (charset switches, cursor save/restore, full reset), and
  every C0/C1 control except ``\\n``, ``\\t`` and ``\\r``. It is a state machine over decoded code
  points, so a sequence or a UTF-8 character split across chunks is handled as one.
  ``visible_line()`` then gives a bare ``\\r`` its terminal meaning within the line (what follows the
  last one is what a terminal would have shown), so it can never overwrite the prefix, and closes
  any colour the line opened so it cannot bleed into the next line or another job's.

For ``sandpit run``'s job log, three more pure helpers over *sanitized* text: ``split_sections``
cuts GitLab's ``section_start``/``section_end`` markers out of a line (the sanitizer has dropped
their erase-line CSI and kept the CR, so they are matched as ``...:<name>\\r``; nothing a job
writes gets past the sanitizer by being a marker), ``strip_colour`` drops the SGR sequences when
the output is not a terminal, and ``Paint`` colours sandpit's own words only when asked
(``colour_wanted``: ``--color``, ``NO_COLOR``, a terminal).

``sandpit exec`` does not use these on the job's output: it is a raw byte pipe (tar goes through it).
Hand-written rather than a library: the terminal-emulator libraries (pyte) interpret a whole screen
and the ANSI-stripping ones drop colour too or keep OSC; this is about 150 lines, tested by a table.
"""

from __future__ import annotations

import codecs
import re

from worker import TYPE_CHECKING

if TYPE_CHECKING:
    from typing import ClassVar

ESC = "\x1b"
#: parameter text of a colour sequence we pass through (digits, ``;`` and ``:`` sub-parameters)
_SGR_PARAMS = re.compile(r"[0-9;:]*")
#: longest escape sequence kept in memory; a longer one is dropped whole
MAX_SEQUENCE = 64
#: ESC <c> that starts a string (OSC, DCS, SOS, PM, APC) ended by BEL or ST
_STRING_STARTERS = frozenset("]PX^_")
#: the 8-bit (C1) forms of CSI and of the string starters
_C1_CSI = "\x9b"
_C1_STRINGS = frozenset("\x90\x98\x9d\x9e\x9f")
_C1_ST = "\x9c"
_CAN_SUB = frozenset("\x18\x1a")  # abort a sequence (ECMA-48)


def quote_for_terminal(text: str, *, quotes: bool = True) -> str:
    """``text`` as it is when every character is printable; else escaped (``\\n``, ``\\x1b``,
    ``\\u202e``; a byte that was not UTF-8 and came in as a surrogate escape shows as ``\\xff``),
    and, with ``quotes``, in single quotes so that the reader sees where it starts and ends.
    Use ``quotes=False`` for a whole sentence of sandpit's that embeds job-controlled values.

    >>> quote_for_terminal("test [PY=3.12]")
    'test [PY=3.12]'
    >>> print(quote_for_terminal("x\\nsandpit: ok\\x1b]0;pwned\\x07"))
    'x\\nsandpit: ok\\x1b]0;pwned\\x07'
    >>> print(quote_for_terminal("tab\\there", quotes=False))
    tab\\there
    >>> print(quote_for_terminal(""))
    ''
    """
    if text and text.isprintable():
        return text
    out = []
    for ch in text:
        if ch.isprintable() and ch not in "\\'":
            out.append(ch)
        elif ch == "\\":
            out.append("\\\\")
        elif ch == "'":
            out.append("\\'" if quotes else "'")
        elif ch in _NAMED:
            out.append(_NAMED[ch])
        else:
            code = ord(ch)
            if 0xDC80 <= code <= 0xDCFF:  # os.fsdecode's escape of an undecodable byte
                out.append(f"\\x{code - 0xDC00:02x}")
            elif code < 0x100:
                out.append(f"\\x{code:02x}")
            elif code < 0x10000:
                out.append(f"\\u{code:04x}")
            else:
                out.append(f"\\U{code:08x}")
    body = "".join(out)
    return f"'{body}'" if quotes else body


_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def quote_lines(text: str) -> str:
    """A multi-line message of sandpit's (a problem and its hint lines): each line escaped alone,
    so the line breaks sandpit put there stay line breaks and nothing else does."""
    return "\n".join(quote_for_terminal(line, quotes=False) for line in text.split("\n"))


def visible_line(text: str) -> str:
    """One sanitized line as a terminal would leave it, made safe to print after a prefix.

    A bare carriage return moved the cursor back to the start of the line, so only what follows
    the last one stays visible (a progress bar's final state); a trailing one (CRLF) is just the
    line end. A line that used colour ends with a reset.

    >>> visible_line("  10%\\r 100%\\r")
    ' 100%'
    >>> visible_line("\\x1b[31mred")
    '\\x1b[31mred\\x1b[0m'
    """
    text = text.rstrip("\r")
    if "\r" in text:
        text = text.rsplit("\r", 1)[1]
    if ESC in text:
        text += ESC + "[0m"
    return text


class TerminalSanitizer:
    """Streaming filter from a job's raw output bytes to text safe for a shared terminal.

    What comes out holds only printable characters, ``\\t``, ``\\n``, ``\\r`` and SGR sequences
    (``ESC [ <digits ; :> m``, in their 7-bit form). Strings (OSC, DCS, ...) end at BEL, ST, CAN,
    SUB or, unlike on a terminal, a line feed: a job cannot hide the lines after an unterminated
    title sequence.

    >>> s = TerminalSanitizer()
    >>> s.feed(b"\\x1b]0;ti") + s.feed(b"tle\\x07ok \\x1b[1") + s.feed(b";31mred\\x1b[2J")
    'ok \\x1b[1;31mred'
    """

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self._state = _GROUND
        self._seq: list[str] = []  # the CSI sequence so far (only CSI can be kept)
        self._length = 0

    def feed(self, data: bytes) -> str:
        return self._run(self._decoder.decode(data))

    def finish(self) -> str:
        """The end of the stream: a partial character becomes U+FFFD, a partial sequence is dropped."""
        text = self._run(self._decoder.decode(b"", final=True))
        self._state, self._seq, self._length = _GROUND, [], 0
        return text

    def _run(self, text: str) -> str:
        out: list[str] = []
        for ch in text:
            self._step(ch, out)
        return "".join(out)

    def _step(self, ch: str, out: list[str]) -> None:
        state = self._state
        if state == _GROUND:
            if ch == ESC:
                self._begin(_ESCAPE)
            elif ch in "\n\t\r" or (ch >= " " and ch != "\x7f" and not "\x80" <= ch <= "\x9f"):
                out.append(ch)
            elif ch == _C1_CSI:
                self._begin(_CSI)
            elif ch in _C1_STRINGS:
                self._begin(_STRING)
            # any other C0 or C1 control (BEL, BS, SO/SI, VT, FF, NUL, DEL, ...) is dropped
            return
        if ch == "\n":  # a line feed ends whatever was going on: lines stay lines
            self._state = _GROUND
            out.append(ch)
            return
        if ch in _CAN_SUB:
            self._state = _GROUND
            return
        self._length += 1
        if state == _ESCAPE:
            if ch == "[":
                self._begin(_CSI)
            elif ch in _STRING_STARTERS:
                self._begin(_STRING)
            elif ch == ESC:
                self._begin(_ESCAPE)
            elif " " <= ch <= "/":
                self._state = _ESC_INTERMEDIATE
            elif "0" <= ch <= "~":
                self._state = _GROUND  # a complete two-character sequence (ESC c, ESC 7, ESC M, ...)
            elif ch >= " ":
                self._state = _GROUND  # not a sequence: drop the ESC, keep the character
                self._step(ch, out)
        elif state == _ESC_INTERMEDIATE:
            if "0" <= ch <= "~":
                self._state = _GROUND  # ESC ( B, ESC # 8, ...
            elif ch == ESC:
                self._begin(_ESCAPE)
            elif ch > "~":
                self._state = _GROUND
                self._step(ch, out)
        elif state == _CSI:
            if "@" <= ch <= "~":
                params = "".join(self._seq)
                if ch == "m" and self._length <= MAX_SEQUENCE and _SGR_PARAMS.fullmatch(params):
                    out.append(f"{ESC}[{params}m")
                self._state = _GROUND
            elif ch == ESC:
                self._begin(_ESCAPE)
            elif " " <= ch <= "?":
                if self._length <= MAX_SEQUENCE:
                    self._seq.append(ch)
            elif ch > "~":
                self._state = _GROUND
                self._step(ch, out)
            # C0 controls inside a CSI are dropped and the sequence goes on, as on a terminal
        elif state == _STRING:
            if ch == "\x07" or ch == _C1_ST:
                self._state = _GROUND
            elif ch == ESC:
                self._state = _STRING_ESCAPE
        elif state == _STRING_ESCAPE:
            if ch == "\\":
                self._state = _GROUND  # ST
            else:
                self._state = _ESCAPE  # the ESC began a new sequence; this is its next character
                self._length = 0
                self._step(ch, out)

    def _begin(self, state: int) -> None:
        self._state = state
        self._seq = []
        self._length = 0


_GROUND, _ESCAPE, _ESC_INTERMEDIATE, _CSI, _STRING, _STRING_ESCAPE = range(6)


# --- GitLab's collapsible sections, colour of sandpit's own lines -----------------------------------

#: ``section_start:<unix time>:<name>[options]\r\e[0K<header>`` and ``section_end:<time>:<name>\r\e[0K``
#: as they are once sanitized (the erase-line CSI is dropped, the CR kept); GitLab's names are
#: letters, digits, ``_``, ``.`` and ``-``
_SECTION = re.compile(r"section_(start|end):([0-9]{1,12}):([A-Za-z0-9_.-]{1,200})(\[[^\]\r]{0,200}\])?\r")


def split_sections(line: str) -> list[tuple[str, str, str]]:
    """One sanitized line cut at GitLab's section markers: ``("text", "", text)`` for output,
    ``("start", name, header)`` for a section start (``header``: what follows it on the line, the
    section's title) and ``("end", name, "")``; a line without markers is one text piece. Pure:
    the caller times the sections and draws them.

    >>> split_sections("section_start:1700000000:build[collapsed=true]\\rBuilding it")
    [('start', 'build', 'Building it')]
    >>> split_sections("done.section_end:1700000001:build\\r")
    [('text', '', 'done.'), ('end', 'build', '')]
    >>> split_sections("plain")
    [('text', '', 'plain')]
    """
    pieces: list[tuple[str, str, str]] = []
    at = 0
    for match in _SECTION.finditer(line):
        before = line[at:match.start()]
        if before:
            if pieces and pieces[-1][0] == "start":
                kind, name, _ = pieces[-1]
                pieces[-1] = (kind, name, before)
            else:
                pieces.append(("text", "", before))
        pieces.append((match.group(1), match.group(3), ""))
        at = match.end()
    rest = line[at:]
    if rest or not pieces:
        if pieces and pieces[-1][0] == "start":
            pieces[-1] = (pieces[-1][0], pieces[-1][1], rest)
        else:
            pieces.append(("text", "", rest))
    return pieces


_SGR_SEQUENCE = re.compile(r"\x1b\[[0-9;:]*m")


def strip_colour(text: str) -> str:
    """Sanitized text without its colour sequences (the only escapes sanitized text can hold), for
    output that is not a terminal (``--color=never``, a pipe, ``NO_COLOR``).

    >>> strip_colour("\\x1b[31mred\\x1b[0m")
    'red'
    """
    return _SGR_SEQUENCE.sub("", text) if ESC in text else text


def colour_wanted(choice: str, stream: object, env: dict[str, str] | None = None) -> bool:
    """``--color``: ``always``, ``never``, or ``auto``: on a terminal unless ``NO_COLOR`` is set
    (no-color.org: any non-empty value) or ``TERM=dumb``."""
    import os

    if choice in ("always", "never"):
        return choice == "always"
    env = dict(os.environ) if env is None else env
    if env.get("NO_COLOR") or env.get("TERM") == "dumb":
        return False
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # a closed stream
        return False


class Paint:
    """Colour for sandpit's own words (statuses, headers), or none: every method returns the text
    unchanged when ``enabled`` is False. Only SGR is ever written, and each piece is closed."""

    _CODES: ClassVar[dict[str, str]] = {
        "green": "32", "red": "31", "yellow": "33", "cyan": "36", "bold": "1", "dim": "2"}
    #: the colour of each job status
    STATUS: ClassVar[dict[str, str]] = {"succeeded": "green", "failed": "red", "error": "red", "cancelled": "yellow",
              "skipped": "dim", "manual": "yellow", "allowed": "yellow"}

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled

    def __call__(self, style: str, text: str) -> str:
        code = self._CODES.get(style)
        if not self.enabled or code is None or not text:
            return text
        return f"{ESC}[{code}m{text}{ESC}[0m"

    def status(self, status: str, text: str | None = None, *, allowed: bool = False) -> str:
        """``text`` (default: the status itself) in the status's colour; an allowed failure in yellow."""
        style = self.STATUS["allowed"] if allowed else self.STATUS.get(status, "")
        return self(style, status if text is None else text)
